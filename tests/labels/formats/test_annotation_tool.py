"""The converter and the browser annotation tool together: boxes drawn in CVAT become the tool's
``--annotations`` input (loaded by the tool's own loader), and the points labelled in the tool
go back to every format with the same pixels and labels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from point_sup_labels.annotation import AnnotationServer
from point_sup_labels.annotation.output import FLAGGED_KEY
from point_sup_labels.coco_format import load_coco_instances
from point_sup_labels.formats import read_annotations

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("convert_annotations", ROOT / "tools/convert_annotations.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

BOXES_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>boxes</name><size>2</size><mode>annotation</mode>
    <labels><label><name>cell</name></label><label><name>debris</name></label></labels></task></meta>
  <image id="0" name="tile_0.png" width="32" height="24">
    <box label="cell" occluded="0" source="manual" xtl="2.00" ytl="3.00" xbr="14.50" ybr="20.00" z_order="0"/>
    <box label="debris" occluded="0" source="manual" xtl="20.00" ytl="1.00" xbr="32.00" ybr="24.00" z_order="0"/>
  </image>
  <image id="1" name="dir/tile_1.png" width="16" height="16">
    <box label="cell" occluded="0" source="manual" xtl="0.00" ytl="0.00" xbr="16.00" ybr="16.00" z_order="0"/>
    <box label="cell" occluded="0" source="manual" xtl="5.00" ytl="5.00" xbr="9.00" ybr="9.00" z_order="0"/>
  </image>
</annotations>
"""  # noqa: E501 (CVAT writes an element per line)


@pytest.fixture
def labelled(tmp_path: Path) -> dict[str, Path]:
    """CVAT boxes -> the tool's input -> every point answered (one object flagged) -> its output."""
    images = tmp_path / "images"
    (images / "dir").mkdir(parents=True)
    Image.new("RGB", (32, 24)).save(images / "tile_0.png")
    Image.new("RGB", (16, 16)).save(images / "dir/tile_1.png")
    xml = tmp_path / "boxes.xml"
    xml.write_text(BOXES_XML)
    boxes = tmp_path / "boxes.json"
    assert tool.main([str(xml), str(boxes), "--from", "cvat", "--to", "coco"]) == 0  # no points: boxes only
    assert all("point_coords" not in a for a in json.loads(boxes.read_text())["annotations"])

    # What `tools/annotate.py --annotations boxes.json` does with it (tools/annotate.py::_serve).
    instances = load_coco_instances(boxes, require_segmentation=False)
    points = tmp_path / "points.json"
    server = AnnotationServer.open_session(instances, points, images, num_points=4, seed=0, port=0)
    store = server.store
    try:
        assert [(t.image_id, t.category_id, t.bbox) for t in store.tasks] == [
            (1, 1, (2.0, 3.0, 12.5, 17.0)),
            (1, 2, (20.0, 1.0, 12.0, 23.0)),
            (2, 1, (0.0, 0.0, 16.0, 16.0)),
            (2, 1, (5.0, 5.0, 4.0, 4.0)),
        ]
        for task in store.tasks:
            if task.category_id == 2:
                store.flag(task.ann_id)  # a wrong box: left out of the output's annotations
                continue
            for k, (x, y) in enumerate(task.points):
                store.answer(task.ann_id, k, int((x + y) % 2 == 0), 0.8)
    finally:
        server.server_close()
        store.close()
    return {"boxes": boxes, "points": points, "images": images}


def test_the_tools_input_loads_and_its_output_exports_to_every_format(labelled, tmp_path):
    result = json.loads(labelled["points"].read_text())
    assert result["point_sup_annotation"]["complete"] and len(result[FLAGGED_KEY]) == 1
    expected = [(a["point_coords"], a["point_labels"]) for a in result["annotations"]]
    assert len(expected) == 3 and all(len(c) == 4 for c, _ in expected)
    for fmt, name in (("cvat", "p.xml"), ("label-studio", "p_ls.json"), ("labelme", "p_labelme")):
        out = tmp_path / name
        assert tool.main([str(labelled["points"]), str(out), "--from", "coco", "--to", fmt]) == 0
        ds = read_annotations(out, fmt)
        got = sorted(
            ([list(p) for p in o.points], list(o.labels), img.file_name)
            for img in ds.images
            for o in img.objects
        )
        names = {img["id"]: img["file_name"] for img in result["images"]}
        want = sorted(
            (c, lab, names[a["image_id"]])
            for (c, lab), a in zip(expected, result["annotations"], strict=True)
        )
        assert got == want, fmt
        # ... and back to COCO with the boxes file as reference: the same ids, boxes and points
        back = tmp_path / f"back_{fmt}.json"
        argv = [str(out), str(back), "--from", fmt, "--to", "coco", "--reference", str(labelled["boxes"])]
        assert tool.main(argv) == 0
        anns = json.loads(back.read_text())["annotations"]
        keys = ("image_id", "category_id", "bbox", "point_coords", "point_labels")
        assert [tuple(str(a[k]) for k in keys) for a in anns] == [
            tuple(str(a[k]) for k in keys) for a in result["annotations"]
        ]
