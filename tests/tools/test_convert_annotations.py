"""The conversion command line: --help, conversions end to end (without torch), bad input (exit 1,
one line naming the culprit, no traceback, nothing written), outputs that would overwrite an input
(exit 2)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/convert_annotations.py"
_spec = importlib.util.spec_from_file_location("convert_annotations", TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

POINTS = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
        {"id": 2, "file_name": "b.jpg", "width": 8, "height": 8},
    ],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [1.5, 2.0, 18.5, 8.0],
            "area": 148.0,
            "iscrowd": 0,
            "point_coords": [[2, 3], [19, 9]],
            "point_labels": [1, 0],
        },
        {
            "id": 2,
            "image_id": 2,
            "category_id": 2,
            "bbox": [0.0, 0.0, 8.0, 8.0],
            "area": 64.0,
            "iscrowd": 0,
            "point_coords": [[0, 7]],
            "point_labels": [1],
        },
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


@pytest.fixture(autouse=True)
def tool_logs_reach_caplog(caplog):
    """The tool's logger ("point_sup", set up by point_sup_labels.log) does not propagate to the
    root logger where caplog listens: caplog listens on it and on the readers' logger."""
    loggers = [logging.getLogger("point_sup"), logging.getLogger("point_sup_labels")]
    for log in loggers:
        log.addHandler(caplog.handler)
    yield
    for log in loggers:
        log.removeHandler(caplog.handler)


@pytest.fixture
def points(tmp_path: Path) -> Path:
    path = tmp_path / "points.json"
    path.write_text(json.dumps(POINTS))
    return path


