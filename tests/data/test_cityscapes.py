"""point_sup's Cityscapes loader: Detectron2's dicts on the replica, masks that agree with the
instanceIds.png the evaluation reads, clear errors, and the builtin Cityscapes names re-registered
exactly where Detectron2's own loader cannot import cityscapesscripts (Detectron2 HEAD)."""

import inspect
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from PIL import Image
from pycocotools import mask as mask_util

pytest.importorskip("cityscapesscripts")
pytest.importorskip("shapely")

from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import id2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from replicas.cityscapes import INSTANCE_LABELS, SIDEWALK_ROWS

from point_sup import compat
from point_sup.data import cityscapes
from point_sup.data.cityscapes import (
    CITYSCAPES_INSTANCE_DATASETS,
    cityscapes_thing_labels,
    load_cityscapes_instances,
    register_cityscapes_fallback,
)

D2_USABLE = compat.detectron2_cityscapes_usable()
needs_d2 = pytest.mark.skipif(
    not D2_USABLE,
    reason=f"Detectron2's Cityscapes loader is unusable: {compat._detectron2_cityscapes_problem()}",
)
D2_HEAD = Path("/work/d2src")  # a Detectron2 HEAD checkout with a compiled _C (development machine only)
THING_NAMES = [label.name for label in cityscapes_thing_labels()]


def _split_dirs(replica: Path, split: str) -> tuple[str, str]:
    return str(replica / "leftImg8bit" / split), str(replica / "gtFine" / split)


def _instance_ids(record: dict) -> np.ndarray:
    """(H, W) int: the record's ``*_gtFine_instanceIds.png``, as cityscapesscripts' evaluation reads it."""
    image = Path(record["file_name"])
    city = image.parent.name
    gt = image.parents[3] / "gtFine" / image.parents[1].name / city
    prefix = image.name[: -len("leftImg8bit.png")]
    return np.asarray(Image.open(gt / f"{prefix}gtFine_instanceIds.png"), dtype=np.int64)


