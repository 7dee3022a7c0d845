"""CVAT's "CVAT for images 1.1" XML: boxes and P_N points, grouped by ``group_id``.

The format (https://docs.cvat.ai/docs/other/xml_format/, "Annotation" section; CVAT writes
``group_id`` on a shape that belongs to a group, see its "Grouping" tool)::

    <annotations>
      <version>1.1</version>
      <meta><task>... <labels><label><name>cat</name>...</label>...</labels> ...</task></meta>
      <image id="0" name="a.jpg" width="640" height="480">
        <box label="cat" occluded="0" source="manual" xtl="10.5" ytl="20" xbr="50" ybr="70"
             z_order="0" group_id="1"/>
        <points label="object" occluded="0" source="manual" points="12.5,30.5;40.5,60.5"
                z_order="0" group_id="1"/>
        <points label="background" ... points="11.5,68.5" group_id="1"/>
      </image>
    </annotations>

Reading:

* An object is a ``<box>`` (its ``label`` is the category) with the ``<points>`` shapes of the
  same ``group_id`` in the same image, in document order (each shape's points in order). A box
  without ``group_id``, or whose group has no points, is an object without points.
* Object or background: a points shape with an ``<attribute name="label">`` (the name is
  :attr:`Options.point_attribute`) takes it from that attribute's text, so one CVAT label
  ("point", say) with an attribute object/background works; otherwise from the shape's ``label``,
  so two CVAT labels ``object`` and ``background`` work (:attr:`Options.object_label`,
  :attr:`Options.background_label`). Either way the value must be one of the two names.
* Categories: the labels of ``<meta>`` (task or project), in their order, except the two point
  names, labels of ``<type>points</type>`` and labels that only points shapes use; a box whose
  label is not among them is an unknown category. Without labels in ``<meta>``, the box labels
  in order of appearance.
* Pixels: CVAT's coordinates are continuous, ``(0, 0)`` the top-left corner of the image and
  ``(width, height)`` the bottom-right one (CVAT writes COCO boxes unchanged as
  ``xtl = x``, ``xbr = x + w``), so pixel ``i`` covers ``[i, i + 1)``: a point becomes
  ``floor(x)`` (the last pixel on the far edge), see :func:`.rules.pixel_index`.
* Other shapes (polygons, polylines, tags, ...) are ignored, with a warning; ``<track>``
  elements (CVAT for video) are refused.

Errors name the file, the image (``name``) and the shape as ``shapes[k]`` (its position among the
image's shapes, from 0) with its ``group_id``.

Writing: the ``<meta>`` labels are the categories, then the two point names; each object is a
``<box>`` and, if it has points, ``group_id = k`` (its position in the image, from 1) on it and
on one ``<points>`` shape per run of equal labels (so the order of the points is kept); a point is
written at its pixel's centre ``index + 0.5``. Coordinates are written in full (CVAT itself
rounds to 2 decimals when it exports). The files are parsed with :mod:`xml.etree.ElementTree`
(local files one has exported oneself; Python's expat refuses entity expansion attacks).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from .dataset import BoxObject, Dataset, FormatError, ImageRecord, Options
from .rules import (
    box_corners,
    box_from_corners,
    box_problem,
    check_image,
    checked_size,
    format_float,
    number,
    pixel_centre,
    pixel_index,
    unique_category_names,
)

__all__ = ["read_cvat", "write_cvat"]

logger = logging.getLogger(__name__)

_SHAPES = ("box", "points", "polygon", "polyline", "ellipse", "cuboid", "mask", "skeleton", "tag")


def _parse(path: Path) -> ET.Element:
    source = os.fspath(path)
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        line, column = e.position
        reason = str(e).split(":")[0]
        raise FormatError(
            source, f"not well-formed XML ({reason}, line {line}, column {column + 1})"
        ) from None
    except OSError as e:
        raise FormatError(source, f"cannot read the file ({e.strerror or e})") from None


def _meta_labels(root: ET.Element, options: Options) -> list[str]:
    """The categories that ``<meta>`` declares: its labels but the point names, those of
    ``<type>points</type>`` and those that only ``<points>`` shapes use."""
    names = []
    for owner in ("task", "project", "job"):
        for label in root.findall(f"./meta/{owner}/labels/label"):
            name = (label.findtext("name") or "").strip()
            if name and (label.findtext("type") or "").strip() != "points":
                names.append(name)
    on_points = {s.get("label") for s in root.iterfind("image/points")}
    on_boxes = {s.get("label") for s in root.iterfind("image/box")}
    points_only = (on_points - on_boxes) | {options.object_label, options.background_label}
    return [n for n in dict.fromkeys(names) if n not in points_only]


def read_cvat(path: str | os.PathLike, options: Options | None = None) -> Dataset:
    """Read a "CVAT for images 1.1" XML file (see the module docstring).

    Raises:
        FormatError: malformed XML; an image without a positive integer size; a box with bad
            or outside coordinates; a points shape without a box (no ``group_id``, or one no box
            of its image has); two boxes with one ``group_id``; a point label that is neither
            name; a point outside the image; an unknown category.
    """
    options = options or Options()
    path = Path(path)
    source = os.fspath(path)
    root = _parse(path)
    if root.tag != "annotations":
        raise FormatError(
            source, f"the root element is <{root.tag}>, not <annotations> (not a CVAT XML file)"
        )
    if root.find("track") is not None:
        raise FormatError(
            source,
            "holds <track> elements: this is 'CVAT for video'; export the task as 'CVAT for images 1.1'",
        )
    declared = _meta_labels(root, options)
    ignored: Counter[str] = Counter()
    images = [_read_image(element, declared, options, source, ignored) for element in root.findall("image")]
    for tag, count in sorted(ignored.items()):
        logger.warning("%s: %d <%s> shapes ignored (only <box> and <points> are read)", source, count, tag)
    seen = (obj.category for img in images for obj in img.objects)
    categories = tuple(declared) if declared else unique_category_names(seen)
    return Dataset(tuple(images), categories, source)


def _group(shape: ET.Element) -> str | None:
    group = shape.get("group_id")
    return None if group in (None, "", "0") else group  # CVAT writes no group_id (or 0) outside groups


def _where(k: int, shape: ET.Element) -> str:
    group = _group(shape)
    return f"shapes[{k}] <{shape.tag}" + (f" group_id={group}>" if group is not None else ">")


def _read_image(
    element: ET.Element, declared: list[str], options: Options, source: str, ignored: Counter[str]
) -> ImageRecord:
    """One ``<image>``: its boxes, each with the points of its group (see the module docstring)."""
    name = element.get("name")
    image_where = f"image {name!r}" if name else f"image id={element.get('id')!r}"
    if not name:
        raise FormatError(source, "<image> has no 'name'", image_where)
    width, height = checked_size(element.get("width")), checked_size(element.get("height"))
    if width is None or height is None:
        got = f"{element.get('width')!r}, {element.get('height')!r}"
        raise FormatError(source, f"'width' and 'height' must be positive integers, got {got}", image_where)
    shapes = [child for child in element if child.tag in _SHAPES]
    boxes = [(k, shape) for k, shape in enumerate(shapes) if shape.tag == "box"]
    groups: dict[str, int] = {}  # group_id -> index in boxes
    for b, (k, shape) in enumerate(boxes):
        group = _group(shape)
        if group is None:
            continue
        if group in groups:
            first = boxes[groups[group]][0]
            raise FormatError(
                source,
                f"two <box> shapes have group_id {group} (shapes[{first}] and shapes[{k}]): which box do "
                "its points belong to?",
                f"{image_where}: {_where(k, shape)}",
            )
        groups[group] = b
    ignored.update(shape.tag for shape in shapes if shape.tag not in ("box", "points"))
    points: list[list[tuple[int, int]]] = [[] for _ in boxes]
    labels: list[list[int]] = [[] for _ in boxes]
    for k, shape in enumerate(shapes):
        if shape.tag != "points":
            continue
        group, where = _group(shape), f"{image_where}: {_where(k, shape)}"
        if group is None:
            raise FormatError(
                source, "a points shape without group_id belongs to no box (group it with its box)", where
            )
        if group not in groups:
            raise FormatError(source, f"no <box> of this image has group_id {group}", where)
        label = _point_label(shape, options, source, where)
        for x, y in _points(shape.get("points"), source, where):
            px, py = pixel_index(x, width), pixel_index(y, height)
            if px is None or py is None:
                xy = f"({format_float(x)}, {format_float(y)})"
                raise FormatError(source, f"point {xy} lies outside the {width}x{height} image", where)
            points[groups[group]].append((px, py))
            labels[groups[group]].append(label)
    objects = []
    for (k, shape), pts, labs in zip(boxes, points, labels, strict=True):
        where = f"{image_where}: {_where(k, shape)}"
        category = shape.get("label")
        if not category:
            raise FormatError(source, "<box> has no 'label' (its category)", where)
        if declared and category not in declared:
            known = ", ".join(map(repr, declared))
            raise FormatError(
                source, f"unknown category {category!r}: not a label of <meta> ({known})", where
            )
        box = _box(shape, width, height, source, where)
        objects.append(BoxObject(category, box, tuple(pts), tuple(labs), _where(k, shape)))
    return ImageRecord(name, width, height, tuple(objects), image_where)


def _point_label(shape: ET.Element, options: Options, source: str, where: str) -> int:
    for attribute in shape.findall("attribute"):
        if attribute.get("name") == options.point_attribute:
            value = (attribute.text or "").strip()
            label = options.point_label(value)
            if label is None:
                raise FormatError(
                    source,
                    f"attribute {options.point_attribute!r}: " + options.point_label_problem(value),
                    where,
                )
            return label
    value = shape.get("label")
    label = options.point_label(value)
    if label is None:
        raise FormatError(
            source,
            options.point_label_problem(value)
            + f" (and the shape has no <attribute name={options.point_attribute!r}>)",
            where,
        )
    return label


def _points(text: str | None, source: str, where: str) -> list[tuple[float, float]]:
    out = []
    for pair in (text or "").split(";"):
        xy = pair.split(",")
        values = [number(v) for v in xy] if len(xy) == 2 else [None]
        if None in values:
            raise FormatError(source, f"'points' must be 'x1,y1;x2,y2;...' of numbers, got {text!r}", where)
        out.append((values[0], values[1]))
    return out


def _box(
    shape: ET.Element, width: int, height: int, source: str, where: str
) -> tuple[float, float, float, float]:
    corners = [number(shape.get(key)) for key in ("xtl", "ytl", "xbr", "ybr")]
    if None in corners:
        got = {key: shape.get(key) for key in ("xtl", "ytl", "xbr", "ybr")}
        raise FormatError(source, f"'xtl', 'ytl', 'xbr', 'ybr' must be numbers, got {got}", where)
    rotation = number(shape.get("rotation", "0"))
    if rotation is None or rotation % 360 != 0:
        raise FormatError(
            source, f"the box is rotated ({shape.get('rotation')} degrees); COCO boxes are upright", where
        )
    xtl, ytl, xbr, ybr = corners
    if xbr < xtl or ybr < ytl:
        raise FormatError(source, f"xbr < xtl or ybr < ytl: {corners}", where)
    box = box_from_corners(xtl, ytl, xbr, ybr)
    problem = box_problem(box, width, height)
    if problem is not None:
        raise FormatError(source, problem, where)
    return box


def _runs(labels: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(label, start, stop)`` of each maximal run of equal labels."""
    runs = []
    start = 0
    for k in range(1, len(labels) + 1):
        if k == len(labels) or labels[k] != labels[start]:
            runs.append((labels[start], start, k))
            start = k
    return runs