def _run(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    if block_torch:  # any import of torch or Detectron2 would fail
        code = (
            "import runpy, sys; sys.modules['torch'] = sys.modules['detectron2'] = None; "
            f"sys.argv = {[str(TOOL), *args]!r}; runpy.run_path({str(TOOL)!r}, run_name='__main__')"
        )
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, str(TOOL), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_help(tmp_path):
    run = _run("--help")
    assert run.returncode == 0 and run.stderr == ""
    for option in ("--from", "--to", "--boxes-only", "--reference", "--object-label", "--image-url-prefix"):
        assert option in run.stdout
    assert "coco,cvat,label-studio,labelme" in run.stdout


def test_a_conversion_end_to_end_without_torch(points, tmp_path):
    xml = tmp_path / "points.xml"
    run = _run(str(points), str(xml), "--from", "coco", "--to", "cvat", block_torch=True)
    assert run.returncode == 0, run.stderr
    assert "points.json: 2 images, 2 objects, 3 points (2 object, 1 background)" in run.stderr
    assert '<points label="background" occluded="0" source="manual" points="19.5,9.5"' in xml.read_text()
    back = tmp_path / "back.json"
    run = _run(str(xml), str(back), "--from", "cvat", "--to", "coco", block_torch=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(back.read_text()) == POINTS


def test_a_bad_input_exits_1_with_one_line_on_stderr_and_writes_nothing(tmp_path):
    xml = tmp_path / "bad.xml"
    xml.write_text(
        '<annotations><image id="0" name="a.jpg" width="20" height="10">'
        '<box label="cat" xtl="1" ytl="1" xbr="5" ybr="5" group_id="1"/>'
        '<points label="object" points="3,3" group_id="2"/></image></annotations>'
    )
    out = tmp_path / "out.json"
    run = _run(str(xml), str(out), "--from", "cvat", "--to", "coco")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert (
        f"{xml}: image 'a.jpg': shapes[1] <points group_id=2>: no <box> of this image has group_id 2"
        in run.stderr
    )
    assert run.stderr.startswith("ERROR [") and not out.exists()
    assert os.listdir(tmp_path) == ["bad.xml"]  # no temporary file either


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """One bad input per format and problem: (argv without OUTPUT, what the message says)."""
    cvat = tmp_path / "a.xml"
    cvat.write_text(
        '<annotations><image id="0" name="a.jpg" width="20" height="10">'
        '<box label="cat" xtl="1" ytl="1" xbr="5" ybr="5" group_id="1"/>'
        '<points label="maybe" points="3,3" group_id="1"/><points label="object" points="3,3"/>'
        "</image></annotations>"
    )
    ls = tmp_path / "ls.json"
    ls.write_text(
        json.dumps(
            [
                {
                    "id": 4,
                    "data": {"image": "a.jpg"},
                    "annotations": [
                        {
                            "id": 1,
                            "result": [
                                {
                                    "id": "kp",
                                    "type": "keypointlabels",
                                    "original_width": 20,
                                    "original_height": 10,
                                    "value": {"x": 101, "y": 5, "keypointlabels": ["object"]},
                                }
                            ],
                        }
                    ],
                }
            ]
        )
    )
    labelme = tmp_path / "labelme"
    labelme.mkdir()
    (labelme / "a.json").write_text(
        json.dumps(
            {
                "version": "5.5.0",
                "flags": {},
                "imagePath": "a.jpg",
                "imageData": None,
                "imageHeight": 10,
                "imageWidth": 20,
                "shapes": [
                    {
                        "label": "object",
                        "points": [[3, 3]],
                        "group_id": None,
                        "shape_type": "point",
                        "flags": {},
                    }
                ],
            }
        )
    )
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps({**POINTS, "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1, ')
    return {
        "cvat point label": (
            [str(cvat), "--from", "cvat"],
            f"{cvat}: image 'a.jpg': shapes[1] <points group_id=1>: point label 'maybe' is neither 'object'",
        ),
        "cvat point without box": (
            [str(cvat), "--from", "cvat", "--object-label", "maybe", "--background-label", "bg"],
            f"{cvat}: image 'a.jpg': shapes[2] <points>: a points shape without group_id belongs to no box",
        ),
        "label studio outside 0-100 %": (
            [str(ls), "--from", "label-studio"],
            f"{ls}: task id=4, result id='kp': value.x = 101 lies outside 0-100 % of the image",
        ),
        "labelme point without rectangle": (
            [str(labelme), "--from", "labelme"],
            f"{labelme / 'a.json'}: shapes[0] point: a point without group_id belongs to no rectangle",
        ),
        "malformed JSON": ([str(broken), "--from", "label-studio"], f"{broken}: not valid JSON"),
        "unknown category": (
            [str(tmp_path / "points.json"), "--from", "coco", "--reference", str(reference)],
            "annotation id=1: unknown category 'cat' (known: 'dog') in the reference file",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cvat point label",
        "cvat point without box",
        "label studio outside 0-100 %",
        "labelme point without rectangle",
        "malformed JSON",
        "unknown category",
    ],
)
def test_each_bad_input_is_named_and_nothing_is_written(points, tmp_path, caplog, case):
    argv, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.json"
    out.write_text("earlier output")
    assert tool.main([argv[0], str(out), *argv[1:], "--to", "coco"]) == 1
    assert message in caplog.text, caplog.text
    assert out.read_text() == "earlier output"  # not replaced, not truncated
    labelme_out = tmp_path / "labelme_out"
    if "--reference" not in argv:
        assert tool.main([argv[0], str(labelme_out), *argv[1:], "--to", "labelme"]) == 1
        assert not labelme_out.exists()  # not even the folder
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_output_that_is_an_input_is_refused(points, tmp_path, caplog):
    before = points.read_bytes()
    assert tool.main([str(points), str(points), "--from", "coco", "--to", "coco"]) == 2
    assert f"OUTPUT {points} is the INPUT file {points}: refusing to overwrite an input" in caplog.text
    link = tmp_path / "link.json"
    os.link(points, link)  # the same file under another name
    assert tool.main([str(points), str(link), "--from", "coco", "--to", "cvat"]) == 2
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(POINTS))
    assert tool.main([str(points), str(ref), "--from", "coco", "--to", "coco", "--reference", str(ref)]) == 2
    assert "is the --reference file" in caplog.text
    assert points.read_bytes() == before and json.loads(ref.read_text()) == POINTS


def test_a_labelme_output_that_would_overwrite_an_input_is_refused(points, tmp_path, caplog):
    folder = tmp_path / "lm"
    assert tool.main([str(points), str(folder), "--from", "coco", "--to", "labelme"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "b.json"]
    # into the labelme input folder itself, or a file in it
    assert tool.main([str(folder), str(folder), "--from", "labelme", "--to", "labelme"]) == 2
    assert tool.main([str(folder), str(folder / "all.json"), "--from", "labelme", "--to", "coco"]) == 2
    assert f"lies inside the INPUT folder {folder}" in caplog.text
    # a COCO input named like the file one of its images would be written to
    data = dict(POINTS, images=[dict(POINTS["images"][0], file_name="points.jpg"), POINTS["images"][1]])
    points.write_text(json.dumps(data))
    assert tool.main([str(points), str(tmp_path), "--from", "coco", "--to", "labelme"]) == 2
    assert f"OUTPUT {points} is the INPUT file {points}" in caplog.text
    assert json.loads(points.read_text()) == data


def test_boxes_only_and_usage_errors(points, tmp_path, capsys):
    out = tmp_path / "boxes.json"
    assert tool.main([str(points), str(out), "--from", "coco", "--to", "coco", "--boxes-only"]) == 0
    boxes = json.loads(out.read_text())
    assert [set(a) for a in boxes["annotations"]] == [
        {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
    ] * 2
    for argv in (
        [str(points), str(out), "--from", "coco", "--to", "cvat", "--reference", str(points)],
        [str(points), str(out), "--from", "coco", "--to", "xml"],
        [str(points), str(out), "--to", "coco"],
    ):
        with pytest.raises(SystemExit) as exit_:
            tool.main(argv)
        assert exit_.value.code == 2
    assert (
        tool.main([str(points), str(tmp_path / "no/such/dir/x.xml"), "--from", "coco", "--to", "cvat"]) == 2
    )
