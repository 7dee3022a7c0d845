"""Every YAML under configs/ loads, builds and trains one iteration, so none can rot.

The configs of docs/reproducing.md's recipes are trained at their full architecture on dataset replicas by
tests/recipes/test_readme_recipes.py; the others (the 1x schedules, the nuclei miniature) here, shrunk
to a tiny model on the nuclei data (TINY_OVERRIDES).
"""

import math
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from recipes.readme_recipes import configs_of_recipes, recipe_groups

from point_sup import add_point_sup_config
from point_sup.config import CONDINST_META_ARCHITECTURE, is_condinst
from point_sup.engine import PointSupTrainer

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("Base-"))
IN_RECIPES = {ROOT / c for c in configs_of_recipes(recipe_groups())}
NOT_IN_RECIPES = [p for p in CONFIGS if p not in IN_RECIPES]


def load(path: Path):
    cfg = get_cfg()
    add_point_sup_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_configs_found():
    assert len(CONFIGS) >= 30
    names = {p.stem for p in CONFIGS}
    for expected in (
        "mask_rcnn_R_50_FPN_3x_M",
        "mask_rcnn_R_50_FPN_3x_P10",
        "point_rend_R_50_FPN_3x_P10_point_aug",
        "implicit_point_rend_R_50_FPN_3x_P10_point_aug",
        "mask_rcnn_R_50_FPN_3x_self_training",
    ):
        assert expected in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_point_supervised_configs_name_point_sup_heads(path):
    cfg = load(path)
    if cfg.INPUT.POINT_SUP:  # P10 files say so, and train on points; the rest on masks (or boxes)
        assert "P10" in path.stem or "point" in str(cfg.DATASETS.TRAIN), path
        if is_condinst(cfg):
            assert path.stem.startswith("condinst_"), path
        else:
            assert cfg.MODEL.ROI_MASK_HEAD.NAME.startswith("PointSup"), f"{path}: needs a point_sup head"
    if cfg.MODEL.MIXED_SUP.ENABLED and cfg.MODEL.BOX_PRIOR.ENABLED and path.stem.endswith("_B_box_prior"):
        # The ROI heads' box-only row: every object box only, masks from the box prior alone.
        assert all(name.endswith("_boxes") for name in cfg.DATASETS.TRAIN), path
    elif cfg.MODEL.MIXED_SUP.ENABLED:  # mixed files say so, and train on a mixed set
        assert path.stem.endswith("_mixed") and not cfg.INPUT.POINT_SUP, path
        assert all(name.endswith(("_m10", "_b50")) for name in cfg.DATASETS.TRAIN), path
        if not is_condinst(cfg):
            assert cfg.MODEL.ROI_MASK_HEAD.NAME.startswith("PointSup"), f"{path}: needs a point_sup head"
    elif is_condinst(cfg) and cfg.MODEL.BOXINST.ENABLED:  # BoxInst files say so, and train on boxes
        assert path.stem.startswith("boxinst_") and path.stem.endswith("_B"), path
        assert all(name.endswith("_boxes") for name in cfg.DATASETS.TRAIN), path


def test_recipes_and_this_test_cover_every_config():
    assert set(CONFIGS) >= IN_RECIPES and len(IN_RECIPES) >= 25
    assert {p.parent.name for p in NOT_IN_RECIPES} <= {"COCO", "nuclei"}


@pytest.mark.parametrize("path", NOT_IN_RECIPES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_trains_one_iteration(path, nuclei_datasets, tiny_overrides, tmp_path):
    cfg = load(path)
    paper_head = cfg.MODEL.ROI_MASK_HEAD.NAME
    condinst = is_condinst(cfg)
    box_only = condinst and cfg.MODEL.BOXINST.ENABLED
    mixed = cfg.MODEL.MIXED_SUP.ENABLED
    box_only = box_only and not mixed
    if mixed:  # the nuclei mixed config (the COCO ones are in the recipes) trains on its own set
        train = cfg.DATASETS.TRAIN[0]
    else:
        train = (
            "nuclei_train_p10"
            if cfg.INPUT.POINT_SUP
            else "nuclei_train_boxes"
            if box_only
            else "nuclei_train"
        )
    cfg.merge_from_list(tiny_overrides)
    cfg.merge_from_list(
        ["DATASETS.TRAIN", (train,), "DATASETS.TEST", ("nuclei_val",), "OUTPUT_DIR", str(tmp_path)]
    )
    cfg.freeze()
    trainer = PointSupTrainer(cfg)
    if condinst:
        assert type(trainer.model).__name__ == CONDINST_META_ARCHITECTURE
        expected_loss = "loss_prj" if box_only else "loss_mask"
    else:
        assert type(trainer.model.roi_heads.mask_head).__name__ == paper_head
        expected_loss = "loss_mask"
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = trainer.start_iter = 0
        trainer.run_step()
    losses = {k: v for k, v in storage.latest().items() if k.startswith("loss")}
    assert any(k.startswith(expected_loss) for k in losses), losses
    assert all(math.isfinite(v[0]) for v in losses.values()), losses
