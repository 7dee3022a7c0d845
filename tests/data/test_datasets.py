"""Loading and registering P_N files: pixel indices become continuous pixel centres, bad files fail
with the file, image id and annotation id in the message."""

import json
import logging
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

import point_sup
from point_sup.data.datasets import convert_point_annotations, load_coco_json_with_points
from point_sup.data.nuclei import build_nuclei_coco


@pytest.fixture(scope="module")
def nuclei_paths(tmp_path_factory):
    return build_nuclei_coco(tmp_path_factory.mktemp("nuclei"))


def _with_points(paths, tmp_path, keep_masks=False, edit=None):
    """The nuclei val split as a P_N file: 4 + (k % 5) integer pixels inside each box, labelled from
    the real mask. ``edit(data)`` may corrupt it."""
    coco = COCO(str(paths["val"]))
    data = json.loads(paths["val"].read_text())
    rng = np.random.default_rng(0)
    for k, ann in enumerate(data["annotations"]):
        x, y, w, h = ann["bbox"]
        n = 4 + k % 5
        xs, ys = rng.integers(x, x + w, n), rng.integers(y, y + h, n)
        ann["point_coords"] = [[int(a), int(b)] for a, b in zip(xs, ys, strict=True)]
        ann["point_labels"] = [int(v) for v in coco.annToMask(ann)[ys, xs]]
        if not keep_masks:
            del ann["segmentation"]
    if edit is not None:
        edit(data)
    out = tmp_path / f"points_{uuid.uuid4().hex[:6]}.json"
    out.write_text(json.dumps(data))
    return out, data


@pytest.fixture
def fresh_name():
    """A dataset name unregistered afterwards."""
    name = f"test_points_{uuid.uuid4().hex[:8]}"
    yield name
    DatasetCatalog.pop(name, None)
    MetadataCatalog.pop(name, None)


def test_points_become_pixel_centres(nuclei_paths, tmp_path):
    json_file, data = _with_points(nuclei_paths, tmp_path, keep_masks=True)
    dicts = load_coco_json_with_points(json_file, nuclei_paths["image_root"])
    by_id = {a["id"]: a for a in data["annotations"]}
    n = 0
    for record in dicts:
        for anno in record["annotations"]:
            raw = by_id[anno["id"]]
            assert anno["point_coords"].dtype == np.float32 and anno["point_coords"].shape == (
                len(raw["point_coords"]),
                2,
            )
            np.testing.assert_array_equal(anno["point_coords"], np.asarray(raw["point_coords"]) + 0.5)
            np.testing.assert_array_equal(anno["point_labels"], raw["point_labels"])
            assert "segmentation" in anno
            n += 1
    assert n == len(data["annotations"]) > 10


def test_register_is_lazy_and_sets_metadata(nuclei_paths, tmp_path, fresh_name):
    missing = tmp_path / "not_yet_written.json"
    point_sup.register_coco_instances_with_points(
        fresh_name, {"paired_val_dataset": "nuclei_val"}, missing, tmp_path
    )
    meta = MetadataCatalog.get(fresh_name)
    assert meta.json_file == str(missing) and meta.image_root == str(tmp_path)
    assert meta.evaluator_type == "coco" and meta.point_supervision is True
    assert meta.paired_val_dataset == "nuclei_val"
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get(fresh_name)
    json_file, _ = _with_points(nuclei_paths, tmp_path)
    missing.write_text(json_file.read_text())
    dicts = DatasetCatalog.get(fresh_name)
    assert len(dicts) == 2 and all("segmentation" not in a for r in dicts for a in r["annotations"])
    assert all(a["category_id"] == 0 for r in dicts for a in r["annotations"])
    assert meta.thing_classes == ["nucleus"] and meta.thing_dataset_id_to_contiguous_id == {1: 0}


def test_register_checks_arguments(fresh_name):
    with pytest.raises(TypeError, match="json_file"):
        point_sup.register_coco_instances_with_points(fresh_name, {}, 3, "images")
    with pytest.raises(TypeError, match="metadata"):
        point_sup.register_coco_instances_with_points(fresh_name, None, "a.json", "images")


def test_metadata_entries_win(fresh_name):
    point_sup.register_coco_instances_with_points(fresh_name, {"evaluator_type": "lvis"}, "a.json", "images")
    assert MetadataCatalog.get(fresh_name).evaluator_type == "lvis"


def test_categories_must_match_the_registered_classes(nuclei_paths, tmp_path, fresh_name):
    json_file, _ = _with_points(nuclei_paths, tmp_path)
    point_sup.register_coco_instances_with_points(
        fresh_name, {"thing_classes": ["nucleus", "cytoplasm"]}, json_file, nuclei_paths["image_root"]
    )
    with pytest.raises(ValueError, match=rf"{json_file.name}: its categories .*'{fresh_name}'"):
        DatasetCatalog.get(fresh_name)


