"""labelme: a folder of per-image JSON files as labelme saves them reads to the expected pixels;
bad files are refused naming the file and the shape."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from point_sup_labels.coco_format import CocoFormatError
from point_sup_labels.formats import FormatError
from point_sup_labels.formats.labelme import read_labelme, write_labelme


def _shape(label, points, kind, group=None):
    return {
        "label": label,
        "points": points,
        "group_id": group,
        "description": "",
        "shape_type": kind,
        "flags": {},
        "mask": None,
    }


def _img1() -> dict:
    """As labelme 5 saves an annotation (LabelFile.save): version, flags, imageData null when the
    image is not embedded, one entry per shape."""
    return {
        "version": "5.2.1",
        "flags": {},
        "shapes": [
            _shape("cat", [[60.0, 40.0], [10.5, 5.0]], "rectangle", 1),  # corners in either order
            _shape("object", [[20.7, 10.2]], "point", 1),
            _shape("background", [[99.0, 49.0]], "point", 1),  # labelme keeps clicks within size - 1
            _shape("dog", [[0, 0], [100, 50]], "rectangle"),  # no group: no points
            _shape("road", [[1, 1], [5, 1], [5, 5]], "polygon"),
            _shape("object", [[0.0, 49.999]], "point", 1),
        ],
        "imagePath": "img1.jpg",
        "imageData": None,
        "imageHeight": 50,
        "imageWidth": 100,
    }


def _img2() -> dict:
    return {
        "version": "4.5.6",
        "flags": {"reviewed": True},
        "shapes": [
            _shape("dog", [[1.0, 2.0], [3.0, 4.0]], "rectangle", 7),
            _shape("background", [[2.5, 3.5]], "point", 7),
        ],
        "imagePath": "../images/img2.png",
        "imageData": None,
        "imageHeight": 8,
        "imageWidth": 8,
    }


def _folder(tmp_path: Path, files: dict[str, dict]) -> Path:
    folder = tmp_path / "labelme"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data, indent=2))
    return folder


def test_a_labelme_folder_reads_to_the_pixels_that_hold_the_points(tmp_path, caplog):
    folder = _folder(tmp_path, {"img1.json": _img1(), "sub/img2.json": _img2()})
    with caplog.at_level(logging.WARNING):
        ds = read_labelme(folder)
    assert ds.categories == ("cat", "dog")
    a, b = ds.images
    assert (a.file_name, a.width, a.height) == ("img1.jpg", 100, 50)
    assert b.file_name == "images/img2.png"  # imagePath from sub/: sub/../images/img2.png
    cat, dog = a.objects
    assert cat.box_xywh == (10.5, 5.0, 49.5, 35.0)
    # floor: (20.7, 10.2) -> (20, 10); (99.0, 49.0) -> (99, 49); (0.0, 49.999) -> (0, 49)
    assert cat.points == ((20, 10), (99, 49), (0, 49)) and cat.labels == (1, 0, 1)
    assert dog.box_xywh == (0.0, 0.0, 100.0, 50.0) and dog.points == ()
    assert b.objects[0].points == ((2, 3),) and b.objects[0].labels == (0,)
    assert "1 shapes of type 'polygon' ignored" in caplog.text


def test_an_image_path_out_of_the_folder_keeps_its_base_name(tmp_path):
    data = _img2()
    data["imagePath"] = "../../elsewhere/img2.png"
    assert read_labelme(_folder(tmp_path, {"sub/img2.json": data})).images[0].file_name == "img2.png"


def test_written_files_are_what_labelme_opens(tmp_path):
    ds = read_labelme(_folder(tmp_path, {"img1.json": _img1(), "sub/img2.json": _img2()}))
    files = write_labelme(ds, tmp_path / "out")
    assert sorted(files) == [tmp_path / "out/images/img2.json", tmp_path / "out/img1.json"]
    data = json.loads(files[tmp_path / "out/img1.json"])
    assert set(data) == {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
    assert data["imagePath"] == "img1.jpg" and data["imageData"] is None
    assert data["shapes"][0] == _shape("cat", [[10.5, 5.0], [60.0, 40.0]], "rectangle", 1)
    assert data["shapes"][1] == _shape("object", [[20.5, 10.5]], "point", 1)  # the pixel's centre
    assert data["shapes"][4] == _shape("dog", [[0.0, 0.0], [100.0, 50.0]], "rectangle")
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    back = read_labelme(tmp_path / "out")
    assert [i.file_name for i in back.images] == ["images/img2.png", "img1.jpg"]  # files in path order
    assert sorted(back.images, key=lambda i: i.file_name) == sorted(ds.images, key=lambda i: i.file_name)


def _with(edit, base=_img1) -> dict:
    data = copy.deepcopy(base())
    edit(data)
    return data


BAD = {
    "point without group": (
        lambda d: d["shapes"][1].update(group_id=None),
        "shapes[1] point: a point without group_id belongs to no rectangle",
    ),
    "group without rectangle": (
        lambda d: d["shapes"][2].update(group_id=3),
        "shapes[2] point group_id=3: no rectangle of this file has group_id 3",
    ),
    "two rectangles in a group": (
        lambda d: d["shapes"][3].update(group_id=1),
        "shapes[3] rectangle: two rectangles have group_id 1 (shapes[0] and shapes[3])",
    ),
    "bad point label": (
        lambda d: d["shapes"][2].update(label="bg"),
        "shapes[2] point group_id=1: point label 'bg' is neither 'object' (object) nor 'background'",
    ),
    "point outside": (
        lambda d: d["shapes"][2].update(points=[[100.5, 10.0]]),
        "shapes[2] point group_id=1: point [100.5, 10.0] lies outside the 100x50 image",
    ),
    "negative point": (
        lambda d: d["shapes"][1].update(points=[[-0.5, 10.0]]),
        "shapes[1] point group_id=1: point [-0.5, 10.0] lies outside",
    ),
    "rectangle outside": (
        lambda d: d["shapes"][3].update(points=[[0, 0], [101, 50]]),
        "shapes[3] rectangle: box [x, y, w, h] = [0.0, 0.0, 101.0, 50.0] extends outside the 100x50 image",
    ),
    "two points in a point": (
        lambda d: d["shapes"][1].update(points=[[1, 1], [2, 2]]),
        "shapes[1] point group_id=1: 'points' of a point must be [[x, y]]",
    ),
    "no size": (
        lambda d: d.update(imageWidth=None),
        "'imageWidth' and 'imageHeight' must be positive integers",
    ),
    "not labelme": (lambda d: d.pop("shapes"), "not a labelme file (no 'shapes' list)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_refused_naming_the_file_and_shape(tmp_path, case):
    edit, message = BAD[case]
    folder = _folder(tmp_path, {"img1.json": _with(edit), "sub/img2.json": _img2()})
    with pytest.raises(FormatError) as err:
        read_labelme(folder)
    assert str(err.value).startswith(f"{folder / 'img1.json'}: ") and message in str(err.value)


def test_malformed_json_an_empty_folder_and_two_files_for_one_image_are_refused(tmp_path):
    folder = _folder(tmp_path, {"img1.json": _img1()})
    (folder / "broken.json").write_text('{"shapes": [')
    with pytest.raises(CocoFormatError, match="broken.json: not valid JSON"):
        read_labelme(folder)
    (folder / "broken.json").write_text(json.dumps(_img1()))
    with pytest.raises(FormatError, match="img1.json: image 'img1.jpg' is also annotated by .*broken.json"):
        read_labelme(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no labelme JSON file"):
        read_labelme(tmp_path / "empty")
    with pytest.raises(FormatError, match="labelme input must be a folder"):
        read_labelme(folder / "img1.json")
