"""The report: timing statistics against the paper, and agreement with ground-truth masks."""

import json

import pytest

from point_sup_labels.annotation import build_report
from point_sup_labels.coco_format import CocoFormatError


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _dataset(anns, **extra):
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": anns,
        **extra,
    }


def test_timing_numbers_on_a_hand_made_file(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "point_coords": [[0, 0], [1, 1]],
         "point_labels": [1, 0], "point_seconds": [0.5, 1.5]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "point_coords": [[2, 2], [3, 3]],
         "point_labels": [1, 1], "point_seconds": [0.75, 4.25]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "point_coords": [[0, 3], [3, 0]],
         "point_labels": [0, 0], "point_seconds": [1.0, 1.0]},
    ]  # fmt: skip
    path = _write(
        tmp_path / "p.json", _dataset(anns, point_sup_flagged=[{"id": 4, "point_sup_flag": "bad_box"}])
    )
    rep = build_report(path)
    assert (rep.num_objects, rep.num_points, rep.num_points_per_object, rep.num_flagged) == (3, 6, 2, 1)
    assert rep.seconds_per_point_median == pytest.approx(1.0)  # of 0.5 0.75 1 1 1.5 4.25
    assert rep.seconds_per_point_mean == pytest.approx(9.0 / 6)
    assert rep.seconds_per_object_median == pytest.approx(2.0)  # of 2, 5, 2
    assert rep.seconds_per_object_mean == pytest.approx(3.0)
    text = rep.summary()
    assert "median 1.00, mean 1.50   (paper: 0.9)" in text
    assert "median 2.0, mean 3.0   (paper: 1.8 = 2 x 0.9)" in text
    assert "9.0 s per object (median)   (paper: 8.8)" in text and "8.8x faster" in text
    assert rep.agreement is None and "agreement" not in text


def test_agreement_with_rle_and_polygon_masks(tmp_path):
    # Object 1: RLE mask of the left half (columns 0-1); object 2: polygon of the top-left 2x2
    # pixels; object 3: no mask in the ground truth; object 4: a different box there.
    left_half = {"size": [4, 4], "counts": [0, 8, 8]}
    square = [[0, 0, 2, 0, 2, 2, 0, 2]]
    gt = _dataset([
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 4], "segmentation": left_half},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": square},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "segmentation": left_half},
    ])  # fmt: skip
    human = _dataset([
        # mask values at the points: 1, 1, 0, 0; answers 1, 0, 0, 1 -> 2 of 4 agree
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 4],
         "point_coords": [[0, 0], [1, 3], [2, 0], [3, 3]], "point_labels": [1, 0, 0, 1],
         "point_seconds": [1] * 4},
        # mask values: 1, 0 (pixel (2, 2) is outside the 2x2 square); answers 1, 0 -> both agree
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2],
         "point_coords": [[1, 1], [2, 2]], "point_labels": [1, 0], "point_seconds": [1, 1]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2],
         "point_coords": [[0, 0]], "point_labels": [1], "point_seconds": [1]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 4],
         "point_coords": [[0, 0]], "point_labels": [1], "point_seconds": [1]},
    ])  # fmt: skip
    rep = build_report(_write(tmp_path / "p.json", human), _write(tmp_path / "gt.json", gt))
    a = rep.agreement
    assert (a.num_objects, a.num_points, a.agreeing, a.skipped_objects) == (2, 6, 4, 2)
    assert (a.human1_mask1, a.human1_mask0, a.human0_mask1, a.human0_mask0) == (2, 1, 1, 2)
    assert a.rate == pytest.approx(4 / 6)
    text = rep.summary()
    assert "66.7% of 6 points on 2 objects   (paper: 90% vs COCO polygons, 95% vs LVIS masks)" in text
    assert rep.as_dict()["agreement"]["rate"] == pytest.approx(4 / 6)


def test_report_rejects_non_coco_files(tmp_path):
    with pytest.raises(CocoFormatError, match="'annotations' list"):
        build_report(_write(tmp_path / "x.json", [1, 2]))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        build_report(tmp_path / "broken.json")
