"""Loading and validating COCO-format instance annotation files, with errors that name the culprit.

Conventions (those of COCO and of pycocotools):

* ``bbox`` is ``[x, y, w, h]`` in continuous image coordinates: pixel column ``i`` covers
  ``[i, i + 1)``, so a box tight around columns ``a..b`` is ``[a, ., b - a + 1, .]``.
* Polygons (``segmentation`` a list of ``[x0, y0, x1, y1, ...]`` parts) are in the same
  continuous coordinates; a multi-part object is the union of its parts.
* RLE masks (``segmentation`` a dict with ``size = [h, w]``) are column-major (Fortran order): pixel
  ``(x, y)`` is element ``x * h + y``. ``counts`` is a list of run lengths (uncompressed) or
  pycocotools' compact string (compressed); runs alternate 0, 1, 0, ... starting with zeros.
* P_N point annotations (Detectron2's PointSup convention): ``point_coords`` is a list of
  ``[x, y]`` integer pixel indices (column, row), ``point_labels`` a list of 0/1 of the same
  length; Detectron2's loader adds 0.5 to reach pixel centres.

Use :func:`load_coco_instances` for a file and :func:`validate_coco_instances` for an in-memory
dict; both raise :class:`CocoFormatError`. JSON is parsed with ``orjson`` (files with
``NaN``/``Infinity`` literals, which strict JSON forbids, are re-read with the standard library so
that the offending value is reported by annotation id; why orjson: ``docs/labels_implementation.md``).
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .json_values import is_integer, is_number
from .point_fields import PointFieldError, missing_point_field, validate_points

__all__ = [
    "CocoFormatError",
    "CocoInstances",
    "SegmentationKind",
    "check_unique_top_level_keys",
    "dumps_json",
    "integer_image_ids",
    "load_coco_instances",
    "parse_json",
    "read_json",
    "relative_image_paths",
    "segmentation_kind",
    "validate_annotations",
    "validate_coco_instances",
]

SegmentationKind = Literal["polygon", "rle", "compressed_rle"]


class CocoFormatError(ValueError):
    """Malformed or inconsistent COCO-format data.

    Attributes:
        source: the file (or a description of the in-memory data).
        image_id, annotation_id: the offending record, where there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<memory>",
        image_id: Any = None,
        annotation_id: Any = None,
    ) -> None:
        where = []
        if annotation_id is not None:
            where.append(f"annotation id={annotation_id!r}")
        if image_id is not None:
            where.append(f"image id={image_id!r}")
        prefix = f"{source}: " + (f"{', '.join(where)}: " if where else "")
        super().__init__(prefix + message)
        self.source = source
        self.image_id = image_id
        self.annotation_id = annotation_id
        self._message = message

    def __reduce__(self):  # picklable with its keyword arguments (errors cross worker processes)
        return (
            _rebuild_error,
            (self._message, self.source, self.image_id, self.annotation_id),
        )


def _rebuild_error(message: str, source: str, image_id: Any, annotation_id: Any) -> CocoFormatError:
    return CocoFormatError(message, source=source, image_id=image_id, annotation_id=annotation_id)


@dataclass
class CocoInstances:
    """A validated COCO instances dataset.

    ``data`` is the parsed JSON itself (not a copy: mutate it to produce an output file);
    ``images`` and ``categories`` index its records by id. Annotations keep their file order.
    """

    data: dict[str, Any]
    source: str
    images: dict[int, dict[str, Any]] = field(repr=False)
    categories: dict[int, dict[str, Any]] = field(repr=False)

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return self.data["annotations"]

    def image_size(self, ann: dict[str, Any]) -> tuple[int, int]:
        """``(height, width)`` of the image of ``ann``."""
        img = self.images[ann["image_id"]]
        return img["height"], img["width"]


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; :class:`CocoFormatError` if unreadable or not JSON (see :func:`parse_json`)."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CocoFormatError(f"cannot read the file ({e.strerror or e})", source=source) from e
    return parse_json(raw, source)