def write_cvat(dataset: Dataset, path: Path, options: Options | None = None) -> dict[Path, bytes]:
    """The "CVAT for images 1.1" XML of ``dataset`` (see the module docstring): ``{path: bytes}``."""
    options = options or Options()
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = Path(dataset.source).name or "point_sup"
    ET.SubElement(task, "size").text = str(len(dataset.images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    point_names = (options.object_label, options.background_label)
    clash = set(dataset.categories) & set(point_names)
    if clash:
        raise FormatError(
            dataset.source,
            f"a category is named {sorted(clash)[0]!r}, like the point labels; choose other point label "
            "names (--object-label, --background-label)",
        )
    for name, kind in [(c, "rectangle") for c in dataset.categories] + [(n, "points") for n in point_names]:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = kind
        ET.SubElement(label, "attributes")
    for index, img in enumerate(dataset.images):
        check_image(img, dataset.source)
        element = ET.SubElement(
            root, "image", id=str(index), name=img.file_name, width=str(img.width), height=str(img.height)
        )
        for k, obj in enumerate(img.objects, start=1):
            group = {"group_id": str(k)} if obj.points else {}
            x1, y1, x2, y2 = box_corners(obj.box_xywh)
            ET.SubElement(
                element,
                "box",
                label=obj.category,
                occluded="0",
                source="manual",
                xtl=format_float(x1),
                ytl=format_float(y1),
                xbr=format_float(x2),
                ybr=format_float(y2),
                z_order="0",
                **group,
            )
            for label, start, stop in _runs(obj.labels):
                text = ";".join(
                    f"{format_float(pixel_centre(px))},{format_float(pixel_centre(py))}"
                    for px, py in obj.points[start:stop]
                )
                ET.SubElement(
                    element,
                    "points",
                    label=options.label_name(label),
                    occluded="0",
                    source="manual",
                    points=text,
                    z_order="0",
                    **group,
                )
    ET.indent(root)
    return {path: ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"}
