"""Self-training (paper §3.3.2): one pseudo mask per ground-truth box, inside it; stage 2 trains on them."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from pycocotools import mask as mask_util

from point_sup.engine import PointSupTrainer, pseudo_masks
from point_sup.engine.experiment import load_config
from point_sup.engine.given_boxes import inference_with_given_boxes
from point_sup.engine.pseudo_masks import (
    _same_size_batches,
    padded_image_size,
    predict_pseudo_masks,
    pseudo_mask_coco_dict,
)
from point_sup_labels.file_io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(
    params=["configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml", "configs/nuclei/condinst_R_18_FPN_P10.yaml"],
    ids=["mask_rcnn", "condinst"],
)
def p10_model_cfg(request, nuclei_datasets, tiny_overrides, tmp_path):
    cfg = load_config(str(ROOT / request.param), tiny_overrides)
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def test_pseudo_masks_one_per_box_inside_it(p10_model_cfg, nuclei_datasets, tmp_path):
    cfg = p10_model_cfg
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    records = copy.deepcopy(DatasetCatalog.get("nuclei_train_p10"))
    # Boxes the simulator keeps although they are empty once clipped: zero width, outside the image.
    first = records[0]
    for bbox in ([10.0, 12.0, 0.0, 6.0], [first["width"] + 3.0, 5.0, 4.0, 4.0]):
        first["annotations"].append(
            {**first["annotations"][0], "bbox": bbox, "id": -len(first["annotations"])}
        )
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    out = predict_pseudo_masks(model, records, cfg.INPUT.FORMAT, resize)
    assert len(out) == len(records)
    empty = [mask_util.decode(a["segmentation"]).any() for a in out[0]["annotations"][-2:]]
    assert empty == [False, False], "an empty box gets an empty mask; the other boxes keep theirs"
    for rec, new in zip(records, out, strict=True):
        gt = [a for a in rec["annotations"] if a.get("iscrowd", 0) == 0]
        assert len(new["annotations"]) == len(gt) > 0
        for a_gt, a in zip(gt, new["annotations"], strict=True):
            assert a["bbox"] == a_gt["bbox"] and a["category_id"] == a_gt["category_id"]
            assert "point_coords" not in a
            m = mask_util.decode(a["segmentation"]).astype(bool)
            assert m.shape == (rec["height"], rec["width"])
            x, y, w, h = a["bbox"]
            outside = m.copy()
            # pasted masks may touch the pixel straddling the box edge: allow one pixel
            outside[
                max(int(y) - 1, 0) : int(np.ceil(y + h)) + 1, max(int(x) - 1, 0) : int(np.ceil(x + w)) + 1
            ] = False
            assert not outside.any()

    # The COCO file of the pseudo masks trains the second-stage (mask-supervised) config, registered
    # with the image root of the dataset it was made from (file names are relative to it).
    coco = pseudo_mask_coco_dict("nuclei_train_p10", out)
    assert len(coco["annotations"]) == sum(len(r["annotations"]) for r in out)
    assert [c["name"] for c in coco["categories"]] == ["nucleus"]
    image_root = MetadataCatalog.get("nuclei_train_p10").image_root
    assert [img["file_name"] for img in coco["images"]] == [
        str(Path(r["file_name"]).relative_to(image_root)) for r in records
    ]
    json_path = tmp_path / "pseudo.json"
    atomic_write_bytes(json_path, json.dumps(coco).encode())
    name = "test_nuclei_pseudo_masks"
    register_coco_instances(name, {}, str(json_path), image_root)
    try:
        stage2 = load_config(
            str(ROOT / "configs/COCO/mask_rcnn_R_50_FPN_3x_self_training.yaml"),
            [
                *cfg_overrides(cfg),
                "DATASETS.TRAIN",
                (name,),
                "DATASETS.TEST",
                (),
                "OUTPUT_DIR",
                str(tmp_path / "s2"),
            ],
        )
        stage2.freeze()
        trainer = PointSupTrainer(stage2)
        trainer.train()
        assert trainer.iter == stage2.SOLVER.MAX_ITER  # detectron2 leaves iter one past the last
        assert stage2.MODEL.ROI_MASK_HEAD.NAME == "MaskRCNNConvUpsampleHead"  # plain mask supervision
        assert "loss_mask" in trainer.storage.histories()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "config",
    [
        "mask_rcnn_R_18_FPN_P10",
        "point_rend_R_18_FPN_P10",
        "implicit_point_rend_R_18_FPN_P10",
        "condinst_R_18_FPN_P10",
    ],
)
def test_batches_of_one_padded_size_give_the_masks_of_batch_one(
    config, nuclei_datasets, tiny_overrides, monkeypatch
):
    """Every head family: batches of 3 over images of two sizes give the RLEs of one image per call.

    Padding is not neutral for these models (GroupNorm statistics, convolutions at the image's
    edges, CondInst's locations and mask map cover the padded size), so a batch holds images of one
    padded size only; each call is checked to be so, and some call to hold several images."""
    # 196 of the 784 cells of the second subdivision step: top-k point selection is exercised too,
    # at a quarter of the point heads' CPU time.
    cfg = load_config(
        str(ROOT / "configs/nuclei" / f"{config}.yaml"),
        [*tiny_overrides, "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", 196],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    train, val = DatasetCatalog.get("nuclei_train_p10"), DatasetCatalog.get("nuclei_val_p10")
    records = [train[0], val[0], train[1], val[1], train[2]]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert padded_image_size(model, (128, 171)) == (128, 192)  # the tiles of train, resized
    assert padded_image_size(model, (96, 192)) == (96, 192)  # and of val
    calls = []

    def recorded(model, batched_inputs, detected_instances, **kwargs):
        calls.append([padded_image_size(model, tuple(x["image"].shape[-2:])) for x in batched_inputs])
        return inference_with_given_boxes(model, batched_inputs, detected_instances, **kwargs)

    monkeypatch.setattr(pseudo_masks, "inference_with_given_boxes", recorded)
    one = predict_pseudo_masks(model, records, cfg.INPUT.FORMAT, resize, batch_size=1)
    calls.clear()
    three = predict_pseudo_masks(model, records, cfg.INPUT.FORMAT, resize, batch_size=3)
    assert sorted(len(c) for c in calls) == [2, 3]  # the 3 train tiles, then the 2 val tiles
    assert all(len(set(c)) == 1 for c in calls)
    segms = [[a["segmentation"] for a in r["annotations"]] for r in one]
    assert segms == [[a["segmentation"] for a in r["annotations"]] for r in three]
    assert [r["file_name"] for r in three] == [r["file_name"] for r in records]
    assert sum(int(mask_util.decode(m).sum()) for ms in segms for m in ms) > 0  # not all empty


def test_same_size_batches_group_by_key_and_hold_little():
    """Full groups leave at once, the rest at the end, in order of their first item; while more
    than 4 x batch_size items wait (many sizes), the oldest group leaves as it is."""

    def batches(keys, batch_size):
        items = [{"index": i, "key": k} for i, k in enumerate(keys)]
        return [
            [x["index"] for x in b] for b in _same_size_batches(iter(items), batch_size, lambda x: x["key"])
        ]

    assert batches("ABABA", 2) == [[0, 2], [1, 3], [4]]
    assert batches("ABCCBA", 3) == [[0, 5], [1, 4], [2, 3]]
    assert batches("ABCDEFGHIJ", 2) == [[i] for i in range(10)]  # at most 8 wait
    assert batches("ABCDEFGHIAA", 2) == [[0], [1], [9, 10], *[[i] for i in range(2, 9)]]


def cfg_overrides(cfg):
    """The tiny model and input settings of ``cfg`` as overrides for another config file. Not the mask
    format: the self-training config must read RLE pseudo masks by itself."""
    keys = [
        "MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.DEPTH",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
        "MODEL.RESNETS.NORM", "MODEL.FPN.OUT_CHANNELS", "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_MASK_HEAD.CONV_DIM",
        "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "SOLVER.IMS_PER_BATCH",
        "SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "DATALOADER.NUM_WORKERS",
    ]  # fmt: skip
    out = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out += [key, node]
    return out
