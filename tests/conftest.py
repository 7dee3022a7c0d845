"""Shared test set-up: point_sup is imported first, as every entry point does; real nuclei data."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Shared test helpers import by name from here: `replicas` (dataset replicas), `recipes` (README recipes).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest

import point_sup  # noqa: F401  (registers point_sup's components)

# Shrinks any of configs/*.yaml to a model that trains one iteration on CPU in seconds, on the
# real nuclei tiles (1 class): ResNet-18 with GroupNorm (no pretrained weights exist here),
# narrow heads, 128-px images. The schedule, supervision and head type of the file are kept.
TINY_OVERRIDES = [
    "MODEL.WEIGHTS", "",
    "MODEL.DEVICE", "cpu",
    "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NUM_GROUPS", 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 64,
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.NUM_CLASSES", 1,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.ROI_MASK_HEAD.FC_DIM", 64,
    "MODEL.POINT_HEAD.NUM_CLASSES", 1,
    "MODEL.FCOS.NUM_CLASSES", 1,
    "MODEL.POINT_HEAD.FC_DIM", 32,
    "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
    "TEST.DETECTIONS_PER_IMAGE", 20,
    "INPUT.MIN_SIZE_TRAIN", (128,),
    "INPUT.MAX_SIZE_TRAIN", 192,
    "INPUT.MIN_SIZE_TEST", 128,
    "INPUT.MAX_SIZE_TEST", 192,
    "INPUT.MASK_FORMAT", "bitmask",
    "SOLVER.IMS_PER_BATCH", 2,
    "SOLVER.MAX_ITER", 1,
    "SOLVER.WARMUP_ITERS", 0,
    "SOLVER.CHECKPOINT_PERIOD", 100000,
    "DATALOADER.NUM_WORKERS", 0,
    "TEST.EVAL_PERIOD", 0,
]  # fmt: skip


@pytest.fixture(scope="session")
def nuclei_datasets(tmp_path_factory):
    """The real nuclei dataset, registered as nuclei_{train,val} (masks) and nuclei_{train,val}_p10.

    Built under ``<datasets_root>/nuclei``: a subprocess with ``DETECTRON2_DATASETS=<datasets_root>``
    registers the same names on ``import point_sup``.
    """
    from point_sup.data import register_nuclei

    datasets_root = tmp_path_factory.mktemp("datasets")
    paths = register_nuclei(datasets_root / "nuclei")
    return {**paths, "datasets_root": datasets_root}


@pytest.fixture
def tiny_overrides():
    """``cfg.merge_from_list`` arguments that shrink any point_sup config (see TINY_OVERRIDES)."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def cityscapes_replica(nuclei_datasets, tmp_path_factory):
    """The Cityscapes replica of tests/replicas/cityscapes.py (about a second), registering nothing.

    Returns its ``cityscapes`` folder, under a datasets root of its own (``.parent``): a subprocess
    with ``DETECTRON2_DATASETS`` set to that root finds it under the builtin Cityscapes names.
    """
    from replicas import nuclei_tiles
    from replicas.cityscapes import build_cityscapes

    return build_cityscapes(tmp_path_factory.mktemp("cityscapes_root"), nuclei_tiles(nuclei_datasets))
