"""Export then import is the identity: a P_N COCO file written to each tool's format and read
back gives the same file; the pixel and box conversions on their own, over many values."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from point_sup_labels.coco_format import dumps_json, load_coco_instances
from point_sup_labels.formats import FORMATS, Options, read_annotations, write_annotations
from point_sup_labels.formats.coco import coco_dict, read_coco
from point_sup_labels.formats.label_studio import from_percent, to_percent
from point_sup_labels.formats.outputs import write_files
from point_sup_labels.formats.rules import (
    box_corners,
    box_from_corners,
    inverse_float,
    pixel_centre,
    pixel_index,
)

TOOLS = [f for f in FORMATS if f != "coco"]
OUTPUT_NAME = {"cvat": "points.xml", "label-studio": "tasks.json", "labelme": "labelme", "coco": "out.json"}


def _export(dataset, tmp_path: Path, fmt: str) -> Path:
    out = tmp_path / OUTPUT_NAME[fmt]
    write_files(write_annotations(dataset, out, fmt))
    return out


@pytest.mark.parametrize("fmt", TOOLS)
def test_export_then_import_gives_the_same_points(pn_file, tmp_path, fmt):
    dataset = read_coco(pn_file)
    back = read_annotations(_export(dataset, tmp_path, fmt), fmt)
    assert back == dataset  # images (names, sizes, order), categories, boxes, points, labels
    assert back.num_points == 19 and back.num_objects == 5


@pytest.mark.parametrize("fmt", TOOLS)
def test_the_round_trip_through_a_tool_reproduces_the_file_byte_for_byte(pn_file, tmp_path, fmt):
    original = dumps_json(json.loads(pn_file.read_text()))
    exported = _export(read_coco(pn_file), tmp_path, fmt)
    reference = load_coco_instances(pn_file, require_segmentation=False)
    back = read_annotations(exported, fmt)
    ((_, data),) = write_annotations(
        back, tmp_path / "back.json", "coco", Options(reference=reference)
    ).items()
    assert data == original
    # Without a reference: ids 1, 2, ... and the categories the tool file names, which here are the same.
    plain = coco_dict(back)
    assert plain["annotations"] == json.loads(original)["annotations"]
    if fmt == "cvat":  # CVAT's <meta> keeps every category, unused ones too, in order
        assert dumps_json(plain) == original


def test_points_on_the_first_and_last_pixel_are_written_at_the_pixel_centres(pn_file, tmp_path):
    exported = _export(read_coco(pn_file), tmp_path, "labelme")
    shapes = json.loads((exported / "a.json").read_text())["shapes"]
    points = [s["points"][0] for s in shapes if s["shape_type"] == "point"]
    assert points[:2] == [[0.5, 0.5], [9.5, 7.5]]  # pixels (0, 0) and (width - 1, height - 1)
    rectangles = [s["points"] for s in shapes if s["shape_type"] == "rectangle"]
    assert rectangles[0] == [[0.1, 0.2], [10.0, 8.0]]  # 0.1 + 9.9 == 10.0, the image's far edge


def test_pixel_rule_floor_with_the_far_edge_on_the_last_pixel():
    assert [pixel_index(c, 10) for c in (0.0, 0.5, 0.999, 1.0, 9.0, 9.999, 10.0)] == [0, 0, 0, 1, 9, 9, 9]
    assert [pixel_index(c, 10) for c in (-0.001, 10.001, math.nan, math.inf)] == [None] * 4
    assert all(pixel_index(pixel_centre(i), 7) == i for i in range(7))


def test_boxes_of_up_to_15_digits_convert_exactly_both_ways():
    rng = random.Random(0)
    for _ in range(5000):
        size = rng.randint(1, 8000)
        digits = rng.randint(0, 6)
        x = round(rng.uniform(0, size), digits)
        w = round(rng.uniform(0, size - x), digits)
        # xyxy (CVAT, labelme): w = xbr - x is off by an ulp in ~1 case in 10; inverse_float is exact.
        assert box_from_corners(*box_corners((x, x, w, w))) == (x, x, w, w)
        # percent (Label Studio)
        assert from_percent(to_percent(x, size), size) == x and from_percent(to_percent(w, size), size) == w


def test_arbitrary_floats_come_back_as_a_float_the_file_cannot_tell_apart():
    rng = random.Random(1)
    for _ in range(5000):
        size = rng.randint(1, 8000)
        x = rng.uniform(0, size)  # 17 significant digits: a percentage cannot hold them all
        p = to_percent(x, size)
        back = from_percent(p, size)
        assert to_percent(back, size) == p and abs(back - x) <= 4 * math.ulp(x)
        x2 = x + rng.uniform(0, size - x)
        back_w = box_from_corners(x, 0.0, x2, 1.0)[2]
        assert x + back_w == x2  # the same corner: exact in what CVAT and labelme store


def test_inverse_float_prefers_the_shortest_decimal_form():
    approx = (0.1 + 0.2) - 0.1  # 0.20000000000000004
    assert approx != 0.2
    assert inverse_float(approx, lambda c: 0.1 + c, 0.1 + 0.2) == 0.2
    assert inverse_float(5.0, lambda c: c + 1e300, 7.0) == 5.0  # nothing maps exactly: the estimate