def _segments(instance_ids: np.ndarray) -> list[tuple[np.ndarray, str, bool]]:
    """(mask (H, W) bool, class name, is crowd) per evaluated instance and per crowd region of the PNG.

    cityscapesscripts' encoding: ``label_id * 1000 + k`` for the k-th instance of a class, the bare
    ``label_id`` for its crowd (``<class>group``) regions.
    """
    out = []
    for value in np.unique(instance_ids):
        crowd = value < 1000
        label = id2label[int(value) if crowd else int(value) // 1000]
        if label.name in THING_NAMES:
            out.append((instance_ids == value, label.name, bool(crowd)))
    return out


def _rasterize(annotation: dict, height: int, width: int) -> np.ndarray:
    rles = mask_util.frPyObjects(annotation["segmentation"], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels within one pixel (8-neighbourhood) of the mask's boundary, both sides."""
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    return cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("split", ["train", "val"])
@needs_d2
def test_same_dicts_as_detectron2(cityscapes_replica, split):
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances as d2_load

    ours = load_cityscapes_instances(*_split_dirs(cityscapes_replica, split))
    theirs = d2_load(*_split_dirs(cityscapes_replica, split), from_json=True, to_polygons=True)
    assert len(ours) == len(theirs) == {"train": 4, "val": 2}[split]
    # Exactly equal, polygon coordinates included (the same shapely operations in the same order),
    # with the same key order and types (bbox a tuple, iscrowd a bool).
    assert ours == theirs
    for record, expected in zip(ours, theirs, strict=True):
        assert list(record) == list(expected)
        for ann, expected_ann in zip(record["annotations"], expected["annotations"], strict=True):
            assert list(ann) == list(expected_ann)
            assert type(ann["bbox"]) is type(expected_ann["bbox"])
            assert type(ann["iscrowd"]) is type(expected_ann["iscrowd"])


def test_worker_processes_give_the_same_dicts_and_end(cityscapes_replica):
    dirs = _split_dirs(cityscapes_replica, "train")
    before = {p.pid for p in multiprocessing.active_children()}
    pooled = load_cityscapes_instances(*dirs, num_workers=2)
    assert {p.pid for p in multiprocessing.active_children()} <= before  # no worker left running
    assert pooled == load_cityscapes_instances(*dirs, num_workers=0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_masks_agree_with_instance_ids_png(cityscapes_replica, split):
    """Every evaluated instance and crowd region of instanceIds.png has one annotation of the same
    class and crowd flag, whose pycocotools mask differs from the PNG segment only in pixels on the
    segment's 1-px boundary band: mask IoU > 0.8 (median > 0.98), box IoU > 0.8 (median > 0.95).

    Not exactly equal: cityscapesscripts fills the pixels whose centres lie in or on the integer
    polygon (PIL's rule), while the loader describes that region by the polygon shifted by 0.5 and
    grown by 0.5 px (octagonal corners), which pycocotools rasterizes by its own rule; along slanted
    edges some boundary pixels come out differently. On the replica the median mask IoU is 0.99, the
    lowest (0.82) that of a 45-px nucleus, most of whose pixels are boundary; a box can differ by a
    few pixels where a 1-px strip is visible between occluders. (With only 0/45/90-degree edges,
    i.e. raw pixel contours, the masks come out identical.)

    Besides, floating-point residue of the polygon differences (exactly as in Detectron2's loader)
    leaves slivers of (almost) no area: parts under a pixel, and even an annotation of a hidden
    object that covers no pixel at all. They are ignored here (no pixel, or under 1 px² of area).
    """
    records = load_cityscapes_instances(*_split_dirs(cityscapes_replica, split))
    ious, box_ious = [], []
    for record in records:
        h, w = record["height"], record["width"]
        instance_ids = _instance_ids(record)
        assert instance_ids.shape == (h, w)
        masks = [_rasterize(a, h, w) for a in record["annotations"]]
        segments = _segments(instance_ids)
        visible = [i for i, m in enumerate(masks) if m.any()]
        assert len(segments) == len(visible)
        matched = set()
        for segment, name, crowd in segments:
            scores = [_iou(segment, m) for m in masks]
            best = int(np.argmax(scores))
            ann = record["annotations"][best]
            assert scores[best] > 0.8, (record["file_name"], name)
            assert not ((segment ^ masks[best]) & ~_boundary_band(segment)).any()
            assert THING_NAMES[ann["category_id"]] == name
            assert ann["iscrowd"] is crowd
            ys, xs = np.nonzero(segment)
            box_ious.append(_box_iou(ann["bbox"], (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
            matched.add(best)
            ious.append(scores[best])
        assert matched == set(visible)  # one to one
    assert np.median(ious) > 0.98
    assert min(box_ious) > 0.8 and np.median(box_ious) > 0.95


def _box_iou(a, b) -> float:
    """IoU of two XYXY boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_replica_exercises_the_drawing_order(cityscapes_replica):
    """The replica has what the comparisons above rely on (tests/replicas/cityscapes.py)."""
    records = {
        split: load_cityscapes_instances(*_split_dirs(cityscapes_replica, split))
        for split in ("train", "val")
    }
    for split_records in records.values():
        anns = [a for r in split_records for a in r["annotations"]]
        assert sum(a["iscrowd"] for a in anns) == 1  # the cargroup
        # The caravan (not evaluated) and the deleted truck are not annotated, the hidden rider at
        # most as a sliver without pixels (see test_masks_agree_with_instance_ids_png).
        assert {THING_NAMES[a["category_id"]] for a in anns} <= {*INSTANCE_LABELS, "rider"}
        for r in split_records:
            for a in r["annotations"]:
                if THING_NAMES[a["category_id"]] == "rider":
                    assert not _rasterize(a, r["height"], r["width"]).any()
        # Some instance is cut by the sidewalk band (stuff drawn over it), and some is cut in
        # pieces (by the shifted copy of its neighbour, or the sidewalk).
        bottoms = [a["bbox"][3] - r["height"] for r in split_records for a in r["annotations"]]
        assert np.isclose(bottoms, -SIDEWALK_ROWS).any()
        assert any(len(a["segmentation"]) > 1 for a in anns)
        for record in split_records:
            ids = _instance_ids(record)
            assert not (ids // 1000 == 25).any()  # the rider is entirely overwritten
            assert (ids == 7).any() and (ids == 8).any()  # road and sidewalk
    (second,) = [r for r in records["train"] if "_000001_" in r["image_id"]]
    assert (_instance_ids(second) // 1000 == 29).any()  # the caravan is drawn


def test_deleted_flag_is_read_as_cityscapesscripts_does(tmp_path):
    """``"deleted": 0`` is drawn by cityscapesscripts, so the loader keeps it (Detectron2 drops any
    object with a ``deleted`` key; the released gtFine files we know of have none); ``"deleted": 1``
    is left out."""
    image_dir, gt_dir = tmp_path / "leftImg8bit" / "val" / "lindau", tmp_path / "gtFine" / "val" / "lindau"
    image_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image_dir / "lindau_000000_000019_leftImg8bit.png")
    objects = [
        {"label": "car", "polygon": [[5, 5], [25, 5], [25, 30], [5, 30]], "deleted": 0},
        {"label": "person", "polygon": [[30, 5], [50, 5], [50, 30], [30, 30]], "deleted": 1},
    ]
    json_file = gt_dir / "lindau_000000_000019_gtFine_polygons.json"
    json_file.write_text(json.dumps({"imgHeight": 40, "imgWidth": 60, "objects": objects}))
    (record,) = load_cityscapes_instances(image_dir.parent, gt_dir.parent)
    (ann,) = record["annotations"]
    assert THING_NAMES[ann["category_id"]] == "car"
    annotation = Annotation()
    annotation.fromJsonFile(str(json_file))
    drawn = np.asarray(createInstanceImage(annotation, "ids"))
    assert (drawn == 26000).sum() == _rasterize(ann, 40, 60).sum() == 21 * 26
    assert not (drawn // 1000 == 24).any()


def _one_image_layout(cityscapes_replica: Path, root: Path) -> tuple[Path, Path, Path]:
    """A copy of the first validation image and its polygon file; returns (image dir, gt dir, json)."""
    image = next((cityscapes_replica / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    city = image.parent.name
    json_src = (
        cityscapes_replica
        / "gtFine"
        / "val"
        / city
        / image.name.replace("leftImg8bit.png", "gtFine_polygons.json")
    )
    (root / "leftImg8bit" / city).mkdir(parents=True)
    (root / "gtFine" / city).mkdir(parents=True)
    shutil.copy(image, root / "leftImg8bit" / city / image.name)
    json_file = root / "gtFine" / city / json_src.name
    shutil.copy(json_src, json_file)
    return root / "leftImg8bit", root / "gtFine", json_file


@pytest.mark.parametrize("label", ["spaceship", "spaceshipgroup"])
def test_unknown_label_names_file_and_label(cityscapes_replica, tmp_path, label):
    image_dir, gt_dir, json_file = _one_image_layout(cityscapes_replica, tmp_path)
    content = json.loads(json_file.read_text())
    content["objects"].append({"label": label, "polygon": [[0, 0], [9, 0], [9, 9]]})
    json_file.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re.escape(f"{json_file}: unknown Cityscapes label '{label}'")):
        load_cityscapes_instances(image_dir, gt_dir)


def test_missing_or_wrong_files_are_named(cityscapes_replica, tmp_path):
    image_dir, gt_dir, json_file = _one_image_layout(cityscapes_replica, tmp_path)
    nowhere = re.escape(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"image folder {nowhere} does not exist"):
        load_cityscapes_instances(tmp_path / "nowhere", gt_dir)
    with pytest.raises(FileNotFoundError, match=f"annotation folder {nowhere} does not exist"):
        load_cityscapes_instances(image_dir, tmp_path / "nowhere")
    content = json_file.read_text()
    json_file.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"{re.escape(str(json_file))}, the annotation of .* does not exist"
    ):
        load_cityscapes_instances(image_dir, gt_dir)
    json_file.write_text(content)
    stray = next(image_dir.glob("*")) / "notes.txt"
    stray.write_text("")
    with pytest.raises(ValueError, match=f"{re.escape(str(stray))} is not a Cityscapes image"):
        load_cityscapes_instances(image_dir, gt_dir)
    empty = tmp_path / "empty"
    (empty / "lindau").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No Cityscapes images in"):
        load_cityscapes_instances(empty, gt_dir)


def test_predicate_agrees_with_detectron2s_source():
    """True for the installed wheel (public ``cityscapesscripts``), False for HEAD (internal path)."""
    import detectron2.data.datasets.cityscapes as d2_cityscapes
    import detectron2.evaluation.cityscapes_evaluation as d2_evaluation

    internal = "deeplearning.projects.cityscapesApi" in (
        inspect.getsource(d2_cityscapes) + inspect.getsource(d2_evaluation)
    )
    assert compat.detectron2_cityscapes_usable() is (not internal)
    if "site-packages" in d2_cityscapes.__file__ and sys.prefix in d2_cityscapes.__file__:
        assert compat.detectron2_cityscapes_usable()  # the sal-detectron2 wheel of the venv


@pytest.mark.skipif(D2_USABLE, reason="Detectron2's Cityscapes loader is usable here")
def test_detectron2s_loader_fails_where_the_predicate_says(cityscapes_replica):
    from detectron2.data.datasets.cityscapes import _cityscapes_files_to_dict

    image = next((cityscapes_replica / "leftImg8bit" / "val").glob("*/*.png"))
    with pytest.raises(ModuleNotFoundError, match="deeplearning"):
        _cityscapes_files_to_dict((str(image), "", "", ""), from_json=True, to_polygons=True)


def test_builtin_names_use_point_sups_loader_only_where_needed():
    expected = _get_builtin_metadata("cityscapes")["thing_classes"]
    assert expected == THING_NAMES  # category_id indexes the metadata's thing_classes
    for name in CITYSCAPES_INSTANCE_DATASETS:
        entry = DatasetCatalog[name]
        assert isinstance(entry, cityscapes._FallbackLoader) is (not D2_USABLE)
        meta = MetadataCatalog.get(name)  # Detectron2's, in both cases
        assert meta.evaluator_type == "cityscapes_instance"
        assert meta.thing_classes == expected
        if not D2_USABLE:
            assert (entry.image_dir, entry.gt_dir) == (meta.image_dir, meta.gt_dir)
    before = {name: DatasetCatalog[name] for name in CITYSCAPES_INSTANCE_DATASETS}
    assert register_cityscapes_fallback() == []  # again: nothing to do
    assert {name: DatasetCatalog[name] for name in CITYSCAPES_INSTANCE_DATASETS} == before


_HEAD_SCRIPT = """
import json, logging
logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(message)s")
import point_sup
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.config import get_cfg
from point_sup import compat
from point_sup.evaluation import build_evaluator
train = DatasetCatalog.get("cityscapes_fine_instance_seg_train")
val = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
cfg = get_cfg()
evaluator = build_evaluator(cfg, "cityscapes_fine_instance_seg_val", output_folder="unused")
print("RESULT " + json.dumps({
    "usable": compat.detectron2_cityscapes_usable(),
    "train": train,
    "num_val": len(val),
    "gt_dir": MetadataCatalog.get("cityscapes_fine_instance_seg_val").gt_dir,
    "evaluator": type(evaluator).__module__ + "." + type(evaluator).__name__,
}))
"""


@pytest.mark.slow  # about 12 s: a fresh interpreter imports torch, Detectron2 and point_sup
@pytest.mark.skipif(
    not (D2_HEAD / "detectron2" / "__init__.py").exists(), reason=f"no Detectron2 HEAD at {D2_HEAD}"
)
def test_detectron2_head_loads_the_builtin_names_through_point_sup(cityscapes_replica, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(D2_HEAD),
        "DETECTRON2_DATASETS": str(cityscapes_replica.parent),
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _HEAD_SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["usable"] is False
    assert result["gt_dir"] == os.path.join(str(cityscapes_replica.parent), "cityscapes/gtFine/val/")
    assert result["evaluator"] == "point_sup.evaluation.cityscapes.CityscapesInstanceEvaluator"
    assert result["num_val"] == 2
    # The same dicts as the loader called directly (through JSON: tuples become lists).
    direct = load_cityscapes_instances(*_split_dirs(cityscapes_replica, "train"))
    assert [Path(r["file_name"]) for r in result["train"]] == [Path(r["file_name"]) for r in direct]
    for record in direct:
        record["file_name"] = None
    for record in result["train"]:
        record["file_name"] = None
    assert result["train"] == json.loads(json.dumps(direct))
    why = [
        x for x in proc.stderr.splitlines() if "LOG point_sup.data.cityscapes Cityscapes is loaded by" in x
    ]
    assert len(why) == 1 and "No module named 'deeplearning'" in why[0]  # logged once, for two loads
    print(f"subprocess on Detectron2 HEAD: {time.monotonic() - start:.1f} s")
