"""CVAT for images 1.1: a file as CVAT writes it (with <meta>) reads to the expected pixels; bad
files are refused with the image, the shape and the reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from point_sup_labels.formats import FormatError, Options
from point_sup_labels.formats.cvat import read_cvat, write_cvat

# As CVAT exports a task (docs.cvat.ai/docs/other/xml_format): <version>, <meta> with the task's
# labels, coordinates with 2 decimals, group_id on grouped shapes.
CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>4</id>
      <name>cells</name>
      <size>2</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <bugtracker></bugtracker>
      <flipped>False</flipped>
      <created>2024-03-01 10:00:00.000000+00:00</created>
      <updated>2024-03-01 11:00:00.000000+00:00</updated>
      <labels>
        <label><name>cat</name><color>#ff0000</color><type>rectangle</type><attributes></attributes></label>
        <label><name>dog</name><color>#00ff00</color><type>rectangle</type><attributes></attributes></label>
        <label><name>object</name><color>#0000ff</color><type>points</type><attributes></attributes></label>
        <label><name>background</name><color>#000000</color><type>points</type><attributes></attributes></label>
        <label>
          <name>point</name><type>points</type>
          <attributes>
            <attribute>
              <name>label</name><mutable>False</mutable><input_type>select</input_type>
              <default_value>object</default_value><values>object
background</values>
            </attribute>
          </attributes>
        </label>
      </labels>
      <segments><segment><id>4</id><start>0</start><stop>1</stop><url>http://localhost:8080/api/jobs/4</url></segment></segments>
      <owner><username>admin</username><email></email></owner>
    </task>
    <dumped>2024-03-01 11:00:05.000000+00:00</dumped>
  </meta>
  <image id="0" name="frame_000.jpg" width="640" height="480">
    <box label="cat" source="manual" occluded="0" xtl="100.00" ytl="150.25" xbr="300.50" ybr="400.00" z_order="0" group_id="1">
    </box>
    <points label="object" source="manual" occluded="0" points="120.50,160.50;299.99,399.20" z_order="0" group_id="1">
    </points>
    <points label="background" source="manual" occluded="0" points="100.00,150.25" z_order="0" group_id="1">
    </points>
    <box label="dog" source="manual" occluded="0" xtl="0.00" ytl="0.00" xbr="640.00" ybr="480.00" z_order="1">
    </box>
    <polygon label="cat" source="manual" occluded="0" points="1.00,1.00;5.00,1.00;5.00,5.00" z_order="0">
    </polygon>
  </image>
  <image id="1" name="dir/frame_001.jpg" width="64" height="48">
    <box label="dog" source="manual" occluded="0" xtl="10.00" ytl="20.00" xbr="64.00" ybr="48.00" z_order="0" group_id="5">
    </box>
    <points label="point" source="manual" occluded="0" points="64.00,48.00;0.00,0.00" z_order="0" group_id="5">
      <attribute name="label">background</attribute>
    </points>
    <points label="point" source="manual" occluded="0" points="63.99,47.01" z_order="0" group_id="5">
      <attribute name="label">object</attribute>
    </points>
  </image>
</annotations>
"""  # noqa: E501 (CVAT writes an element per line)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "annotations.xml"
    path.write_text(text)
    return path


