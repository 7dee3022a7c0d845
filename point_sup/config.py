"""Config keys of point_sup: :func:`add_point_sup_config`.

Key names follow Detectron2's PointSup and PointRend projects wherever the meaning is the same, so
their YAML files read the same here and both ``add_*_config`` functions can be applied to one config
(keys that already exist are left as they are).

Two PointRend keys are decided here. ``MODEL.POINT_HEAD.NAME`` is kept and read: it names the point
head, and each point_sup head accepts only the one it has (:func:`check_point_head_name`) —
``StandardPointHead`` for PointRend, ``ImplicitPointHead`` for Implicit PointRend, whose configs may
also leave the key at its (PointRend) default, since that head always builds its generated point
head. Any other name is a clear error rather than silently ignored. Detectron2's YAML files set it
(``StandardPointHead`` / ``ImplicitPointHead``) and load unchanged. PointRend's
``COARSE_SEM_SEG_HEAD_NAME`` is not added: it configures PointRend's semantic segmentation, which
point_sup has no head for, and no instance-segmentation YAML sets it (``add_pointrend_config`` still
adds it where both are applied).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from detectron2.config import CfgNode as CN

__all__ = [
    "CONDINST_META_ARCHITECTURE",
    "MIXED_SUP_BOTH",
    "MIXED_SUP_WEIGHTING",
    "POINT_HEAD_NAME_DEFAULT",
    "add_point_sup_config",
    "check_point_head_name",
    "condinst_supervision",
    "is_condinst",
    "is_mixed_supervision",
    "model_num_classes",
    "num_classes_key",
]

# MODEL.MIXED_SUP.BOTH: the supervision of an object that has both a mask and points.
MIXED_SUP_BOTH = ("mask", "points")
# MODEL.MIXED_SUP.WEIGHTING: how the per-kind mask losses of a mixed batch are combined.
MIXED_SUP_WEIGHTING = ("instances", "sum")

# point_sup's CondInst / BoxInst meta-architecture (point_sup.modeling.condinst).
CONDINST_META_ARCHITECTURE = "PointSupCondInst"

# MODEL.POINT_HEAD.NAME's default, PointRend's (``add_pointrend_config`` sets the same).
POINT_HEAD_NAME_DEFAULT = "StandardPointHead"


def _set_default(node: CN, key: str, value) -> None:
    if key not in node:
        node[key] = value


def add_point_sup_config(cfg: CN) -> CN:
    """Add point_sup's keys (with their defaults) to ``cfg`` in place, and return it.

    INPUT
        POINT_SUP: train the mask head from P_N point annotations (``point_coords``/``point_labels``)
            instead of masks.
        SAMPLE_POINTS: point-based augmentation (paper §3.2): each iteration keeps this many randomly
            chosen labelled points per instance (5 for P10: "half of all available points"); 0 keeps all.
    MODEL.MIXED_SUP (per-object supervision in one dataset, point_sup.data.mixed_supervision)
        ENABLED: each object trains from what its annotation carries: a mask (``segmentation``), P_N
            points, or only its box (detection only; BoxInst's box losses in a BoxInst config).
            Exclusive with ``INPUT.POINT_SUP``, which keeps meaning "every object from points".
        BOTH: the supervision of an object with both a mask and points: "mask" (default) or "points".
        WEIGHTING: "instances" (default): each kind's mask loss (today's loss on its own instances)
            times its share of the mask-supervised instances of the batch; "sum": the plain sum.
    MODEL.POINT_LOSS (the one point loss of every head, point_sup.modeling.common.point_loss)
        NORMALIZATION: "all_points" (default; Detectron2's ``roi_mask_point_loss``: the BCE summed
            over supervised points, divided by all labelled points, ignored ones included) or
            "valid_points" (divided by the supervised points only).
        MASK_POINT_LABELS: labels of points sampled on ground-truth masks (PointRend and Implicit
            PointRend trained from masks): "bilinear" (default; Detectron2's PointRend: the bit mask
            interpolated at the point) or "pixel" (the value of the containing pixel).
    MODEL.ROI_MASK_HEAD (PointRend coarse head / Implicit PointRend parameter head)
        FC_DIM, NUM_FC: fully connected layers of the head; OUTPUT_SIDE_RESOLUTION: PointRend's coarse
        mask side (7); IN_FEATURES: features pooled for the head; POINT_HEAD_ON: PointRend's switch.
    MODEL.POINT_HEAD (PointRend and Implicit PointRend point heads; paper §4.3 = PointRend's values)
        NAME (see the module docstring), NUM_CLASSES, FC_DIM (256), NUM_FC (3 hidden layers),
        CLS_AGNOSTIC_MASK, IN_FEATURES (("p2",)),
        TRAIN_NUM_POINTS (14², points per RoI when training from masks), OVERSAMPLE_RATIO and
        IMPORTANCE_SAMPLE_RATIO (PointRend's uncertainty sampling when training from masks),
        SUBDIVISION_STEPS and SUBDIVISION_NUM_POINTS (adaptive subdivision at inference; 28² points per
        step), COARSE_PRED_EACH_LAYER.
    MODEL.IMPLICIT_POINTREND (paper §4)
        IMAGE_FEATURE_ENABLED: feed fine-grained p2 features to the point head.
        POS_ENC_ENABLED: random Fourier encoding of box-relative coordinates instead of raw (x, y).
        PARAMS_L2_REGULARIZER: weight of the L2 loss on the generated point-head parameters (1e-5).
        PARAMS_INIT: initial generated parameters. "reference" (default; Detectron2's and the paper's
            code): the parameter head's prediction layer starts with N(0, 0.001²) weights and zero
            bias, so every generated weight starts near 0. "shared": the same prediction weights, but
            its bias holds one randomly initialised point-head MLP (He-normal weights, zero biases),
            so every instance starts from a well-scaled MLP that the head then modulates (see
            point_sup.modeling.implicit_point_rend.point_head.DynamicPointHead.initial_params).
        PARAMS_RANK: 0 (default, the paper's): the parameter head ends in one FC_DIM x num_params
            layer (290 M weights for COCO). r > 0: that layer is factorised through r coefficients
            per instance, params = bias + basis (A h) with a learned (num_params x r) basis shared by
            all instances, A an FC_DIM x r layer (point_sup's small Implicit PointRend, r = 32:
            see point_sup.modeling.implicit_point_rend).
    MODEL.BOX_PRIOR (point_sup's, not the paper's: point_sup.modeling.common.box_prior)
        ENABLED (False): add BoxInst's projection and colour-pairwise terms of each object's box to
            the mask loss of the point-supervised objects (``INPUT.POINT_SUP``) and, with
            ``MODEL.MIXED_SUP``, of the box-only objects too. CondInst: on its stride-4 masks, as
            BoxInst; Mask R-CNN: on the 28x28 RoI logits; PointRend and Implicit PointRend: on the
            point head's predictions at a GRID_SIZE² grid of each RoI. The ROI heads need
            ``MODEL.ROI_HEADS.NAME: PointSupROIHeads`` (it hands the RoIs' image colours to the head).
        PROJECTION_WEIGHT (1.0), PAIRWISE_WEIGHT (1.0): the terms' weights; the pairwise term's
            neighbourhood, colour threshold and warm-up are ``MODEL.BOXINST.PAIRWISE``'s.
        GRID_SIZE (14): side of the RoI grid of the point heads (Mask R-CNN uses its 28x28 output).
    """
    _set_default(cfg.INPUT, "POINT_SUP", False)
    _set_default(cfg.INPUT, "SAMPLE_POINTS", 0)

    if "MIXED_SUP" not in cfg.MODEL:
        cfg.MODEL.MIXED_SUP = CN()
    _set_default(cfg.MODEL.MIXED_SUP, "ENABLED", False)
    _set_default(cfg.MODEL.MIXED_SUP, "BOTH", "mask")
    _set_default(cfg.MODEL.MIXED_SUP, "WEIGHTING", "instances")

    if "POINT_LOSS" not in cfg.MODEL:
        cfg.MODEL.POINT_LOSS = CN()
    _set_default(cfg.MODEL.POINT_LOSS, "NORMALIZATION", "all_points")
    _set_default(cfg.MODEL.POINT_LOSS, "MASK_POINT_LABELS", "bilinear")

    mask_head = cfg.MODEL.ROI_MASK_HEAD
    _set_default(mask_head, "FC_DIM", 1024)
    _set_default(mask_head, "NUM_FC", 2)
    _set_default(mask_head, "OUTPUT_SIDE_RESOLUTION", 7)
    _set_default(mask_head, "IN_FEATURES", ("p2",))
    _set_default(mask_head, "POINT_HEAD_ON", False)

    if "POINT_HEAD" not in cfg.MODEL:
        cfg.MODEL.POINT_HEAD = CN()
    point_head = cfg.MODEL.POINT_HEAD
    _set_default(point_head, "NAME", POINT_HEAD_NAME_DEFAULT)
    _set_default(point_head, "NUM_CLASSES", 80)
    _set_default(point_head, "FC_DIM", 256)
    _set_default(point_head, "NUM_FC", 3)
    _set_default(point_head, "CLS_AGNOSTIC_MASK", False)
    _set_default(point_head, "IN_FEATURES", ("p2",))
    _set_default(point_head, "TRAIN_NUM_POINTS", 14 * 14)
    _set_default(point_head, "OVERSAMPLE_RATIO", 3)
    _set_default(point_head, "IMPORTANCE_SAMPLE_RATIO", 0.75)
    _set_default(point_head, "SUBDIVISION_STEPS", 5)
    _set_default(point_head, "SUBDIVISION_NUM_POINTS", 28 * 28)
    _set_default(point_head, "COARSE_PRED_EACH_LAYER", True)

    if "IMPLICIT_POINTREND" not in cfg.MODEL:
        cfg.MODEL.IMPLICIT_POINTREND = CN()
    implicit = cfg.MODEL.IMPLICIT_POINTREND
    _set_default(implicit, "IMAGE_FEATURE_ENABLED", True)
    _set_default(implicit, "POS_ENC_ENABLED", True)
    _set_default(implicit, "PARAMS_L2_REGULARIZER", 1e-5)
    _set_default(implicit, "PARAMS_INIT", "reference")
    _set_default(implicit, "PARAMS_RANK", 0)
    if "BOX_PRIOR" not in cfg.MODEL:
        cfg.MODEL.BOX_PRIOR = CN()
    box_prior = cfg.MODEL.BOX_PRIOR
    _set_default(box_prior, "ENABLED", False)
    _set_default(box_prior, "PROJECTION_WEIGHT", 1.0)
    _set_default(box_prior, "PAIRWISE_WEIGHT", 1.0)
    _set_default(box_prior, "GRID_SIZE", 14)
    _add_condinst_config(cfg)
    return cfg


def _add_condinst_config(cfg: CN) -> None:
    """CondInst / BoxInst keys (point_sup.modeling.condinst); names and defaults are AdelaiDet's
    (``MODEL.FCOS``, ``MODEL.CONDINST``, ``MODEL.BOXINST``), the CondInst and BoxInst papers' values.

    MODEL.FCOS (the detector: Detectron2's FCOS)
        NUM_CLASSES (80), IN_FEATURES (p3-p7), NUM_CONVS (4 per tower), NORM ("GN"), PRIOR_PROB (0.01),
        CENTER_SAMPLING_RADIUS (1.5), LOSS_ALPHA / LOSS_GAMMA (focal loss 0.25 / 2.0),
        INFERENCE_TH_TEST (0.05: the score sqrt(p_cls p_ctr) a location needs before NMS), PRE_NMS_TOPK_TEST
        (1000 per level), NMS_TH (0.6); detections per image: ``TEST.DETECTIONS_PER_IMAGE``.
    MODEL.CONDINST
        MASK_OUT_STRIDE (4): stride of the mask prediction (and of the mask targets).
        MAX_PROPOSALS (-1 = all): at most this many positive locations per batch get a mask loss
            (a random subset); TOPK_PROPOSALS_PER_IM (-1 = off): instead, per image and ground-truth
            object, the k / #objects highest-scoring positive locations (BoxInst's 64).
        POINT_LOGITS ("cell"): how the P_N loss reads a point's prediction: ``"cell"``, the logit of
            the stride-4 cell holding it (paper footnote 2: no interpolation); ``"bilinear"``
            (point_sup's), the value at the point in the bilinearly upsampled mask, the mask that
            inference thresholds (point_sup.modeling.condinst.losses).
        INFER_CROP_TO_BOX: at inference, set mask pixels outside the predicted box to background
            (paper footnote 2, for the P_N model; off for CondInst/BoxInst as published).
        MASK_HEAD: CHANNELS (8), NUM_LAYERS (3), DISABLE_REL_COORDS (False): the dynamic mask head.
        MASK_BRANCH: IN_FEATURES (p3-p5), CHANNELS (128), NUM_CONVS (4), NORM ("BN"), OUT_CHANNELS (8).
    MODEL.BOXINST (box-only supervision)
        ENABLED: train the masks from the boxes only (projection + pairwise losses).
        PAIRWISE: SIZE (3), DILATION (2), COLOR_THRESH (0.3), WARMUP_ITERS (10000).
        BOTTOM_PIXELS_REMOVED (10): the pairwise term ignores this many bottom rows of each original
            image, scaled to the input (AdelaiDet's; COCO's bottom rows are often mislabelled);
            <= 0: none.
    """
    if "FCOS" not in cfg.MODEL:
        cfg.MODEL.FCOS = CN()
    fcos = cfg.MODEL.FCOS
    _set_default(fcos, "NUM_CLASSES", 80)
    _set_default(fcos, "IN_FEATURES", ["p3", "p4", "p5", "p6", "p7"])
    _set_default(fcos, "NUM_CONVS", 4)
    _set_default(fcos, "NORM", "GN")
    _set_default(fcos, "PRIOR_PROB", 0.01)
    _set_default(fcos, "CENTER_SAMPLING_RADIUS", 1.5)
    _set_default(fcos, "LOSS_ALPHA", 0.25)
    _set_default(fcos, "LOSS_GAMMA", 2.0)
    _set_default(fcos, "INFERENCE_TH_TEST", 0.05)
    _set_default(fcos, "PRE_NMS_TOPK_TEST", 1000)
    _set_default(fcos, "NMS_TH", 0.6)

    if "CONDINST" not in cfg.MODEL:
        cfg.MODEL.CONDINST = CN()
    condinst = cfg.MODEL.CONDINST
    _set_default(condinst, "MASK_OUT_STRIDE", 4)
    _set_default(condinst, "MAX_PROPOSALS", -1)
    _set_default(condinst, "TOPK_PROPOSALS_PER_IM", -1)
    _set_default(condinst, "INFER_CROP_TO_BOX", False)
    _set_default(condinst, "POINT_LOGITS", "cell")
    if "MASK_HEAD" not in condinst:
        condinst.MASK_HEAD = CN()
    _set_default(condinst.MASK_HEAD, "CHANNELS", 8)
    _set_default(condinst.MASK_HEAD, "NUM_LAYERS", 3)
    _set_default(condinst.MASK_HEAD, "DISABLE_REL_COORDS", False)
    if "MASK_BRANCH" not in condinst:
        condinst.MASK_BRANCH = CN()
    branch = condinst.MASK_BRANCH
    _set_default(branch, "IN_FEATURES", ["p3", "p4", "p5"])
    _set_default(branch, "CHANNELS", 128)
    _set_default(branch, "NUM_CONVS", 4)
    _set_default(branch, "NORM", "BN")
    _set_default(branch, "OUT_CHANNELS", 8)

    if "BOXINST" not in cfg.MODEL:
        cfg.MODEL.BOXINST = CN()
    boxinst = cfg.MODEL.BOXINST
    _set_default(boxinst, "ENABLED", False)
    _set_default(boxinst, "BOTTOM_PIXELS_REMOVED", 10)
    if "PAIRWISE" not in boxinst:
        boxinst.PAIRWISE = CN()
    _set_default(boxinst.PAIRWISE, "SIZE", 3)
    _set_default(boxinst.PAIRWISE, "DILATION", 2)
    _set_default(boxinst.PAIRWISE, "COLOR_THRESH", 0.3)
    _set_default(boxinst.PAIRWISE, "WARMUP_ITERS", 10000)


def check_point_head_name(cfg: CN, mask_head: str, point_heads: Sequence[str]) -> None:
    """ValueError unless ``MODEL.POINT_HEAD.NAME`` is one of ``point_heads``, the names of the point
    head that the mask head ``mask_head`` builds."""
    name = cfg.MODEL.POINT_HEAD.NAME
    if name not in point_heads:
        raise ValueError(
            f"MODEL.POINT_HEAD.NAME is {name!r}, but {mask_head} has the point head "
            f"{' / '.join(map(repr, point_heads))}; set it to that (PointRend: StandardPointHead with "
            "PointSupPointRendMaskHead; Implicit PointRend: ImplicitPointHead with "
            "PointSupImplicitPointRendMaskHead)"
        )


def check_point_head_classes(cfg: CN, mask_head: str) -> None:
    """ValueError unless the point head of ``mask_head`` (PointRend, Implicit PointRend) predicts the
    detector's classes: ``MODEL.POINT_HEAD.NUM_CLASSES == MODEL.ROI_HEADS.NUM_CLASSES``, or a
    class-agnostic point head (``MODEL.POINT_HEAD.CLS_AGNOSTIC_MASK``). The one statement of the
    rule: the heads check it when built, the start-up checks before the data are loaded."""
    point, num_classes = cfg.MODEL.POINT_HEAD, cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if not point.CLS_AGNOSTIC_MASK and num_classes != point.NUM_CLASSES:
        raise ValueError(
            f"MODEL.POINT_HEAD.NUM_CLASSES ({point.NUM_CLASSES}) of the point head of {mask_head} "
            f"differs from MODEL.ROI_HEADS.NUM_CLASSES ({num_classes}); set both to the number of "
            "classes of the dataset"
        )


def is_condinst(cfg: CN) -> bool:
    """Whether the config builds point_sup's CondInst / BoxInst (an image-level model, no ROI heads)."""
    return cfg.MODEL.META_ARCHITECTURE == CONDINST_META_ARCHITECTURE


def num_classes_key(cfg: CN) -> str:
    """The key holding the model's number of classes: ``MODEL.FCOS.NUM_CLASSES`` for CondInst /
    BoxInst (AdelaiDet's key), ``MODEL.ROI_HEADS.NUM_CLASSES`` for the R-CNN models."""
    return "MODEL.FCOS.NUM_CLASSES" if is_condinst(cfg) else "MODEL.ROI_HEADS.NUM_CLASSES"


def model_num_classes(cfg: CN) -> int:
    """The model's number of classes: the value at :func:`num_classes_key`."""
    return functools.reduce(getattr, num_classes_key(cfg).split("."), cfg)


def is_mixed_supervision(cfg: CN) -> bool:
    """Whether the config trains each object from what its annotation carries (``MODEL.MIXED_SUP``);
    ValueError for the settings it does not accept (with ``INPUT.POINT_SUP``, unknown BOTH /
    WEIGHTING)."""
    mixed = cfg.MODEL.MIXED_SUP
    if not mixed.ENABLED:
        return False
    if cfg.INPUT.POINT_SUP:
        raise ValueError(
            "MODEL.MIXED_SUP.ENABLED and INPUT.POINT_SUP are both on: mixed supervision already trains "
            "point-annotated objects from their points; turn INPUT.POINT_SUP off"
        )
    if mixed.BOTH not in MIXED_SUP_BOTH:
        raise ValueError(f"MODEL.MIXED_SUP.BOTH must be one of {MIXED_SUP_BOTH}, got {mixed.BOTH!r}")
    if mixed.WEIGHTING not in MIXED_SUP_WEIGHTING:
        raise ValueError(
            f"MODEL.MIXED_SUP.WEIGHTING must be one of {MIXED_SUP_WEIGHTING}, got {mixed.WEIGHTING!r}"
        )
    return True


def condinst_supervision(cfg: CN) -> str:
    """The supervision a CondInst config selects: ``"mixed"`` with ``MODEL.MIXED_SUP.ENABLED`` (box-only
    objects then get BoxInst's losses if ``MODEL.BOXINST.ENABLED``), ``"points"`` with
    ``INPUT.POINT_SUP``, ``"boxes"`` with ``MODEL.BOXINST.ENABLED``, ``"mask"`` otherwise;
    ``INPUT.POINT_SUP`` with either of the others is an error."""
    if is_mixed_supervision(cfg):
        return "mixed"
    points, boxes = bool(cfg.INPUT.POINT_SUP), bool(cfg.MODEL.BOXINST.ENABLED)
    if points and boxes:
        raise ValueError("INPUT.POINT_SUP and MODEL.BOXINST.ENABLED are both on; a CondInst config uses one")
    return "points" if points else "boxes" if boxes else "mask"
