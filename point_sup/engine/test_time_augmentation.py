"""Test-time augmentation (``TEST.AUG.*``) through Detectron2's ``GeneralizedRCNNWithTTA``.

Detectron2's TTA runs the detector on every augmented image (``TEST.AUG.MIN_SIZES`` x
``TEST.AUG.FLIP``), merges the boxes with NMS, then asks the mask head for the masks of the merged
boxes in every augmented image and averages them (flipped back). Any point_sup ROI mask head fits
that contract (Mask R-CNN's, PointRend's and Implicit PointRend's ``pred_masks`` are box-relative
``(R, 1, M, M)`` probabilities of the same M for every augmentation). CondInst is not a
``GeneralizedRCNN``: its configs get a start-up error instead of a crash after training.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, GeneralizedRCNNWithTTA
from torch import nn

__all__ = ["build_tta_model", "tta_config_error"]


def tta_config_error(cfg: CfgNode) -> str | None:
    """Why ``TEST.AUG.ENABLED`` cannot be honoured for ``cfg`` (None when it can, or is off)."""
    if not cfg.TEST.AUG.ENABLED:
        return None
    name = cfg.MODEL.META_ARCHITECTURE
    try:
        meta_arch = META_ARCH_REGISTRY.get(name)
    except KeyError:
        return None  # an unknown architecture is reported by build_model, with Detectron2's message
    if not (isinstance(meta_arch, type) and issubclass(meta_arch, GeneralizedRCNN)):
        return (
            "TEST.AUG.ENABLED: test-time augmentation needs a GeneralizedRCNN (Detectron2's "
            f"GeneralizedRCNNWithTTA); MODEL.META_ARCHITECTURE {name!r} is not one: "
            "set TEST.AUG.ENABLED False"
        )
    if cfg.MODEL.KEYPOINT_ON or cfg.MODEL.LOAD_PROPOSALS:
        key = "MODEL.KEYPOINT_ON" if cfg.MODEL.KEYPOINT_ON else "MODEL.LOAD_PROPOSALS"
        return (
            f"TEST.AUG.ENABLED: Detectron2's test-time augmentation does not support {key}: "
            "set one of them False"
        )
    return None


def build_tta_model(cfg: CfgNode, model: nn.Module) -> GeneralizedRCNNWithTTA:
    """``model`` (or its DDP wrapper) behind Detectron2's TTA; ValueError naming the key if unsupported."""
    problem = tta_config_error(cfg)
    if problem is not None:
        raise ValueError(problem)
    return GeneralizedRCNNWithTTA(cfg, model)
