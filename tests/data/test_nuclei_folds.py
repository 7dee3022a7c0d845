"""The nuclei k-fold protocol: checked pixel by pixel against the label image, computed here
independently of point_sup.data.nuclei (no nucleus or pixel row in both the training and the
validation tiles of a fold, every nucleus scored in exactly one fold, the bands cover the image)."""

import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from point_sup.data.builtin import register_nuclei_folds
from point_sup.data.nuclei import (
    MIN_INSTANCE_AREA,
    build_nuclei_folds_coco,
    check_num_folds,
    load_nuclei,
    nuclei_folds,
    unscored_nuclei,
)

SIZE = 512


@pytest.fixture(scope="module")
def nuclei():
    image, labels = load_nuclei()
    ids = [int(i) for i in np.unique(labels) if i > 0]
    rows = {i: set(np.nonzero((labels == i).any(axis=1))[0].tolist()) for i in ids}
    return image, labels, ids, rows


def _band(k, num_folds):
    return k * SIZE // num_folds, (k + 1) * SIZE // num_folds


def _rows(regions):
    return {r for r0, r1, _, _ in regions for r in range(r0, r1)}


@pytest.mark.parametrize("num_folds", [2, 4, 8, 16])
def test_layout_against_the_label_image(nuclei, num_folds):
    _, labels, ids, rows = nuclei
    folds = nuclei_folds(labels, num_folds)
    assert [f.index for f in folds] == list(range(num_folds))
    cover = np.zeros((SIZE, SIZE), dtype=int)
    val_tiles = []
    for k, fold in enumerate(folds):
        b0, b1 = _band(k, num_folds)
        assert fold.band == (b0, b1)
        assert sorted(fold.val_regions) == [(b0, b1, 0, 256), (b0, b1, 256, 512)]
        for r0, r1, c0, c1 in fold.val_regions:
            cover[r0:r1, c0:c1] += 1
            val_tiles.append((k, (r0, r1, c0, c1)))
        crossing = {i for i in ids if rows[i] & set(range(b0, b1))}
        excluded = set(range(b0, b1)).union(*(rows[i] for i in crossing))
        train_rows = _rows(fold.train_regions)
        assert not train_rows & excluded
        # The gap is the smallest row range holding the band and the crossing nuclei's rows; training
        # keeps every other row but those of a range too short for a tile.
        assert fold.gap == (min(excluded), max(excluded) + 1)
        outside = [r for r in range(SIZE) if not fold.gap[0] <= r < fold.gap[1]]
        assert train_rows <= set(outside)
        assert len(outside) - len(train_rows) < 2 * 32
        tile_cover = np.zeros((SIZE, SIZE), dtype=int)
        for r0, r1, c0, c1 in fold.train_regions:
            assert r1 - r0 <= 192 and c1 - c0 == 256
            tile_cover[r0:r1, c0:c1] += 1
        assert tile_cover.max() == 1 and (tile_cover.sum(axis=1) % SIZE == 0).all()
    assert (cover == 1).all()  # the validation bands cover the image once
    # Each nucleus is scored once, in the validation tile holding most of its pixels.
    scored_in = {i: [] for i in ids}
    for t, (k, _) in enumerate(val_tiles):
        for i in folds[k].val_scored[t % 2]:
            scored_in[i].append(t)
    for i in ids:
        counts = [int((labels[r0:r1, c0:c1] == i).sum()) for _, (r0, r1, c0, c1) in val_tiles]
        assert scored_in[i] == [int(np.argmax(counts))]
        assert counts[scored_in[i][0]] >= MIN_INSTANCE_AREA
    assert unscored_nuclei(labels, folds) == []