def test_category_names_may_differ(nuclei_paths, tmp_path, fresh_name, caplog):
    json_file, _ = _with_points(nuclei_paths, tmp_path)
    point_sup.register_coco_instances_with_points(
        fresh_name, {"thing_classes": ["cell"]}, json_file, nuclei_paths["image_root"]
    )
    with caplog.at_level(logging.INFO, logger="point_sup.data.datasets"):
        assert len(DatasetCatalog.get(fresh_name)) == 2
    assert MetadataCatalog.get(fresh_name).thing_classes == ["cell"]
    assert "('cell', 'nucleus')" in caplog.text


_COORDS4 = [[10, 12], [11, 12], [11, 13], [12, 12]]
_LABELS4 = [1, 0, 1, 1]


def _set(which=3, **fields):
    """Give annotation ``which`` four valid points, then overwrite ``fields``."""

    def edit(data):
        data["annotations"][which].update({"point_coords": _COORDS4, "point_labels": _LABELS4, **fields})

    return edit


def _drop(field, which=3):
    def edit(data):
        del data["annotations"][which][field]

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop("point_labels"), "has point annotations but no 'point_labels'"),
        (_drop("point_coords"), "has point annotations but no 'point_coords'"),
        (_set(point_labels=[1, 0, 1]), "4 point_coords but 3 point_labels"),
        (
            _set(point_labels=[1, 0, 2, 1]),
            r"point_labels must be 0 \(background\) or 1 \(object\), got \[2.0\]",
        ),
        (_set(point_coords=[[1, 2], [3], [4, 5], [6, 7]]), r"point_coords must be a list of \[x, y\]"),
        (_set(point_coords=3), r"point_coords must be a list of \[x, y\], got shape \(\)"),
        (_set(point_coords=[[1, 2, 3]] * 4), r"point_coords must be a list of \[x, y\], got shape \(4, 3\)"),
        (
            _set(point_coords=[[10, 12], [10.5, 12], [11, 12], [11, 13]]),
            r"point_coords must be integer pixel indices .*\[10.5 12. \]",
        ),
        (
            _set(point_coords=[[10, 12], [256, 12], [11, 12], [11, 13]]),
            r"point \[256, 12\] lies outside the 256x128",
        ),
        (_set(point_coords=[[10, 12], [-1, 12], [11, 12], [11, 13]]), r"point \[-1, 12\] lies outside"),
        (_set(point_coords=[[10, 128], [1, 12], [11, 12], [11, 13]]), r"point \[10, 128\] lies outside"),
    ],
)
def test_bad_point_annotations_name_file_image_and_annotation(nuclei_paths, tmp_path, edit, message):
    json_file, data = _with_points(nuclei_paths, tmp_path, edit=edit)
    ann = data["annotations"][3]
    where = rf"{json_file}: image id {ann['image_id']}, annotation id {ann['id']}: "
    with pytest.raises(ValueError, match=where + message):
        load_coco_json_with_points(json_file, nuclei_paths["image_root"])


def test_nan_coordinates_fail():
    record = {
        "image_id": 7,
        "height": 10,
        "width": 10,
        "annotations": [{"id": 70, "point_coords": [[1, float("nan")]], "point_labels": [1]}],
    }
    with pytest.raises(
        ValueError, match="src: image id 7, annotation id 70: point_coords are not all finite"
    ):
        convert_point_annotations([record], "src")


def test_annotations_without_points_are_left_alone():
    record = {
        "image_id": 1,
        "height": 4,
        "width": 4,
        "annotations": [{"id": 1, "bbox": [0, 0, 2, 2]}, {"id": 2, "point_coords": [], "point_labels": []}],
    }
    convert_point_annotations([record], "src")
    assert "point_coords" not in record["annotations"][0]
    assert record["annotations"][1]["point_coords"].shape == (0, 2)
    assert record["annotations"][1]["point_labels"].shape == (0,)


def test_file_without_points_loads_unchanged(tmp_path):
    """A mask-only COCO file registered with the point loader loads as Detectron2's loader would."""
    from detectron2.data.datasets import load_coco_json

    from point_sup.data.datasets import load_coco_json_with_points
    from point_sup.data.nuclei import build_nuclei_coco

    paths = build_nuclei_coco(tmp_path)
    ours = load_coco_json_with_points(str(paths["val"]), str(paths["image_root"]))
    ref = load_coco_json(str(paths["val"]), str(paths["image_root"]))
    assert len(ours) == len(ref) and sum(len(r["annotations"]) for r in ours) > 0
    for a, b in zip(ours, ref, strict=True):
        assert [x["bbox"] for x in a["annotations"]] == [x["bbox"] for x in b["annotations"]]
        assert all("point_coords" not in x for x in a["annotations"])
