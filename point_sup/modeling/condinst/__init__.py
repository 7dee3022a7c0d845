"""CondInst / BoxInst on Detectron2's FCOS (paper Table 3b, Figures 3 and 5): the meta-architecture,
its FCOS levels backbone, head and controller, mask branch, dynamic mask head, the mask losses of
each supervision (CondInst's M and P_N, BoxInst's boxes, mixed) and the inference decoding.

``point_sup.modeling.condinst`` was one module before the package; its public names are the
package's, so existing imports keep working.
"""

from .backbone import build_fcos_resnet_fpn_backbone
from .boxinst import PairwiseOptions
from .head import CondInstHead, MaskInstances
from .meta_arch import PointSupCondInst
from .supervision import POINT_LOGITS, SUPERVISIONS

__all__ = [
    "POINT_LOGITS",
    "SUPERVISIONS",
    "CondInstHead",
    "MaskInstances",
    "PairwiseOptions",
    "PointSupCondInst",
    "build_fcos_resnet_fpn_backbone",
]