def _annotations(coco_json, image_root, image, labels):
    """{(nucleus id, iscrowd)} per image region of a written fold dataset, checked pixel-exactly."""
    data = json.loads(coco_json.read_text())
    by_image = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    result = []
    for img in data["images"]:
        r0, r1, c0, c1 = img["region"]
        assert (img["height"], img["width"]) == (r1 - r0, c1 - c0)
        np.testing.assert_array_equal(
            np.asarray(Image.open(image_root / img["file_name"])), image[r0:r1, c0:c1]
        )
        tile = labels[r0:r1, c0:c1]
        found = []
        for ann in by_image[img["id"]]:
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            nucleus = np.unique(tile[mask])
            assert len(nucleus) == 1 and nucleus[0] > 0
            assert np.array_equal(mask, tile == nucleus[0])
            assert ann["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
            found.append((int(nucleus[0]), ann["iscrowd"]))
        result.append(((r0, r1, c0, c1), found))
    return result


def test_written_folds_are_disjoint_and_exact(tmp_path, nuclei):
    image, labels, ids, rows = nuclei
    paths = build_nuclei_folds_coco(tmp_path, 4)
    assert sorted(paths) == [0, 1, 2, 3]
    scored = {i: [] for i in ids}
    val_rows_all = []
    for k, fold in paths.items():
        assert fold["train"].name == f"nuclei_fold{k}of4_train.json"
        assert fold["val"].name == f"nuclei_fold{k}of4_val.json"
        train = _annotations(fold["train"], fold["image_root"], image, labels)
        val = _annotations(fold["val"], fold["image_root"], image, labels)
        train_ids = {i for _, found in train for i, crowd in found if not crowd}
        assert all(not crowd for _, found in train for _, crowd in found)
        val_ids = {i for _, found in val for i, _ in found}
        assert train_ids and val_ids and not train_ids & val_ids
        train_rows = _rows(region for region, _ in train)
        val_rows = _rows(region for region, _ in val)
        assert val_rows == set(range(*_band(k, 4)))
        assert not train_rows & val_rows
        assert not train_rows & set().union(*(rows[i] for i in val_ids))  # no row of a val nucleus
        val_rows_all.append(val_rows)
        for region, found in val:
            # Every nucleus pixel of a validation tile is annotated: scored, or crowd (ignored).
            r0, r1, c0, c1 = region
            assert {i for i, _ in found} == set(np.unique(labels[r0:r1, c0:c1]).tolist()) - {0}
            for i, crowd in found:
                if not crowd:
                    scored[i].append(k)
        for region, found in train:
            # Training tiles keep every nucleus part but the slivers.
            r0, r1, c0, c1 = region
            tile = labels[r0:r1, c0:c1]
            kept = {i for i in np.unique(tile).tolist() if i and (tile == i).sum() >= MIN_INSTANCE_AREA}
            assert {i for i, _ in found} == kept
    assert set().union(*val_rows_all) == set(range(SIZE))
    assert all(len(folds) == 1 for folds in scored.values()), {i: f for i, f in scored.items() if len(f) != 1}
    info = json.loads(paths[1]["val"].read_text())["info"]["fold"]
    assert info["index"] == 1 and info["num_folds"] == 4 and info["band"] == [128, 256]


@pytest.mark.parametrize("num_folds", [0, 1, 3, 5, 6, 32, 64, 2.0, True])
def test_bad_numbers_of_folds_are_named(num_folds):
    with pytest.raises(ValueError, match="number of folds"):
        check_num_folds(num_folds)


def test_bad_fold_index_is_named_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"fold index 4 is out of range for 4 folds"):
        build_nuclei_folds_coco(tmp_path / "out", 4, folds=[1, 4])
    with pytest.raises(ValueError, match=r"fold index -1"):
        register_nuclei_folds(tmp_path / "out", 4, folds=[-1])
    with pytest.raises(ValueError, match=r"number of folds 3"):
        register_nuclei_folds(tmp_path / "out", 3)
    assert not (tmp_path / "out").exists()


def test_register_nuclei_folds(tmp_path):
    stem = "nuclei_fold2of4"
    names = [f"{stem}_{s}" for s in ("train", "val", "train_p10", "train_p10_m10", "train_p10_b50")]
    names += [f"{stem}_train_boxes", f"{stem}_val_boxes"]
    saved = {n: (DatasetCatalog.pop(n), MetadataCatalog.pop(n)) for n in names if n in DatasetCatalog}
    try:
        paths = register_nuclei_folds(tmp_path, 4, folds=[2], seed=1)
        assert sorted(paths) == [2]
        assert paths[2]["train_p10"].name == f"{stem}_train_p10.json"
        assert set(names) <= set(DatasetCatalog.list())
        train, points = DatasetCatalog.get(f"{stem}_train"), DatasetCatalog.get(f"{stem}_train_p10")
        assert [r["file_name"] for r in train] == [r["file_name"] for r in points]
        assert all("segmentation" in a for r in train for a in r["annotations"])
        annos = [a for r in points for a in r["annotations"]]
        assert annos and all("segmentation" not in a and len(a["point_coords"]) == 10 for a in annos)
        assert MetadataCatalog.get(f"{stem}_train_p10").point_supervision is True
        boxes = DatasetCatalog.get(f"{stem}_train_boxes")
        assert all("segmentation" not in a and "bbox" in a for r in boxes for a in r["annotations"])
        assert MetadataCatalog.get(f"{stem}_train_boxes").box_only_of == f"{stem}_train"
        val = DatasetCatalog.get(f"{stem}_val")
        assert {a["iscrowd"] for r in val for a in r["annotations"]} == {0, 1}
        assert MetadataCatalog.get(f"{stem}_val").evaluator_type == "coco"
    finally:
        for n in names:
            DatasetCatalog.pop(n, None)
            MetadataCatalog.pop(n, None)
        for n, (loader, meta) in saved.items():
            DatasetCatalog.register(n, loader)
            MetadataCatalog[n] = meta