def parse_json(raw: bytes, source: str = "<memory>") -> Any:
    """Parse JSON text; :class:`CocoFormatError` (naming ``source``) if it is not JSON or its top
    level repeats a key. ``NaN``/``Infinity`` literals are accepted here, for the validator to name
    the annotation that holds them."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # parsing creates millions of containers; collections in between are wasted time
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        first_error = e
    else:
        check_unique_top_level_keys(raw, value, source)
        return value
    finally:
        if gc_was_enabled:
            gc.enable()
    # orjson rejects NaN/Infinity literals and numbers beyond float range; the standard library
    # accepts them, so the validator can then name the annotation that holds the bad value.
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CocoFormatError(f"not valid JSON ({first_error})", source=source) from first_error
    check_unique_top_level_keys(raw, value, source)
    return value


def check_unique_top_level_keys(raw: bytes, value: Any, source: str) -> None:
    """Raise :class:`CocoFormatError` if the top-level object of the JSON text ``raw`` repeats a key.

    JSON parsers keep the last of repeated keys silently, so a file with two ``"annotations"``
    arrays would lose the first. ``value`` is ``raw`` parsed. A key can only repeat if its quoted
    text occurs twice, which one ``bytes.count`` per key rules out in the common case; only then is
    the top level walked with the standard library's scanner (keys written with ``\\u`` escapes
    are seen by the walk only).
    """
    if not isinstance(value, dict):
        return
    if all(raw.count(orjson.dumps(key)) <= 1 for key in value):
        return
    text = raw.decode("utf-8")
    decoder = json.JSONDecoder()
    ws = json.decoder.WHITESPACE  # type: ignore[attr-defined]
    pos = ws.match(text, 0).end() + 1  # after "{"
    seen: set[str] = set()
    while True:
        pos = ws.match(text, pos).end()
        if text[pos] == "}":
            return
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        if key in seen:
            raise CocoFormatError(
                f"the top-level key {key!r} occurs more than once (a JSON reader keeps only the last)",
                source=source,
            )
        seen.add(key)
        pos = ws.match(text, ws.match(text, pos).end() + 1).end()  # past ":"
        _, pos = decoder.raw_decode(text, pos)
        pos = ws.match(text, pos).end()
        if text[pos] == ",":
            pos += 1


def dumps_json(obj: Any) -> bytes:
    """Serialize to compact JSON bytes, deterministically (orjson; numpy arrays are supported).

    Always this one serializer, so that equal inputs give byte-identical files.
    """
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def segmentation_kind(segm: Any) -> SegmentationKind | None:
    """``"polygon"``, ``"rle"`` (uncompressed), ``"compressed_rle"``, or None for an unknown form."""
    if isinstance(segm, list):
        return "polygon"
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if isinstance(segm["counts"], list):
            return "rle"
        if isinstance(segm["counts"], str | bytes):
            return "compressed_rle"
    return None


def _positive_int(v: Any) -> int | None:
    """``v`` as an int if it is a finite positive integral number, else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        return None
    return int(v) if v > 0 else None


