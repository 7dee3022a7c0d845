"""LVIS AP through Detectron2's LVISEvaluator with the lvis package from PyPI (0.5.3, np.float)."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import get_lvis_instances_meta, register_lvis_instances
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util
from replicas import nuclei_tiles
from replicas.coco import build_coco, build_lvis

from point_sup.evaluation import build_evaluator
from point_sup.evaluation.lvis import LVISEvaluator
from point_sup.evaluation.numpy_compat import numpy_with_old_names

pytest.importorskip("lvis")


@pytest.fixture(scope="module")
def lvis_val(nuclei_datasets, tmp_path_factory):
    """The LVIS v1 replica's validation split, registered under a test name."""
    root = tmp_path_factory.mktemp("lvis_root")
    tiles = nuclei_tiles(nuclei_datasets)
    build_coco(root, tiles)
    build_lvis(root)
    name = "test_lvis_v1_val_replica"
    register_lvis_instances(
        name, get_lvis_instances_meta("lvis_v1"), str(root / "lvis/lvis_v1_val.json"), str(root / "coco/")
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _predictions(dataset_name: str, degrade: bool = False) -> tuple[list[dict], list[dict]]:
    """Model inputs and outputs that predict each ground-truth object (boxes and masks), score 1."""
    inputs, outputs = [], []
    for record in DatasetCatalog.get(dataset_name):
        h, w = record["height"], record["width"]
        anns = record["annotations"]
        masks = np.stack(
            [mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))) for a in anns]
        ).astype(bool)
        if degrade:  # every mask shifted by a third of its box: most objects missed at IoU 0.5
            masks = np.stack(
                [np.roll(m, max(1, int(a["bbox"][2] / 3)), axis=1) for m, a in zip(masks, anns, strict=True)]
            )
        instances = Instances((h, w))
        instances.pred_boxes = Boxes(
            torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)])
        )
        instances.scores = torch.ones(len(anns))
        instances.pred_classes = torch.tensor([a["category_id"] for a in anns])
        instances.pred_masks = torch.from_numpy(masks)
        inputs.append({"image_id": record["image_id"], "file_name": record["file_name"]})
        outputs.append({"instances": instances})
    return inputs, outputs


def _evaluate(evaluator, inputs, outputs) -> dict:
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_ground_truth_scores_100_and_a_worse_prediction_less(lvis_val, tmp_path):
    perfect = _evaluate(LVISEvaluator(lvis_val, output_dir=str(tmp_path)), *_predictions(lvis_val))
    assert perfect["segm"]["AP"] == pytest.approx(100.0) and perfect["bbox"]["AP"] == pytest.approx(100.0)
    assert {"APr", "APc", "APf"} <= set(perfect["segm"])
    worse = _evaluate(
        LVISEvaluator(lvis_val, output_dir=str(tmp_path)), *_predictions(lvis_val, degrade=True)
    )
    assert worse["segm"]["AP"] < 50.0 and worse["bbox"]["AP"] == pytest.approx(100.0)


def test_build_evaluator_chooses_it(lvis_val, tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert type(build_evaluator(cfg, lvis_val)) is LVISEvaluator


def test_old_numpy_names_only_inside_the_block_and_only_where_missing():
    import lvis.eval

    before = lvis.eval.np
    with numpy_with_old_names(lvis.eval, "float"):
        assert lvis.eval.np.float is float
        assert lvis.eval.np.cumsum is np.cumsum  # the rest is numpy's
        assert not hasattr(np, "float") or np.float is float  # numpy itself is not touched
    assert lvis.eval.np is before


def test_detectron2s_own_evaluator_fails_on_this_numpy(lvis_val, tmp_path):
    """Why point_sup wraps Detectron2's LVISEvaluator: with lvis 0.5.3 and numpy >= 1.24 it fails."""
    if hasattr(np, "float"):
        pytest.skip("this numpy still has np.float")
    from detectron2.evaluation import LVISEvaluator as D2Evaluator

    with pytest.raises(AttributeError, match="float"):
        _evaluate(D2Evaluator(lvis_val, output_dir=str(tmp_path)), *_predictions(lvis_val))
