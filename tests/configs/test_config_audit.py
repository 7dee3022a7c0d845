"""Config audit: every shipped config, resolved, against its Detectron2 counterpart, key by key.

Each config in ``configs/`` (the nuclei miniature aside: it has no counterpart by design) is compared
with the Detectron2 recipe the paper used: the model-zoo YAML that ships inside detectron2
(``detectron2.model_zoo.get_config_file``), or Detectron2's PointRend / PointSup project YAML, whose
values are cited below because pip installs the projects' Python packages but not their configs.
Both sides are resolved the same way (Detectron2's defaults + ``add_point_sup_config``) and every
key is compared. Only the deltas declared for a config may differ, each with the value it must have
and the reason (datasets, point keys, head names, what the paper changes). A config without a
counterpart names why in ``COUNTERPARTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from point_sup import add_point_sup_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"

# ------------------------------------------------------------------------------------------------
# Detectron2's project configs, cited (facebookresearch/detectron2, commit 02b5c4e; unchanged since
# 2021): key -> value over the model zoo's Base-RCNN-FPN.yaml, in _BASE_ order.
POINT_REND_BASE = {  # projects/PointRend/configs/InstanceSegmentation/Base-PointRend-RCNN-FPN.yaml
    "MODEL.MASK_ON": True,
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": True,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "",
    "MODEL.ROI_MASK_HEAD.NAME": "PointRendMaskHead",
    "MODEL.ROI_MASK_HEAD.FC_DIM": 1024,
    "MODEL.ROI_MASK_HEAD.NUM_FC": 2,
    "MODEL.ROI_MASK_HEAD.OUTPUT_SIDE_RESOLUTION": 7,
    "MODEL.ROI_MASK_HEAD.IN_FEATURES": ["p2"],
    "MODEL.ROI_MASK_HEAD.POINT_HEAD_ON": True,
    "MODEL.POINT_HEAD.FC_DIM": 256,
    "MODEL.POINT_HEAD.NUM_FC": 3,
    "MODEL.POINT_HEAD.IN_FEATURES": ["p2"],
    "INPUT.MASK_FORMAT": "bitmask",
}
POINT_REND_R50_3X = {  # .../pointrend_rcnn_R_50_FPN_3x_coco.yaml
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "MODEL.RESNETS.DEPTH": 50,
    "SOLVER.STEPS": (210000, 250000),
    "SOLVER.MAX_ITER": 270000,
}
IMPLICIT_BASE = {  # projects/PointRend/configs/InstanceSegmentation/Base-Implicit-PointRend.yaml
    "MODEL.MASK_ON": True,
    "MODEL.ROI_MASK_HEAD.NAME": "ImplicitPointRendMaskHead",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "",
    "MODEL.ROI_MASK_HEAD.FC_DIM": 1024,
    "MODEL.ROI_MASK_HEAD.NUM_FC": 2,
    "MODEL.POINT_HEAD.NAME": "ImplicitPointHead",
    "MODEL.POINT_HEAD.FC_DIM": 256,
    "MODEL.POINT_HEAD.NUM_FC": 3,
    "MODEL.POINT_HEAD.IN_FEATURES": ["p2"],
    "MODEL.POINT_HEAD.NUM_CLASSES": 80,
    "MODEL.POINT_HEAD.CLS_AGNOSTIC_MASK": False,
    "MODEL.POINT_HEAD.TRAIN_NUM_POINTS": 196,
    "MODEL.POINT_HEAD.SUBDIVISION_STEPS": 3,
    "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS": 784,
    "MODEL.IMPLICIT_POINTREND.IMAGE_FEATURE_ENABLED": True,
    "MODEL.IMPLICIT_POINTREND.POS_ENC_ENABLED": True,
    "MODEL.IMPLICIT_POINTREND.PARAMS_L2_REGULARIZER": 0.00001,
    "INPUT.MASK_FORMAT": "bitmask",
}
IMPLICIT_R50_3X = dict(POINT_REND_R50_3X)  # .../implicit_pointrend_R_50_FPN_3x_coco.yaml (same keys)
POINT_SUP_P10 = {  # projects/PointSup/configs/mask_rcnn_R_50_FPN_3x_point_sup_coco.yaml
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "MODEL.MASK_ON": True,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsamplePointSupHead",
    "INPUT.POINT_SUP": True,
    "DATASETS.TRAIN": ("coco_2017_train_points_n10_v1_without_masks",),
    "SOLVER.STEPS": (210000, 250000),
    "SOLVER.MAX_ITER": 270000,
}
POINT_SUP_POINT_AUG = {"INPUT.SAMPLE_POINTS": 5}  # .../mask_rcnn_R_50_FPN_3x_point_sup_point_aug_coco.yaml
POINT_SUP_IMPLICIT = {  # .../implicit_pointrend_R_50_FPN_3x_point_sup_point_aug_coco.yaml
    "MODEL.ROI_MASK_HEAD.NAME": "ImplicitPointRendPointSupHead",
    "INPUT.POINT_SUP": True,
    "INPUT.SAMPLE_POINTS": 5,
    "DATASETS.TRAIN": ("coco_2017_train_points_n10_v1_without_masks",),
}
CITED_FILES = {  # file in the Detectron2 source tree -> the cited chain it must resolve to
    "PointRend/configs/InstanceSegmentation/pointrend_rcnn_R_50_FPN_3x_coco.yaml": [
        POINT_REND_BASE,
        POINT_REND_R50_3X,
    ],
    "PointRend/configs/InstanceSegmentation/implicit_pointrend_R_50_FPN_3x_coco.yaml": [
        IMPLICIT_BASE,
        IMPLICIT_R50_3X,
    ],
    "PointSup/configs/mask_rcnn_R_50_FPN_3x_point_sup_coco.yaml": [POINT_SUP_P10],
    "PointSup/configs/mask_rcnn_R_50_FPN_3x_point_sup_point_aug_coco.yaml": [
        POINT_SUP_P10,
        POINT_SUP_POINT_AUG,
    ],
    "PointSup/configs/implicit_pointrend_R_50_FPN_3x_point_sup_point_aug_coco.yaml": [
        IMPLICIT_BASE,
        IMPLICIT_R50_3X,
        POINT_SUP_IMPLICIT,
    ],
}

# ------------------------------------------------------------------------------------------------
# Deltas: key -> (the value our config must have, why it differs).
HEAD_P10 = {
    "MODEL.ROI_MASK_HEAD.NAME": ("PointSupMaskRCNNConvUpsampleHead", "point_sup's point-trainable head"),
    "INPUT.POINT_SUP": (True, "trained from P10 points (paper §3.2)"),
}
POINT_AUG = {"INPUT.SAMPLE_POINTS": (5, "point-based augmentation: half of the 10 points (paper §3.2)")}


def train(*names: str, why: str = "point_sup's registered P10 training set") -> dict:
    return {"DATASETS.TRAIN": (tuple(names), why)}


def val_set(*names: str, why: str) -> dict:
    return {"DATASETS.TEST": (tuple(names), why)}


ONE_X = {
    "SOLVER.STEPS": ((60000, 80000), "1x schedule; the model zoo has only 3x for this backbone"),
    "SOLVER.MAX_ITER": (90000, "1x schedule; the model zoo has only 3x for this backbone"),
}
COCO_P10 = train("coco_2017_train_p10")
NO_POINT_HEAD_NAME = {
    "MODEL.POINT_HEAD.NAME": (
        "StandardPointHead",
        "the shared default, which point_sup's Implicit PointRend head accepts as well as "
        "ImplicitPointHead: it always builds its generated point head (point_sup.config)",
    )
}
IMPLICIT_HEAD = {
    "MODEL.ROI_MASK_HEAD.NAME": ("PointSupImplicitPointRendMaskHead", "point_sup's Implicit PointRend"),
    **NO_POINT_HEAD_NAME,
}
R101_BACKBONE = {
    "MODEL.WEIGHTS": (
        "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
        "Table 6 R101, as mask_rcnn_R_101_FPN_3x",
    ),
    "MODEL.RESNETS.DEPTH": (101, "Table 6 R101"),
}
X101_BACKBONE = {
    "MODEL.WEIGHTS": ("detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl", "Table 6 X101"),
    "MODEL.PIXEL_STD": ([57.375, 57.120, 58.395], "Table 6 X101, as mask_rcnn_X_101_32x8d_FPN_3x"),
    "MODEL.RESNETS.STRIDE_IN_1X1": (False, "Table 6 X101 (FAIR's pytorch-style weights)"),
    "MODEL.RESNETS.NUM_GROUPS": (32, "Table 6 X101"),
    "MODEL.RESNETS.WIDTH_PER_GROUP": (8, "Table 6 X101"),
    "MODEL.RESNETS.DEPTH": (101, "Table 6 X101"),
}
VOC_MASKS = {
    "MODEL.MASK_ON": (True, "instance segmentation; the zoo's VOC recipe is detection only"),
    **train("voc_2012_train_instance", why="SBD-augmented VOC 2012 with instance masks (paper §3.3)"),
    **val_set("voc_2012_val_instance", why="VOC 2012 val with instance masks, mask AP50 (Table 1b)"),
}
CITYSCAPES_WEIGHTS = {
    "MODEL.WEIGHTS": (
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        "ImageNet initialisation (the paper's 32.7 M AP; the zoo starts from a COCO mask model, "
        "36.5 AP, which would also hand the P10 model mask supervision)",
    )
}


@dataclass
class Counterpart:
    """A Detectron2 recipe: a model-zoo file (None: Detectron2's defaults), then cited overlays, then
    the declared deltas."""

    zoo: str | None
    overlays: list[dict] = field(default_factory=list)
    deltas: dict = field(default_factory=dict)


def _coco_mask_rcnn() -> dict[str, Counterpart]:
    out = {}
    for backbone in ("R_50", "R_101", "X_101_32x8d"):
        for schedule in ("1x", "3x"):
            zoo_schedule = schedule if backbone == "R_50" else "3x"  # the zoo's only 1x is R50's
            zoo = f"COCO-InstanceSegmentation/mask_rcnn_{backbone}_FPN_{zoo_schedule}.yaml"
            schedule_delta = ONE_X if zoo_schedule != schedule else {}
            name = f"COCO/mask_rcnn_{backbone}_FPN_{schedule}"
            out[f"{name}_M.yaml"] = Counterpart(zoo, deltas=schedule_delta)
            if (backbone, schedule) == ("R_50", "3x"):  # the two PointSup project configs
                point_sup_name = {"MODEL.ROI_MASK_HEAD.NAME": HEAD_P10["MODEL.ROI_MASK_HEAD.NAME"]}
                out[f"{name}_P10.yaml"] = Counterpart(zoo, [POINT_SUP_P10], {**point_sup_name, **COCO_P10})
                out[f"{name}_P10_point_aug.yaml"] = Counterpart(
                    zoo, [POINT_SUP_P10, POINT_SUP_POINT_AUG], {**point_sup_name, **COCO_P10}
                )
            else:
                out[f"{name}_P10.yaml"] = Counterpart(zoo, deltas={**schedule_delta, **HEAD_P10, **COCO_P10})
                out[f"{name}_P10_point_aug.yaml"] = Counterpart(
                    zoo, deltas={**schedule_delta, **HEAD_P10, **POINT_AUG, **COCO_P10}
                )
    return out


BASE = "Base-RCNN-FPN.yaml"
COUNTERPARTS: dict[str, Counterpart] = {
    **_coco_mask_rcnn(),
    "COCO/mask_rcnn_R_50_FPN_3x_self_training.yaml": Counterpart(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
        deltas={
            **train("coco_2017_train_pseudo_masks", why="pseudo masks of the P10 model (paper §3.3.2)"),
            "INPUT.MASK_FORMAT": ("bitmask", "the pseudo masks are RLE"),
        },
    ),
    "COCO/mask_rcnn_R_50_FPN_6x_M.yaml": Counterpart(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
        deltas={
            "SOLVER.STEPS": ((420000, 500000), "6x: the 3x schedule doubled (no 6x in the model zoo)"),
            "SOLVER.MAX_ITER": (540000, "6x: the self-training comparison of paper §3.3.2"),
        },
    ),
    "COCO/point_rend_R_50_FPN_3x_M.yaml": Counterpart(
        BASE,
        [POINT_REND_BASE, POINT_REND_R50_3X],
        {"MODEL.ROI_MASK_HEAD.NAME": ("PointSupPointRendMaskHead", "point_sup's point-trainable PointRend")},
    ),
    # No upstream counterpart: Detectron2's PointSup project has no PointRend from points.
    "COCO/point_rend_R_50_FPN_3x_P10_point_aug.yaml": Counterpart(
        BASE,
        [POINT_REND_BASE, POINT_REND_R50_3X],
        {
            "MODEL.ROI_MASK_HEAD.NAME": (
                "PointSupPointRendMaskHead",
                "point_sup's point-trainable PointRend",
            ),
            "INPUT.POINT_SUP": (True, "Table 3c: PointRend from P10"),
            **POINT_AUG,
            **COCO_P10,
        },
    ),
    "COCO/implicit_point_rend_R_50_FPN_3x_M.yaml": Counterpart(
        BASE, [IMPLICIT_BASE, IMPLICIT_R50_3X], IMPLICIT_HEAD
    ),
    "COCO/implicit_point_rend_R_50_FPN_3x_P10_point_aug.yaml": Counterpart(
        BASE, [IMPLICIT_BASE, IMPLICIT_R50_3X, POINT_SUP_IMPLICIT], {**IMPLICIT_HEAD, **COCO_P10}
    ),
    # Table 6's bigger backbones: no upstream Implicit PointRend configs for them.
    "COCO/implicit_point_rend_R_101_FPN_3x_P10_point_aug.yaml": Counterpart(
        BASE,
        [IMPLICIT_BASE, IMPLICIT_R50_3X, POINT_SUP_IMPLICIT],
        {**IMPLICIT_HEAD, **COCO_P10, **R101_BACKBONE},
    ),
    "COCO/implicit_point_rend_X_101_32x8d_FPN_3x_P10_point_aug.yaml": Counterpart(
        BASE,
        [IMPLICIT_BASE, IMPLICIT_R50_3X, POINT_SUP_IMPLICIT],
        {**IMPLICIT_HEAD, **COCO_P10, **X101_BACKBONE},
    ),
    "VOC/mask_rcnn_R_50_FPN_M.yaml": Counterpart(
        "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml", deltas=VOC_MASKS
    ),
    "VOC/mask_rcnn_R_50_FPN_P10.yaml": Counterpart(
        "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
        deltas={**VOC_MASKS, **HEAD_P10, **train("voc_2012_train_instance_p10")},
    ),
    "Cityscapes/mask_rcnn_R_50_FPN_M.yaml": Counterpart(
        "Cityscapes/mask_rcnn_R_50_FPN.yaml", deltas=CITYSCAPES_WEIGHTS
    ),
    "Cityscapes/mask_rcnn_R_50_FPN_P10.yaml": Counterpart(
        "Cityscapes/mask_rcnn_R_50_FPN.yaml",
        deltas={**CITYSCAPES_WEIGHTS, **HEAD_P10, **train("cityscapes_fine_instance_seg_train_p10")},
    ),
    "LVIS/mask_rcnn_R_50_FPN_1x_M.yaml": Counterpart(
        "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    ),
    "LVIS/mask_rcnn_R_50_FPN_1x_P10.yaml": Counterpart(
        "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        deltas={**HEAD_P10, **train("lvis_v1_train_p10")},
    ),
}

# ------------------------------------------------------------------------------------------------
# CondInst / BoxInst: AdelaiDet's recipes (aim-uofa/AdelaiDet configs/CondInst/Base-CondInst.yaml +
# MS_R_50_3x.yaml, configs/BoxInst/Base-BoxInst.yaml + MS_R_50_3x.yaml), cited over Detectron2's
# defaults, which AdelaiDet's config extends. Their keys that point_sup has no use for are left out:
# MODEL.PROPOSAL_GENERATOR.NAME "FCOS" (point_sup's CondInst builds FCOS itself), FCOS.THRESH_WITH_CTR
# True (point_sup always thresholds after the centerness, as Detectron2's FCOS), FCOS.USE_SCALE
# (Detectron2's FCOS has no per-level scale).
ADELAIDET_CONDINST_BASE = {
    "MODEL.MASK_ON": True,
    "MODEL.BACKBONE.NAME": "build_fcos_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES": ["res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES": ["res3", "res4", "res5"],
    "MODEL.CONDINST.MAX_PROPOSALS": 500,
    "DATASETS.TRAIN": ("coco_2017_train",),
    "DATASETS.TEST": ("coco_2017_val",),
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.01,
    "SOLVER.STEPS": (60000, 80000),
    "SOLVER.MAX_ITER": 90000,
    "INPUT.MIN_SIZE_TRAIN": (640, 672, 704, 736, 768, 800),
}
ADELAIDET_BOXINST_BASE = {
    **{k: v for k, v in ADELAIDET_CONDINST_BASE.items() if k != "MODEL.CONDINST.MAX_PROPOSALS"},
    "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 64,
    "MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS": 16,
    "MODEL.BOXINST.ENABLED": True,
    "MODEL.BOXINST.BOTTOM_PIXELS_REMOVED": 10,
    "MODEL.BOXINST.PAIRWISE.SIZE": 3,
    "MODEL.BOXINST.PAIRWISE.DILATION": 2,
    "MODEL.BOXINST.PAIRWISE.COLOR_THRESH": 0.3,
}
ADELAIDET_R50_3X = {  # CondInst/MS_R_50_3x.yaml and BoxInst/MS_R_50_3x.yaml (OUTPUT_DIR aside)
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "MODEL.RESNETS.DEPTH": 50,
    "SOLVER.STEPS": (210000, 250000),
    "SOLVER.MAX_ITER": 270000,
}
CONDINST_ARCH = {
    "MODEL.META_ARCHITECTURE": (
        "PointSupCondInst",
        "point_sup's CondInst on Detectron2's FCOS (AdelaiDet's is named CondInst)",
    ),
    "INPUT.MASK_FORMAT": (
        "bitmask",
        "the same targets (transformed polygons rasterized at the input size), but in the loader's workers, "
        "not in the training step (AdelaiDet rasterizes in the model)",
    ),
}
CONDINST_P10 = {
    "INPUT.POINT_SUP": (True, "Table 3b: CondInst from P10"),
    **POINT_AUG,
    "MODEL.CONDINST.INFER_CROP_TO_BOX": (
        True,
        "paper footnote 2: mask pixels outside the predicted box removed",
    ),
}
BOX_ONLY_WHY = "the box-only view of the training set: its masks and points removed"
VOC_CONDINST = {
    "MODEL.FCOS.NUM_CLASSES": (20, "VOC's 20 classes"),
    "INPUT.MIN_SIZE_TRAIN": (
        (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
        "input sizes of the VOC recipe (VOC/mask_rcnn_R_50_FPN_M.yaml, Detectron2's VOC detection)",
    ),
    "SOLVER.STEPS": ((12000, 16000), "schedule of the VOC recipe"),
    "SOLVER.MAX_ITER": (18000, "schedule of the VOC recipe"),
    "SOLVER.WARMUP_ITERS": (100, "schedule of the VOC recipe"),
    **val_set("voc_2012_val_instance", why="VOC 2012 val instance masks (Table 1b)"),
}
CITYSCAPES_CONDINST = {
    "MODEL.FCOS.NUM_CLASSES": (8, "Cityscapes' 8 instance classes"),
    "INPUT.MIN_SIZE_TRAIN": ((800, 832, 864, 896, 928, 960, 992, 1024), "Detectron2's Cityscapes recipe"),
    "INPUT.MIN_SIZE_TEST": (1024, "Detectron2's Cityscapes recipe"),
    "INPUT.MAX_SIZE_TRAIN": (2048, "Detectron2's Cityscapes recipe"),
    "INPUT.MAX_SIZE_TEST": (2048, "Detectron2's Cityscapes recipe"),
    "SOLVER.IMS_PER_BATCH": (8, "Detectron2's Cityscapes recipe"),
    "SOLVER.BASE_LR": (0.005, "CondInst's 0.01 for 16 images, scaled linearly to the recipe's 8"),
    "SOLVER.STEPS": ((18000,), "Detectron2's Cityscapes recipe"),
    "SOLVER.MAX_ITER": (24000, "Detectron2's Cityscapes recipe"),
    "TEST.EVAL_PERIOD": (8000, "Detectron2's Cityscapes recipe"),
    **val_set("cityscapes_fine_instance_seg_val", why="Cityscapes fine val (Table 1c)"),
}
COUNTERPARTS.update(
    {
        "COCO/condinst_R_50_FPN_3x_M.yaml": Counterpart(
            None, [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X], CONDINST_ARCH
        ),
        "COCO/condinst_R_50_FPN_3x_P10_point_aug.yaml": Counterpart(
            None, [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X], {**CONDINST_ARCH, **CONDINST_P10, **COCO_P10}
        ),
        "COCO/boxinst_R_50_FPN_3x_B.yaml": Counterpart(
            None,
            [ADELAIDET_BOXINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **train("coco_2017_train_boxes", why=BOX_ONLY_WHY)},
        ),
        # No upstream counterparts for VOC / Cityscapes: AdelaiDet's COCO recipe with the schedule and
        # input sizes of point_sup's Mask R-CNN recipe for the dataset.
        "VOC/condinst_R_50_FPN_M.yaml": Counterpart(
            None,
            [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **VOC_CONDINST, **train("voc_2012_train_instance", why="VOC 2012 train")},
        ),
        "VOC/condinst_R_50_FPN_P10_point_aug.yaml": Counterpart(
            None,
            [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **VOC_CONDINST, **CONDINST_P10, **train("voc_2012_train_instance_p10")},
        ),
        "VOC/boxinst_R_50_FPN_B.yaml": Counterpart(
            None,
            [ADELAIDET_BOXINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **VOC_CONDINST, **train("voc_2012_train_instance_boxes", why=BOX_ONLY_WHY)},
        ),
        "Cityscapes/condinst_R_50_FPN_M.yaml": Counterpart(
            None,
            [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X],
            {
                **CONDINST_ARCH,
                **CITYSCAPES_CONDINST,
                **train("cityscapes_fine_instance_seg_train", why="Cityscapes fine train"),
            },
        ),
        "Cityscapes/condinst_R_50_FPN_P10_point_aug.yaml": Counterpart(
            None,
            [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X],
            {
                **CONDINST_ARCH,
                **CITYSCAPES_CONDINST,
                **CONDINST_P10,
                **train("cityscapes_fine_instance_seg_train_p10"),
            },
        ),
        "Cityscapes/boxinst_R_50_FPN_B.yaml": Counterpart(
            None,
            [ADELAIDET_BOXINST_BASE, ADELAIDET_R50_3X],
            {
                **CONDINST_ARCH,
                **CITYSCAPES_CONDINST,
                **train("cityscapes_fine_instance_seg_train_boxes", why=BOX_ONLY_WHY),
            },
        ),
    }
)

# Mixed supervision (issue 15, not in the paper): the head's M recipe, trained per object from what
# each annotation carries; point-based augmentation for the point objects as in the P10 rows.
MIXED = {"MODEL.MIXED_SUP.ENABLED": (True, "per-object supervision: masks, P10 points or boxes (issue 15)")}
COCO_M10 = train("coco_2017_train_p10_m10", why="10 % of the objects keep their mask, the rest P10")
COCO_B50 = train("coco_2017_train_p10_b50", why="P10 with half of the objects box only")
CONDINST_CROP = {"MODEL.CONDINST.INFER_CROP_TO_BOX": CONDINST_P10["MODEL.CONDINST.INFER_CROP_TO_BOX"]}
COUNTERPARTS.update(
    {
        "COCO/mask_rcnn_R_50_FPN_3x_mixed.yaml": Counterpart(
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
            deltas={
                "MODEL.ROI_MASK_HEAD.NAME": HEAD_P10["MODEL.ROI_MASK_HEAD.NAME"],
                **MIXED,
                **COCO_M10,
            },
        ),
        "COCO/point_rend_R_50_FPN_3x_mixed.yaml": Counterpart(
            BASE,
            [POINT_REND_BASE, POINT_REND_R50_3X],
            {
                "MODEL.ROI_MASK_HEAD.NAME": (
                    "PointSupPointRendMaskHead",
                    "point_sup's point-trainable PointRend",
                ),
                **MIXED,
                **POINT_AUG,
                **COCO_M10,
            },
        ),
        "COCO/implicit_point_rend_R_50_FPN_3x_mixed.yaml": Counterpart(
            BASE, [IMPLICIT_BASE, IMPLICIT_R50_3X], {**IMPLICIT_HEAD, **MIXED, **POINT_AUG, **COCO_M10}
        ),
        "COCO/condinst_R_50_FPN_3x_mixed.yaml": Counterpart(
            None,
            [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **CONDINST_CROP, **MIXED, **POINT_AUG, **COCO_M10},
        ),
        "COCO/boxinst_R_50_FPN_3x_mixed.yaml": Counterpart(
            None,
            [ADELAIDET_BOXINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **CONDINST_CROP, **MIXED, **POINT_AUG, **COCO_B50},
        ),
    }
)

# The small Implicit PointRend (issue 16, not in the paper): the P10 recipe with a factorised
# prediction layer of the parameter head.
COUNTERPARTS["COCO/implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml"] = Counterpart(
    BASE,
    [IMPLICIT_BASE, IMPLICIT_R50_3X, POINT_SUP_IMPLICIT],
    {
        **IMPLICIT_HEAD,
        **COCO_P10,
        "MODEL.IMPLICIT_POINTREND.PARAMS_RANK": (
            32,
            "small Implicit PointRend: 12.9x fewer mask-head weights",
        ),
    },
)

for _target, _init in (("M_from_coco_M", "M"), ("M_from_coco_P10", "P10"), ("P10_from_coco_M", "M")):
    _base = COUNTERPARTS[f"VOC/mask_rcnn_R_50_FPN_{_target.split('_')[0]}.yaml"]
    COUNTERPARTS[f"VOC/mask_rcnn_R_50_FPN_{_target}.yaml"] = Counterpart(
        _base.zoo,
        deltas={
            **_base.deltas,
            "MODEL.WEIGHTS": (
                f"output/coco_mask_rcnn_R_50_FPN_3x_{_init}/model_final.pth",
                f"Table 4: fine-tuned from the COCO-{_init} model (the README's OUTPUT_DIR)",
            ),
        },
    )

SHIPPED = sorted(
    str(p.relative_to(CONFIG_DIR))
    for p in CONFIG_DIR.rglob("*.yaml")
    if not p.name.startswith("Base-") and p.parent.name != "nuclei"
)


def _empty_cfg() -> CfgNode:
    cfg = get_cfg()
    add_point_sup_config(cfg)
    return cfg


def resolve_ours(relative: str) -> CfgNode:
    cfg = _empty_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / relative))
    return cfg


def resolve_counterpart(counterpart: Counterpart) -> CfgNode:
    cfg = _empty_cfg()
    if counterpart.zoo is not None:
        cfg.merge_from_file(model_zoo.get_config_file(counterpart.zoo))
    for overlay in counterpart.overlays:
        cfg.merge_from_list([item for pair in overlay.items() for item in pair])
    return cfg


def flatten(node: CfgNode, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _normalized(value):
    return tuple(_normalized(v) for v in value) if isinstance(value, list | tuple) else value


def test_every_shipped_config_has_a_counterpart():
    assert set(SHIPPED) == set(COUNTERPARTS), (
        "configs without an audit entry (add one to COUNTERPARTS, with a reason if it has no "
        f"Detectron2 counterpart): {sorted(set(SHIPPED) - set(COUNTERPARTS))}; "
        f"entries without a config: {sorted(set(COUNTERPARTS) - set(SHIPPED))}"
    )


@pytest.mark.parametrize("relative", SHIPPED)
def test_config_equals_its_detectron2_counterpart_but_for_the_declared_deltas(relative):
    counterpart = COUNTERPARTS[relative]
    ours, theirs = flatten(resolve_ours(relative)), flatten(resolve_counterpart(counterpart))
    assert set(ours) == set(theirs)
    differ = {k: (ours[k], theirs[k]) for k in ours if _normalized(ours[k]) != _normalized(theirs[k])}
    undeclared = {k: v for k, v in differ.items() if k not in counterpart.deltas}
    assert not undeclared, f"{relative}: (ours, Detectron2's) differ where no delta is declared: {undeclared}"
    for key, (expected, why) in counterpart.deltas.items():
        assert _normalized(ours[key]) == _normalized(expected), f"{relative}: {key} ({why})"
        assert key in differ, f"{relative}: {key} is declared a delta ({why}) but equals Detectron2's"


def test_lvis_schedule_is_detectron2s_180k():
    for name in ("LVIS/mask_rcnn_R_50_FPN_1x_M.yaml", "LVIS/mask_rcnn_R_50_FPN_1x_P10.yaml"):
        cfg = resolve_ours(name)
        assert cfg.SOLVER.MAX_ITER == 180000 and tuple(cfg.SOLVER.STEPS) == (120000, 160000), name


def test_point_sup_defaults_equal_point_rends():
    """Keys both add: point_sup's defaults are PointRend's (so the comparisons above mean the same)."""
    point_rend = pytest.importorskip("detectron2.projects.point_rend")
    theirs = get_cfg()
    point_rend.add_pointrend_config(theirs)
    ours = flatten(_empty_cfg())
    for key, value in flatten(theirs).items():
        if key in ours:
            assert _normalized(ours[key]) == _normalized(value), key


def _project_config_dir() -> Path | None:
    """Detectron2's ``projects/`` in a source tree (an in-place install), where the YAMLs live."""
    try:
        import detectron2.projects.point_rend as point_rend
    except ImportError:
        return None
    projects = Path(point_rend.__file__).resolve().parents[2]
    return projects if (projects / "PointRend" / "configs").is_dir() else None


@pytest.mark.parametrize("relative", sorted(CITED_FILES))
def test_cited_values_equal_detectron2s_files_where_installed(relative):
    projects = _project_config_dir()
    if projects is None or not (projects / relative).is_file():
        pytest.skip("Detectron2's project configs are not installed (pip installs only their code)")
    cfg = _empty_cfg()
    cfg.merge_from_file(str(projects / relative))
    cited = resolve_counterpart(Counterpart(BASE, CITED_FILES[relative]))
    assert flatten(cfg) == flatten(cited)


# Points plus the box prior (issue 26, not in the paper): the P10 + point aug. rows with BoxInst's two
# box terms on the same objects (MODEL.BOX_PRIOR); the ROI heads hand the RoIs' colours to the head.
BOX_PRIOR = {"MODEL.BOX_PRIOR.ENABLED": (True, "P10 plus the box's projection and pairwise terms (issue 26)")}
COUNTERPARTS.update(
    {
        "COCO/mask_rcnn_R_50_FPN_3x_P10_point_aug_box_prior.yaml": Counterpart(
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
            [POINT_SUP_P10, POINT_SUP_POINT_AUG],
            {
                "MODEL.ROI_MASK_HEAD.NAME": HEAD_P10["MODEL.ROI_MASK_HEAD.NAME"],
                **COCO_P10,
                **BOX_PRIOR,
                "MODEL.ROI_HEADS.NAME": ("PointSupROIHeads", "hands the RoIs' colours to the mask head"),
            },
        ),
        "COCO/condinst_R_50_FPN_3x_P10_point_aug_box_prior.yaml": Counterpart(
            None,
            [ADELAIDET_CONDINST_BASE, ADELAIDET_R50_3X],
            {**CONDINST_ARCH, **CONDINST_P10, **COCO_P10, **BOX_PRIOR},
        ),
    }
)
