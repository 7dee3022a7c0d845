"""Detectron2 PointSup's own YAML files build and train here, under their head names.

The three files of ``projects/PointSup/configs/`` (facebookresearch/detectron2; stored verbatim in
``data/detectron2_point_sup/projects/``, with the two PointRend files the Implicit PointRend one
names as its ``_BASE_``: ``projects/PointRend/configs/InstanceSegmentation/``) are laid out in a
temporary Detectron2-like tree whose ``configs/Base-RCNN-FPN.yaml`` is the model zoo's copy shipped
in the detectron2 package, so every ``_BASE_`` path resolves as written and no file is edited.
Each is built through ``tools/train_net.py`` (``setup``, ``Trainer``) and trained one iteration on
CPU. Only these change: the dataset names (the nuclei P10 tiles, registered with ``--register``
under COCO's 80 categories so that the files' 80 classes stay as they are; no test set), the shared
scale knobs of tests/recipes/scale.py, and ``MODEL.WEIGHTS`` "" (the ImageNet checkpoints cannot be
downloaded here).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from detectron2 import model_zoo
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.utils.events import EventStorage
from recipes.scale import RECIPE_SCALE_OPTS

from point_sup.modeling.implicit_point_rend import PointSupImplicitPointRendMaskHead
from point_sup.modeling.mask_rcnn.mask_head import PointSupMaskRCNNConvUpsampleHead

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data" / "detectron2_point_sup"
UPSTREAM = Path("/work/d2src")  # a Detectron2 source checkout, where there is one
POINT_SUP_CONFIGS = "projects/PointSup/configs"
STORED = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.yaml"))
CONFIGS = {
    "mask_rcnn_R_50_FPN_3x_point_sup_coco.yaml": ("MaskRCNNConvUpsamplePointSupHead", 0),
    "mask_rcnn_R_50_FPN_3x_point_sup_point_aug_coco.yaml": ("MaskRCNNConvUpsamplePointSupHead", 5),
    "implicit_pointrend_R_50_FPN_3x_point_sup_point_aug_coco.yaml": ("ImplicitPointRendPointSupHead", 5),
}
DATASET = "d2_point_sup_nuclei_p10_coco80"


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def detectron2_tree(tmp_path_factory) -> Path:
    """The stored files in a temporary tree with Detectron2's layout."""
    root = tmp_path_factory.mktemp("detectron2")
    (root / "configs").mkdir()
    shutil.copy(model_zoo.get_config_file("Base-RCNN-FPN.yaml"), root / "configs" / "Base-RCNN-FPN.yaml")
    for relative in STORED:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / relative, root / relative)
    return root


@pytest.fixture(scope="module")
def coco80_points_json(nuclei_datasets, tmp_path_factory) -> Path:
    """The nuclei P10 training file with COCO's 80 thing categories (the nuclei are "person")."""
    data = json.loads(Path(nuclei_datasets["train_p10"]).read_text())
    (nucleus,) = data["categories"]
    data["categories"] = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_CATEGORIES if c["isthing"]
    ]
    for anno in data["annotations"]:
        assert anno["category_id"] == nucleus["id"]
        anno["category_id"] = 1
    path = tmp_path_factory.mktemp("coco80") / "nuclei_train_p10_coco80.json"
    path.write_text(json.dumps(data))
    return path


def test_stored_files_are_detectron2s_verbatim():
    assert {Path(p).name for p in STORED} >= set(CONFIGS)
    if not (UPSTREAM / POINT_SUP_CONFIGS).is_dir():
        pytest.skip("no Detectron2 source tree to compare the stored copies with")
    for relative in STORED:
        assert (DATA / relative).read_bytes() == (UPSTREAM / relative).read_bytes(), relative


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if "implicit" in n else n  # 300 M parameters: ~20 s
        for n in CONFIGS
    ],
)
def test_detectron2_point_sup_config_trains_one_iteration(
    name, detectron2_tree, coco80_points_json, nuclei_datasets, tmp_path
):
    head_name, sample_points = CONFIGS[name]
    train_net = _load_train_net()
    config_file = detectron2_tree / POINT_SUP_CONFIGS / name
    opts = [
        "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", "()",  # the dataset names
        *RECIPE_SCALE_OPTS,
        "MODEL.WEIGHTS", "",  # no download of the ImageNet backbone
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    args = train_net.argument_parser().parse_args(
        ["--register", DATASET, str(coco80_points_json), str(nuclei_datasets["image_root"]),
         "--config-file", str(config_file), *opts]
    )  # fmt: skip
    try:
        train_net.register_datasets(args)
        cfg = train_net.setup(args)
        # The file's own values, read unchanged.
        assert head_name == cfg.MODEL.ROI_MASK_HEAD.NAME
        assert cfg.INPUT.POINT_SUP and sample_points == cfg.INPUT.SAMPLE_POINTS
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
        trainer = train_net.Trainer(cfg)
        mask_head = trainer.model.roi_heads.mask_head
        assert type(mask_head).__name__ == head_name
        expected = (
            PointSupImplicitPointRendMaskHead if "implicit" in name else PointSupMaskRCNNConvUpsampleHead
        )
        assert isinstance(mask_head, expected)
        with EventStorage(0) as storage:
            trainer.storage = storage
            trainer.iter = trainer.start_iter = 0
            trainer.run_step()
    finally:
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)
    losses = {k: v[0] for k, v in storage.latest().items() if k.startswith("loss")}
    assert ("loss_mask_point" if "implicit" in name else "loss_mask") in losses, losses
    assert all(math.isfinite(v) for v in losses.values()), losses