def validate_coco_instances(
    data: Any,
    *,
    source: str = "<memory>",
    require_segmentation: bool = True,
    check_points: bool = True,
) -> CocoInstances:
    """Check the structure and consistency of a COCO instances dict; return its index.

    Checked: top-level ``images``/``annotations``/``categories`` lists; unique integer image,
    category and annotation ids (annotation ids non-negative: they seed the point sampler);
    image ``height``/``width`` finite positive integers; each annotation's ``image_id`` and
    ``category_id`` known; ``bbox`` four finite numbers with non-negative width and height;
    ``iscrowd`` 0/1 if present; ``segmentation`` (required if ``require_segmentation``) a polygon
    list (parts are lists of numbers of even length), or an RLE whose ``size`` equals the image's
    ``[height, width]`` and whose uncompressed counts are non-negative integers summing to
    ``height * width``. Polygon coordinates are checked for finiteness by the simulator
    (:func:`point_sup_labels.chunks.read_chunk`); compressed RLE strings when decoded. With
    ``check_points``, existing ``point_coords``/``point_labels`` must follow
    :mod:`point_sup_labels.point_fields`.

    Raises:
        CocoFormatError: naming the image or annotation id of the first problem found.
    """

    def fail(msg: str, image_id: Any = None, annotation_id: Any = None) -> CocoFormatError:
        return CocoFormatError(msg, source=source, image_id=image_id, annotation_id=annotation_id)

    if not isinstance(data, dict):
        raise fail(f"top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise fail(f"'{key}' must be a list" + ("" if key in data else f" (no '{key}' key)"))

    images: dict[int, dict[str, Any]] = {}
    for img in data["images"]:
        if not isinstance(img, dict):
            raise fail(f"an entry of 'images' is a {type(img).__name__}, not an object")
        iid = img.get("id")
        if not is_integer(iid):
            raise fail(f"image 'id' must be an integer, got {iid!r}")
        if iid in images:
            raise fail("duplicate image id", image_id=iid)
        for key in ("height", "width"):
            v = _positive_int(img.get(key))
            if v is None:
                raise fail(f"image {key} must be a finite positive integer, got {img.get(key)!r}", iid)
            img[key] = v  # e.g. 480.0 -> 480, so that outputs and RLE sizes compare equal
        images[iid] = img

    categories: dict[int, dict[str, Any]] = {}
    for cat in data["categories"]:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not is_integer(cid):
            raise fail(f"category 'id' must be an integer, got {cid!r}")
        if cid in categories:
            raise fail(f"duplicate category id {cid}")
        categories[cid] = cat

    validate_annotations(
        data["annotations"],
        images,
        categories,
        source=source,
        require_segmentation=require_segmentation,
        check_points=check_points,
    )
    return CocoInstances(data=data, source=source, images=images, categories=categories)


def validate_annotations(
    anns: list[Any],
    images: dict[int, dict[str, Any]],
    categories: dict[int, Any],
    *,
    source: str = "<memory>",
    require_segmentation: bool = True,
    check_points: bool = True,
) -> None:
    """The annotation checks of :func:`validate_coco_instances` (``images``: id -> image with an
    integer ``height`` and ``width``; ``categories``: the known category ids), for a whole file or
    one shard of it. A tight loop of sufficient conditions first; only if it fails, the checks one
    annotation after the other, which name the first problem in file order.

    Raises:
        CocoFormatError: naming the image or annotation id of the first problem found.
    """

    def fail(msg: str, image_id: Any = None, annotation_id: Any = None) -> CocoFormatError:
        return CocoFormatError(msg, source=source, image_id=image_id, annotation_id=annotation_id)

    rules = _Rules(images, categories, require_segmentation, check_points, fail)
    if not _annotations_pass_fast_checks(anns, rules):
        _check_annotations(anns, rules)


class _Missing:
    """Stands for an absent key (``None`` is a value a file can hold)."""


_MISSING = _Missing()


@dataclass(frozen=True)
class _Rules:
    """What the annotations are checked against (see :func:`validate_annotations`)."""

    images: dict[int, dict[str, Any]]
    categories: dict[int, Any]
    require_segmentation: bool
    check_points: bool
    fail: Callable[..., CocoFormatError]


def _annotations_pass_fast_checks(anns: list[Any], rules: _Rules) -> bool:
    """The annotation checks of :func:`validate_coco_instances` in one tight loop (the fast path).

    The tests are *sufficient* conditions: True means :func:`_check_annotations` accepts every
    annotation; False means it may not, and the caller runs it to report the first problem in file
    order with its usual wording. (Exact types are required, so a few valid inputs take the slow
    path too, e.g. float ids or ``iscrowd`` given as ``true``.) RLEs and existing points, usually
    rare, are checked afterwards by the same functions as in the slow path.
    """
    images, categories, fail = rules.images, rules.categories, rules.fail
    require_segmentation, check_points = rules.require_segmentation, rules.check_points
    seen: set[int] = set()
    add = seen.add
    isfinite = math.isfinite
    number = (int, float)
    others: list[tuple[dict[str, Any], Any]] = []  # RLE segmentations, checked after
    with_points: list[dict[str, Any]] = []  # checked after, all at once
    try:
        for ann in anns:
            if type(ann) is not dict:
                return False
            aid = ann.get("id")
            if type(aid) is not int or aid in seen or aid < 0 or aid >= 2**63:
                return False
            add(aid)
            iid = ann.get("image_id")
            cid = ann.get("category_id")
            if type(iid) is not int or type(cid) is not int or iid not in images or cid not in categories:
                return False
            box = ann.get("bbox")
            if type(box) is not list or len(box) != 4:
                return False
            x, y, w, h = box
            if (
                type(x) not in number
                or type(y) not in number
                or type(w) not in number
                or type(h) not in number
            ):
                return False
            if not (isfinite(x) and isfinite(y) and isfinite(w) and isfinite(h)) or w < 0 or h < 0:
                return False
            crowd = ann.get("iscrowd", 0)
            if type(crowd) is not int or (crowd != 0 and crowd != 1):
                return False
            segm = ann.get("segmentation", _MISSING)
            if type(segm) is list:
                for part in segm:
                    if type(part) is not list or len(part) & 1:
                        return False
            elif segm is _MISSING:
                if require_segmentation:
                    return False
            else:
                others.append((ann, segm))
            if check_points and ("point_coords" in ann or "point_labels" in ann):
                with_points.append(ann)
        for ann, segm in others:
            img = images[ann["image_id"]]
            _check_segmentation(segm, img["height"], img["width"], fail)
        if with_points:
            if any(missing_point_field(ann) is not None for ann in with_points):
                return False
            sizes = [images[ann["image_id"]] for ann in with_points]
            validate_points(
                [ann["point_coords"] for ann in with_points],
                [ann["point_labels"] for ann in with_points],
                [img["height"] for img in sizes],
                [img["width"] for img in sizes],
            )
    except (CocoFormatError, PointFieldError, OverflowError):
        return False
    return True


def _check_annotations(anns: list[Any], rules: _Rules) -> None:
    """The annotation checks of :func:`validate_coco_instances`, one annotation after the other."""
    images, categories, fail = rules.images, rules.categories, rules.fail
    require_segmentation, check_points = rules.require_segmentation, rules.check_points
    seen: set[int] = set()
    for ann in anns:
        if not isinstance(ann, dict):
            raise fail(f"an entry of 'annotations' is a {type(ann).__name__}, not an object")
        aid = ann.get("id")
        if not isinstance(aid, int) or isinstance(aid, bool) or not 0 <= aid < 2**63:
            raise fail(f"annotation 'id' must be an integer in [0, 2**63), got {aid!r}")
        if aid in seen:
            raise fail("duplicate annotation id", annotation_id=aid)
        seen.add(aid)
        iid = ann.get("image_id")
        if iid not in images or isinstance(iid, bool):
            raise fail(f"unknown image_id {iid!r}", annotation_id=aid)
        if ann.get("category_id") not in categories or isinstance(ann.get("category_id"), bool):
            raise fail(f"unknown category_id {ann.get('category_id')!r}", iid, aid)
        if "bbox" not in ann:
            raise fail("no 'bbox'", iid, aid)
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(map(is_number, box))):
            raise fail(f"'bbox' must be a list of 4 numbers [x, y, w, h], got {box!r}", iid, aid)
        if not all(map(math.isfinite, box)):
            raise fail(f"'bbox' has a non-finite value: {box!r}", iid, aid)
        if box[2] < 0 or box[3] < 0:
            raise fail(f"'bbox' has a negative width or height: {box!r}", iid, aid)
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise fail(f"'iscrowd' must be 0 or 1, got {crowd!r}", iid, aid)
        img = images[iid]
        if "segmentation" in ann:
            _check_segmentation(
                ann["segmentation"], img["height"], img["width"], lambda m, i=iid, a=aid: fail(m, i, a)
            )
        elif require_segmentation:
            raise fail("no 'segmentation' (a mask is needed to label points)", iid, aid)
        if check_points and ("point_coords" in ann or "point_labels" in ann):
            _check_points(ann, img["height"], img["width"], lambda m, i=iid, a=aid: fail(m, i, a))


