"""point_sup: Pointly-Supervised Instance Segmentation (Cheng, Parkhi, Kirillov, CVPR 2022) for Detectron2.

``import point_sup`` makes every component available through Detectron2's registries and catalogs:
config keys (:func:`add_point_sup_config`), the point-aware dataset mapper, the point-supervised
mask heads (``ROI_MASK_HEAD_REGISTRY``) and the builtin P_N datasets (``DatasetCatalog``).
Import it before building a model or loading a config that names them.

The Python API for one's own images:

* :mod:`point_sup.model_zoo`: the shipped configs by name (``get_config_file``, ``get_config``);
* :class:`Predictor`: a trained model called on an image file or array, returning its ``Instances``;
* :func:`draw_predictions`: those predictions drawn on the image (masks, contours, optional points).
"""

import warnings

# detectron2 calls torch.jit.script at import time, which recent torch deprecates with a
# FutureWarning users can do nothing about. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import compat  # noqa: E402

compat.apply()  # clear errors where a detectron2 without its C++ extension would be obscure

from . import data, model_zoo, modeling  # noqa: E402  (imports register the components)
from .config import add_point_sup_config  # noqa: E402
from .data import register_coco_instances_with_points  # noqa: E402
from .predictor import Predictor  # noqa: E402
from .utils.images import UnreadableImageError  # noqa: E402
from .utils.visualizer import draw_predictions  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Predictor",
    "UnreadableImageError",
    "__version__",
    "add_point_sup_config",
    "compat",
    "data",
    "draw_predictions",
    "model_zoo",
    "modeling",
    "register_coco_instances_with_points",
]
