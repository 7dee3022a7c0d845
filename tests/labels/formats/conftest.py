"""A small P_N COCO file for the format tests: several images and categories, objects with
different N (0 included), points on pixel 0 and on the last pixel of a row or column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _ann(aid: int, image_id: int, cid: int, bbox: list[float], coords: list, labels: list[int]) -> dict:
    w, h = bbox[2], bbox[3]
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": cid,
        "bbox": bbox,
        "area": w * h,  # what the converter writes: the box's area
        "iscrowd": 0,
        "point_coords": coords,
        "point_labels": labels,
    }


def pn_data() -> dict:
    """The P_N file's content, in the converter's own canonical form (ids 1, 2, ... in order,
    ``area = w * h``), so that a round trip can be compared to it exactly."""
    ten = [[1234 + k, 789 + 3 * k] for k in range(10)]
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 10, "height": 8},
            {"id": 2, "file_name": "b.jpg", "width": 4, "height": 4},  # no objects
            {"id": 3, "file_name": "c.jpg", "width": 3000, "height": 2000},
            {"id": 4, "file_name": "sub/d.png", "width": 7, "height": 5},
        ],
        "annotations": [
            # points on pixel 0 and on the last pixel (width - 1, height - 1)
            _ann(1, 1, 1, [0.1, 0.2, 9.9, 7.8], [[0, 0], [9, 7], [3, 4]], [1, 0, 1]),
            _ann(2, 1, 2, [2.0, 3.0, 1.5, 2.0], [[2, 3]], [0]),
            _ann(3, 3, 3, [1234.56, 789.01, 100.25, 333.3], ten, [1, 1, 0, 1, 0, 0, 1, 1, 1, 0]),
            _ann(4, 3, 1, [0.0, 0.0, 3000.0, 2000.0], [], []),  # a box without points
            _ann(5, 4, 2, [0.0, 0.0, 7.0, 5.0], [[6, 4], [0, 4], [6, 0], [1, 1], [2, 2]], [1, 1, 0, 0, 1]),
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
    }


@pytest.fixture
def pn_file(tmp_path: Path) -> Path:
    path = tmp_path / "points.json"
    path.write_text(json.dumps(pn_data()))
    return path