def _check_segmentation(segm: Any, h: int, w: int, fail) -> None:
    kind = segmentation_kind(segm)
    if kind is None:
        raise fail(
            "unknown segmentation form (expected a list of polygons, or an RLE dict with 'counts' "
            f"and 'size'), got {type(segm).__name__}"
            + (f" with keys {sorted(segm)}" if isinstance(segm, dict) else "")
        )
    if kind == "polygon":
        for part in segm:
            if not isinstance(part, list):
                raise fail(f"polygon part must be a list of numbers, got {type(part).__name__}")
            if len(part) % 2:
                raise fail(f"polygon part has an odd number of coordinates ({len(part)})")
        return
    size = segm["size"]
    if not (isinstance(size, list) and len(size) == 2) or list(size) != [h, w]:
        raise fail(f"RLE size {size!r} differs from the image's [height, width] = [{h}, {w}]")
    if kind == "rle":
        counts = segm["counts"]
        if not (set(map(type, counts)) <= {int} and (not counts or min(counts) >= 0)) and not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
        ):  # (the first test is the fast one: exact ints)
            raise fail("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != h * w:
            raise fail(f"RLE counts sum to {sum(counts)}, expected height * width = {h * w}")


def _check_points(ann: dict[str, Any], h: int, w: int, fail) -> None:
    missing = missing_point_field(ann)
    if missing is not None:
        raise fail(f"has point annotations but no '{missing}'")
    try:
        validate_points([ann["point_coords"]], [ann["point_labels"]], [h], [w])
    except PointFieldError as e:
        raise fail(str(e)) from None


def load_coco_instances(
    path: str | os.PathLike, *, require_segmentation: bool = True, check_points: bool = True
) -> CocoInstances:
    """Read and validate a COCO instances JSON file (see :func:`validate_coco_instances`)."""
    return validate_coco_instances(
        read_json(path),
        source=os.fspath(path),
        require_segmentation=require_segmentation,
        check_points=check_points,
    )


def relative_image_paths(images: list[dict[str, Any]], image_root: str | os.PathLike | None) -> None:
    """Rewrite, in place, each image's ``file_name`` relative to ``image_root`` where it lies under it.

    Detectron2's loaders give each image's full path (``image_root`` joined with the file's own
    name), while a COCO file's ``file_name`` is read relative to the image root it is registered
    with: written back unchanged, the root would be joined twice. Images outside ``image_root``, or
    all of them when it is None, get an absolute path.
    """
    prefix = os.path.join(os.path.abspath(image_root), "") if image_root is not None else None  # ends in /
    for img in images:
        path = os.path.abspath(img["file_name"])
        img["file_name"] = path[len(prefix) :] if prefix and path.startswith(prefix) else path


def integer_image_ids(coco: dict[str, Any]) -> None:
    """Renumber, in place, images whose ids are not integers to 1..N (in file order), and their
    annotations' ``image_id`` with them.

    Detectron2's Cityscapes loader names each image by its file name (``image_id`` is
    ``"aachen_000000_000019_leftImg8bit.png"``), which ``convert_to_coco_dict`` keeps as the COCO
    image id; COCO's ids are integers. Files whose ids are all integers are left as they are.
    """
    if all(_positive_int(img.get("id")) is not None for img in coco["images"]):
        return
    new_ids = {img["id"]: k for k, img in enumerate(coco["images"], start=1)}
    for img in coco["images"]:
        img["id"] = new_ids[img["id"]]
    for ann in coco["annotations"]:
        ann["image_id"] = new_ids[ann["image_id"]]