def test_a_cvat_export_reads_to_the_pixels_that_hold_the_points(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = read_cvat(_write(tmp_path, CVAT_XML))
    assert ds.categories == ("cat", "dog")  # <meta>'s labels but those of points
    a, b = ds.images
    assert (a.file_name, a.width, a.height, b.file_name, b.width, b.height) == (
        "frame_000.jpg",
        640,
        480,
        "dir/frame_001.jpg",
        64,
        48,
    )
    cat, dog = a.objects
    assert cat.category == "cat" and cat.box_xywh == (100.0, 150.25, 200.5, 249.75)
    # floor of each coordinate: 120.5 -> 120, 299.99 -> 299, 399.2 -> 399, 100.0 -> 100, 150.25 -> 150
    assert cat.points == ((120, 160), (299, 399), (100, 150)) and cat.labels == (1, 1, 0)
    assert dog.box_xywh == (0.0, 0.0, 640.0, 480.0) and dog.points == ()  # no group: no points
    (obj,) = b.objects
    # by the "label" attribute; (64, 48) is the far corner: the last pixel (63, 47)
    assert obj.points == ((63, 47), (0, 0), (63, 47)) and obj.labels == (0, 0, 1)
    assert obj.box_xywh == (10.0, 20.0, 54.0, 28.0)
    assert "1 <polygon> shapes ignored" in caplog.text


def test_categories_without_meta_labels_come_in_order_of_appearance(tmp_path):
    text = CVAT_XML.split("<meta>")[0] + CVAT_XML.split("</meta>")[1]
    assert read_cvat(_write(tmp_path, text)).categories == ("cat", "dog")


def test_point_label_names_and_attribute_are_configurable(tmp_path):
    text = (
        CVAT_XML.replace('"object"', '"fg"')
        .replace('"background"', '"bg"')
        .replace(">background<", ">bg<")
        .replace(">object<", ">fg<")
        .replace('name="label"', 'name="kind"')
    )
    options = Options(object_label="fg", background_label="bg", point_attribute="kind")
    ds = read_cvat(_write(tmp_path, text), options)
    assert ds.images[0].objects[0].labels == (1, 1, 0) and ds.images[1].objects[0].labels == (0, 0, 1)


def test_written_xml_is_what_cvat_reads(tmp_path):
    ds = read_cvat(_write(tmp_path, CVAT_XML))
    ((path, data),) = write_cvat(ds, tmp_path / "out.xml").items()
    text = data.decode()
    assert text.startswith("<?xml version='1.0' encoding='utf-8'?>\n<annotations>\n  <version>1.1</version>")
    assert '<box label="cat" occluded="0" source="manual" xtl="100.0" ytl="150.25" xbr="300.5"' in text
    # one <points> per run of equal labels, at pixel centres, in the box's group
    assert 'points="120.5,160.5;299.5,399.5" z_order="0" group_id="1"' in text
    assert '<points label="background" occluded="0" source="manual" points="100.5,150.5"' in text
    dog = '<box label="dog" occluded="0" source="manual" xtl="0.0" ytl="0.0" xbr="640.0" ybr="480.0"'
    assert dog + ' z_order="0" />' in text  # no points: no group
    path.write_bytes(data)
    assert read_cvat(path) == ds


BAD = {
    "malformed XML": (
        lambda t: t.replace("</annotations>", ""),
        "not well-formed XML (no element found, line 59, column 1)",
    ),
    "not CVAT": (lambda t: t.replace("annotations>", "dataset>"), "the root element is <dataset>"),
    "point without group": (
        lambda t: t.replace('150.25" z_order="0" group_id="1"', '150.25" z_order="0"'),
        "image 'frame_000.jpg': shapes[2] <points>: a points shape without group_id belongs to no box",
    ),
    "group without box": (
        lambda t: t.replace('150.25" z_order="0" group_id="1"', '150.25" group_id="9"'),
        "image 'frame_000.jpg': shapes[2] <points group_id=9>: no <box> of this image has group_id 9",
    ),
    "two boxes in a group": (
        lambda t: t.replace('ybr="480.00" z_order="1"', 'ybr="480.00" group_id="1"'),
        "image 'frame_000.jpg': shapes[3] <box group_id=1>: two <box> shapes have group_id 1 "
        "(shapes[0] and shapes[3])",
    ),
    "bad point label": (
        lambda t: t.replace('<points label="background"', '<points label="maybe"'),
        "image 'frame_000.jpg': shapes[2] <points group_id=1>: point label 'maybe' is neither 'object' "
        "(object) nor 'background' (background)",
    ),
    "bad attribute": (
        lambda t: t.replace(">object</attribute>", ">yes</attribute>"),
        "image 'dir/frame_001.jpg': shapes[2] <points group_id=5>: attribute 'label': point label 'yes'",
    ),
    "point outside": (
        lambda t: t.replace('points="63.99,47.01"', 'points="64.01,47.01"'),
        "image 'dir/frame_001.jpg': shapes[2] <points group_id=5>: point (64.01, 47.01) lies outside the "
        "64x48 image",
    ),
    "box outside": (
        lambda t: t.replace('xtl="10.00" ytl="20.00" xbr="64.00"', 'xtl="10.00" ytl="20.00" xbr="64.50"'),
        "image 'dir/frame_001.jpg': shapes[0] <box group_id=5>: box [x, y, w, h] = [10.0, 20.0, 54.5, 28.0] "
        "extends outside the 64x48 image",
    ),
    "unknown category": (
        lambda t: t.replace(
            '<box label="dog" source="manual" occluded="0" xtl="10', '<box label="cow" xtl="10'
        ),
        "image 'dir/frame_001.jpg': shapes[0] <box group_id=5>: unknown category 'cow': not a label of "
        "<meta> ('cat', 'dog')",
    ),
    "bad number": (
        lambda t: t.replace('points="120.50,160.50;', 'points="120.50;160.50;'),
        "shapes[1] <points group_id=1>: 'points' must be 'x1,y1;x2,y2;...' of numbers",
    ),
    "bad size": (lambda t: t.replace('width="64"', 'width="64.5"'), "image 'dir/frame_001.jpg': 'width' and"),
    "video": (
        lambda t: t.replace('<image id="1"', '<track id="0" label="cat"></track><image id="1"'),
        "this is 'CVAT for video'",
    ),
    "rotated": (
        lambda t: t.replace('z_order="1"', 'z_order="1" rotation="30.0"'),
        "the box is rotated (30.0 degrees)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_refused_naming_the_image_and_shape(tmp_path, case):
    edit, message = BAD[case]
    path = _write(tmp_path, edit(CVAT_XML))
    with pytest.raises(FormatError) as err:
        read_cvat(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)
