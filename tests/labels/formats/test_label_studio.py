"""Label Studio JSON export: percent values of original_width/height read to the expected pixels;
keypoints tied to rectangles by parentID or containment; bad files refused naming task and result."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from point_sup_labels.coco_format import CocoFormatError
from point_sup_labels.formats import FormatError, Options
from point_sup_labels.formats.label_studio import read_label_studio, write_label_studio


def _result(rid, kind, value, w=1920, h=1280, **extra):
    return {
        "id": rid,
        "type": kind,
        "from_name": "label" if kind == "rectanglelabels" else "point",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": value,
        "origin": "manual",
        **extra,
    }


def _export() -> list[dict]:
    """As Label Studio exports a project ("JSON" in the Export dialog, labelstud.io/guide/export)."""
    return [
        {
            "id": 7,
            "data": {"image": "/data/local-files/?d=images/photo%201.jpg"},
            "annotations": [
                {"id": 30, "result": [], "was_cancelled": True, "completed_by": 1},
                {
                    "id": 31,
                    "completed_by": 1,
                    "was_cancelled": False,
                    "ground_truth": False,
                    "created_at": "2024-03-01T10:00:00.000000Z",
                    "lead_time": 12.5,
                    "result": [
                        _result(
                            "Dx_aB91ISN",
                            "rectanglelabels",
                            {
                                "x": 10,
                                "y": 20,
                                "width": 30,
                                "height": 40,
                                "rotation": 0,
                                "rectanglelabels": ["cat"],
                            },
                        ),
                        _result(
                            "kp1",
                            "keypointlabels",
                            {"x": 12.5, "y": 25.1, "width": 0.6, "keypointlabels": ["object"]},
                            parentID="Dx_aB91ISN",
                        ),
                        _result(
                            "rect2",
                            "rectanglelabels",
                            {
                                "x": 40,
                                "y": 40,
                                "width": 20,
                                "height": 20,
                                "rotation": 0,
                                "rectanglelabels": ["dog"],
                            },
                        ),
                        # no parentID: inside rect2 only
                        _result(
                            "kp2",
                            "keypointlabels",
                            {"x": 50, "y": 50, "width": 0.6, "keypointlabels": ["background"]},
                        ),
                        # its parent is given though it also lies in rect2
                        _result(
                            "kp3",
                            "keypointlabels",
                            {"x": 40.0, "y": 59.99, "width": 0.6, "keypointlabels": ["object"]},
                            parentID="Dx_aB91ISN",
                        ),
                        {
                            "id": "Dx_aB91ISN",
                            "type": "choices",
                            "from_name": "quality",
                            "to_name": "image",
                            "value": {"choices": ["good"]},
                        },
                    ],
                },
            ],
            "predictions": [],
        },
        {
            "id": 8,
            "data": {"image": "/data/upload/3/0a1b2c3d-b.jpg"},
            "annotations": [
                {
                    "id": 32,
                    "was_cancelled": False,
                    "result": [
                        _result(
                            "r",
                            "rectanglelabels",
                            {"x": 0, "y": 0, "width": 100, "height": 100, "rectanglelabels": ["cat"]},
                            w=33,
                            h=7,
                        ),
                        _result(
                            "p",
                            "keypointlabels",
                            {"x": 100, "y": 100, "keypointlabels": ["object"]},
                            w=33,
                            h=7,
                        ),
                    ],
                }
            ],
        },
        {"id": 9, "data": {"image": "http://example.com/unlabelled.jpg"}, "annotations": []},
    ]


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(data))
    return path


def test_an_export_reads_to_the_pixels_that_hold_the_points(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = read_label_studio(_write(tmp_path, _export()))
    assert ds.categories == ("cat", "dog")
    a, b = ds.images  # task 9 has no annotation: skipped
    assert (a.file_name, a.width, a.height) == ("images/photo 1.jpg", 1920, 1280)  # the local-files path
    assert (b.file_name, b.width, b.height) == ("0a1b2c3d-b.jpg", 33, 7)  # an upload: its last component
    cat, dog = a.objects
    # x = 10 % of 1920 = 192, y = 20 % of 1280 = 256, w = 30 % = 576, h = 40 % = 512
    assert cat.category == "cat" and cat.box_xywh == (192.0, 256.0, 576.0, 512.0)
    # kp1: 12.5 % of 1920 = 240.0 -> 240; 25.1 % of 1280 = 321.28 -> 321
    # kp3: 40 % of 1920 = 768.0 -> 768; 59.99 % of 1280 = 767.872 -> 767
    assert cat.points == ((240, 321), (768, 767)) and cat.labels == (1, 1)
    # kp2 by containment: 50 % -> (960.0, 640.0)
    assert dog.box_xywh == (768.0, 512.0, 384.0, 256.0) and dog.points == ((960, 640),) and dog.labels == (0,)
    # 100 % is the far corner: the last pixel
    assert b.objects[0].box_xywh == (0.0, 0.0, 33.0, 7.0) and b.objects[0].points == ((32, 6),)
    assert "1 results of type 'choices' ignored" in caplog.text and "1 tasks skipped" in caplog.text


def test_the_url_prefix_is_written_and_removed(tmp_path):
    ds = read_label_studio(_write(tmp_path, _export()))
    options = Options(image_url_prefix="/data/local-files/?d=")
    ((path, data),) = write_label_studio(ds, tmp_path / "tasks.json", options).items()
    tasks = json.loads(data)
    assert tasks[0]["data"] == {
        "image": "/data/local-files/?d=images/photo 1.jpg",
        "width": 1920,
        "height": 1280,
    }
    path.write_bytes(data)
    assert read_label_studio(path, options) == ds


def test_written_tasks_tie_keypoints_by_parent_id_at_pixel_centres(tmp_path):
    ds = read_label_studio(_write(tmp_path, _export()))
    ((_, data),) = write_label_studio(ds, tmp_path / "tasks.json").items()
    result = json.loads(data)[1]["annotations"][0]["result"]
    rect, point = result
    assert rect["type"] == "rectanglelabels" and rect["value"]["rectanglelabels"] == ["cat"]
    assert rect["value"]["x"] == 0 and rect["value"]["width"] == 100.0 and rect["original_width"] == 33
    assert point["parentID"] == rect["id"] and point["value"]["keypointlabels"] == ["object"]
    centre = (100 * 32.5 / 33, 100 * 6.5 / 7)  # of pixel (32, 6), in percent
    assert (point["value"]["x"], point["value"]["y"]) == centre


def _edited(edit) -> list[dict]:
    data = copy.deepcopy(_export())
    edit(data)
    return data


def _result_of(data, task: int, rid: str) -> dict:
    (ann,) = [a for a in data[task]["annotations"] if not a.get("was_cancelled")]
    return next(r for r in ann["result"] if r["id"] == rid)


BAD = {
    "no rectangle holds the point": (
        lambda d: _result_of(d, 0, "kp2")["value"].update(x=99.0),
        "task id=7, result id='kp2': the keypoint has no parentID and lies in no rectangle",
    ),
    "two rectangles hold the point": (
        lambda d: _result_of(d, 0, "kp3").pop("parentID"),
        "task id=7, result id='kp3': the keypoint has no parentID and lies in 2 rectangles "
        "(ids 'Dx_aB91ISN', 'rect2')",
    ),
    "parent is no rectangle": (
        lambda d: _result_of(d, 0, "kp1").update(parentID="gone"),
        "task id=7, result id='kp1': parentID 'gone' is no rectangle of this annotation",
    ),
    "bad point label": (
        lambda d: _result_of(d, 0, "kp1")["value"].update(keypointlabels=["nose"]),
        "task id=7, result id='kp1': point label 'nose' is neither 'object' (object) nor 'background'",
    ),
    "over 100 percent": (
        lambda d: _result_of(d, 0, "kp1")["value"].update(x=100.5),
        "task id=7, result id='kp1': value.x = 100.5 lies outside 0-100 % of the image",
    ),
    "negative percent": (
        lambda d: _result_of(d, 0, "rect2")["value"].update(y=-1),
        "task id=7, result id='rect2': value.y = -1 lies outside 0-100 %",
    ),
    "rectangle past the edge": (
        lambda d: _result_of(d, 0, "rect2")["value"].update(x=90),
        "task id=7, result id='rect2': the rectangle extends past 100 % of the image",
    ),
    "no size": (
        lambda d: _result_of(d, 1, "p").pop("original_width"),
        "task id=8, result id='p': original_width and original_height must be positive integers",
    ),
    "sizes differ": (
        lambda d: _result_of(d, 1, "p").update(original_width=34),
        "task id=8, result id='p': original size 34x7 differs from the 33x7 of result id='r'",
    ),
    "two annotations": (
        lambda d: d[1]["annotations"].append({"id": 99, "result": []}),
        "task id=8: 2 annotations (ids 32, 99): which one is the image's? keep one per task",
    ),
    "rotated": (
        lambda d: _result_of(d, 0, "rect2")["value"].update(rotation=15),
        "task id=7, result id='rect2': the rectangle is rotated (15 degrees)",
    ),
    "no image": (lambda d: d[1]["data"].pop("image"), "task id=8: no 'data.image'"),
    "not a task list": (lambda d: d.__setitem__(slice(None), [[]]), "tasks[0]: a task must be an object"),
    "no label": (
        lambda d: _result_of(d, 0, "rect2").update(type="rectangle"),
        "task id=7, result id='rect2': a 'rectangle' result has no label",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_exports_are_refused_naming_the_task_and_result(tmp_path, case):
    edit, message = BAD[case]
    path = _write(tmp_path, _edited(edit))
    with pytest.raises(FormatError) as err:
        read_label_studio(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_malformed_json_and_a_non_list_are_refused(tmp_path):
    path = tmp_path / "export.json"
    path.write_text('[{"id": 1,')
    with pytest.raises(CocoFormatError, match="export.json: not valid JSON"):
        read_label_studio(path)
    path.write_text('{"tasks": []}')
    with pytest.raises(FormatError, match="a Label Studio JSON export is a list of tasks, got a dict"):
        read_label_studio(path)


def test_uploaded_names_match_the_reference_image_without_label_studios_prefix(tmp_path):
    from point_sup_labels.coco_format import validate_coco_instances
    from point_sup_labels.formats.coco import coco_dict

    ds = read_label_studio(_write(tmp_path, _export()))
    reference = validate_coco_instances(
        {
            "images": [
                {"id": 10, "file_name": "b.jpg", "width": 33, "height": 7},
                {"id": 11, "file_name": "images/photo 1.jpg", "width": 1920, "height": 1280},
            ],
            "annotations": [],
            "categories": [{"id": 5, "name": "dog"}, {"id": 6, "name": "cat"}],
        },
        source="ref.json",
    )
    out = coco_dict(ds, reference=reference)
    assert [img["id"] for img in out["images"]] == [10, 11]  # the reference's order
    assert [(a["image_id"], a["category_id"]) for a in out["annotations"]] == [(10, 6), (11, 6), (11, 5)]
    reference.data["images"][1]["width"] = 1919
    with pytest.raises(FormatError, match="is 1920x1280 here but 1919x1280 in the reference file ref.json"):
        coco_dict(ds, reference=reference)
