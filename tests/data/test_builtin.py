"""Builtin P10 datasets: names, pairing with the mask-annotated validation sets, class metadata
identical to the mask-supervised datasets, lazy registration, and loading from $DETECTRON2_DATASETS."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from point_sup.data import POINT_SUP_DATASET_PAIRS, builtin, register_all_point_sup, register_nuclei
from point_sup.data.nuclei import build_nuclei_coco

P10 = {
    "coco_2017_train_p10": "coco_2017_train",
    "lvis_v1_train_p10": "lvis_v1_train",
    "cityscapes_fine_instance_seg_train_p10": "cityscapes_fine_instance_seg_train",
    "voc_2012_train_instance_p10": "voc_2012_train_instance",
}
OURS = [*P10, "voc_2012_train_instance", "voc_2012_val_instance"]


def test_pairs():
    assert POINT_SUP_DATASET_PAIRS == {
        "coco_2017_train_p10": "coco_2017_val",
        "lvis_v1_train_p10": "lvis_v1_val",
        "cityscapes_fine_instance_seg_train_p10": "cityscapes_fine_instance_seg_val",
        "voc_2012_train_instance_p10": "voc_2012_val_instance",
    }
    registered = set(DatasetCatalog.list())
    assert set(POINT_SUP_DATASET_PAIRS) | set(POINT_SUP_DATASET_PAIRS.values()) <= registered
    for train, val in POINT_SUP_DATASET_PAIRS.items():
        assert MetadataCatalog.get(train).paired_val_dataset == val


@pytest.mark.parametrize("name", list(P10))
def test_class_metadata_matches_the_mask_supervised_dataset(name):
    meta, mask_meta, val_meta = (
        MetadataCatalog.get(name),
        MetadataCatalog.get(P10[name]),
        MetadataCatalog.get(POINT_SUP_DATASET_PAIRS[name]),
    )
    assert meta.point_supervision is True
    assert meta.evaluator_type == ("lvis" if name.startswith("lvis") else "coco")
    assert list(meta.thing_classes) == list(mask_meta.thing_classes) == list(val_meta.thing_classes)
    for key in ("thing_colors", "thing_dataset_id_to_contiguous_id"):
        if hasattr(mask_meta, key):
            assert getattr(meta, key) == getattr(mask_meta, key)
    assert "without_masks" in meta.json_file
    # The mask-supervised datasets are not point-supervised: the start-up checks rely on the marker.
    assert not getattr(mask_meta, "point_supervision", False)


def test_class_counts_and_default_root():
    counts = {name: len(MetadataCatalog.get(name).thing_classes) for name in P10}
    assert counts == {
        "coco_2017_train_p10": 80,
        "lvis_v1_train_p10": 1203,
        "cityscapes_fine_instance_seg_train_p10": 8,
        "voc_2012_train_instance_p10": 20,
    }
    assert MetadataCatalog.get("voc_2012_val_instance").thing_classes == list(VOC_CLASS_NAMES)
    meta = MetadataCatalog.get("coco_2017_train_p10")
    assert meta.json_file.endswith("coco/annotations/instances_train2017_n10_v0_without_masks.json")
    assert meta.image_root.endswith("coco/train2017")
    assert MetadataCatalog.get("cityscapes_fine_instance_seg_train_p10").image_root.endswith(
        "cityscapes/leftImg8bit/train"
    )


def test_importing_again_is_harmless():
    before = {name: DatasetCatalog[name] for name in OURS}
    importlib.reload(builtin)
    assert {name: DatasetCatalog[name] for name in OURS} == before


@pytest.fixture
def builtin_root(tmp_path):
    """Our builtin datasets re-registered under ``tmp_path``; the import-time registrations come back
    afterwards."""
    saved = {name: (DatasetCatalog.pop(name), MetadataCatalog.pop(name)) for name in OURS}
    try:
        register_all_point_sup(tmp_path / "datasets")
        yield tmp_path / "datasets"
    finally:
        for name, (loader, meta) in saved.items():
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)
            DatasetCatalog.register(name, loader)
            MetadataCatalog[name] = meta


def test_registration_reads_nothing(builtin_root):
    assert not builtin_root.exists()
    assert MetadataCatalog.get("voc_2012_train_instance_p10").json_file == str(
        builtin_root / "voc_2012_instance/annotations/voc_2012_train_instance_n10_v0_without_masks.json"
    )
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get("voc_2012_train_instance_p10")


def _write_dataset(nuclei, json_path, image_dir, categories, category_id, with_points):
    """Two real nuclei tiles as a dataset of some other class list (every nucleus of class
    ``category_id``), with P_N points or masks."""
    data = json.loads(nuclei["train"].read_text())
    image_dir.mkdir(parents=True, exist_ok=True)
    data["images"] = data["images"][:2]
    for img in data["images"]:
        shutil.copy(nuclei["image_root"] / img["file_name"], image_dir / img["file_name"])
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (1, 2)]
    for a in data["annotations"]:
        a["category_id"] = category_id
        if with_points:
            x, y, w, h = a["bbox"]
            a["point_coords"] = [[x, y], [x + w - 1, y + h - 1]]
            a["point_labels"] = [0, 1]
            del a["segmentation"]
    data["categories"] = categories
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    return build_nuclei_coco(tmp_path_factory.mktemp("nuclei"))


def test_voc_p10_and_masks_load(builtin_root, nuclei):
    voc = builtin_root / "voc_2012_instance"
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASS_NAMES)]
    person = VOC_CLASS_NAMES.index("person") + 1
    data = _write_dataset(
        nuclei,
        voc / "annotations/voc_2012_train_instance_n10_v0_without_masks.json",
        voc / "JPEGImages",
        cats,
        person,
        True,
    )
    _write_dataset(
        nuclei, voc / "annotations/voc_2012_val_instance.json", voc / "JPEGImages", cats, person, False
    )
    dicts = DatasetCatalog.get("voc_2012_train_instance_p10")
    annos = [a for r in dicts for a in r["annotations"]]
    assert len(annos) == len(data["annotations"]) and {a["category_id"] for a in annos} == {person - 1}
    first = data["annotations"][0]
    np.testing.assert_array_equal(annos[0]["point_coords"], np.asarray(first["point_coords"]) + 0.5)
    assert dicts[0]["file_name"] == str(voc / "JPEGImages" / data["images"][0]["file_name"])
    val = DatasetCatalog.get("voc_2012_val_instance")
    assert all("segmentation" in a and "point_coords" not in a for r in val for a in r["annotations"])


def test_coco_p10_maps_category_ids_like_coco(builtin_root, nuclei):
    meta = MetadataCatalog.get("coco_2017_train_p10")
    id_map = meta.thing_dataset_id_to_contiguous_id
    cats = [{"id": i, "name": meta.thing_classes[c]} for i, c in sorted(id_map.items())]
    coco = builtin_root / "coco"
    _write_dataset(
        nuclei,
        coco / "annotations/instances_train2017_n10_v0_without_masks.json",
        coco / "train2017",
        cats,
        90,  # toothbrush: COCO's ids have gaps, it is the 80th class
        True,
    )
    dicts = DatasetCatalog.get("coco_2017_train_p10")
    assert {a["category_id"] for r in dicts for a in r["annotations"]} == {79}
    assert meta.thing_classes[79] == "toothbrush"


def test_coco_p10_made_from_another_dataset_fails(builtin_root, nuclei):
    coco = builtin_root / "coco"
    _write_dataset(
        nuclei,
        coco / "annotations/instances_train2017_n10_v0_without_masks.json",
        coco / "train2017",
        [{"id": 1, "name": "nucleus"}],
        1,
        True,
    )
    with pytest.raises(ValueError, match=r"instances_train2017_n10_v0_without_masks.json: its categories"):
        DatasetCatalog.get("coco_2017_train_p10")


def test_register_nuclei(tmp_path):
    paths = register_nuclei(tmp_path / "a")
    train, val = DatasetCatalog.get("nuclei_train"), DatasetCatalog.get("nuclei_val")
    assert (len(train), len(val)) == (4, 2)
    assert all("segmentation" in a for r in train + val for a in r["annotations"])
    assert MetadataCatalog.get("nuclei_val").thing_classes == ["nucleus"]
    assert MetadataCatalog.get("nuclei_train").json_file == str(paths["train"])
    register_nuclei(tmp_path / "b")  # again, elsewhere: replaces the registration
    assert MetadataCatalog.get("nuclei_train").json_file == str(tmp_path / "b/annotations/nuclei_train.json")
    assert DatasetCatalog.get("nuclei_train")[0]["file_name"].startswith(str(tmp_path / "b"))


def _lvis_p10(nuclei, path, num_categories, category_id):
    """Two nuclei tiles as an LVIS-format P10 file: images named by coco_url only, no masks."""
    data = json.loads(nuclei["train"].read_text())
    data["images"] = [
        {k: v for k, v in img.items() if k != "file_name"}
        | {"coco_url": f"http://images.cocodataset.org/train2017/{img['file_name']}", "neg_category_ids": [3]}
        for img in data["images"][:2]
    ]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (1, 2)]
    for a in data["annotations"]:
        x, y, w, _ = a["bbox"]
        a.update(category_id=category_id, point_coords=[[x, y], [x + w - 1, y]], point_labels=[0, 1])
        del a["segmentation"], a["iscrowd"]
    data["categories"] = [{"id": i + 1, "name": f"c{i}"} for i in range(num_categories)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def test_lvis_p10_loads_lvis_format(builtin_root, nuclei):
    data = _lvis_p10(nuclei, builtin_root / "lvis/lvis_v1_train_n10_v0_without_masks.json", 1203, 1203)
    dicts = DatasetCatalog.get("lvis_v1_train_p10")
    assert [r["file_name"] for r in dicts] == [
        str(builtin_root / "coco/train2017/train_0.png"),
        str(builtin_root / "coco/train2017/train_1.png"),
    ]
    assert dicts[0]["neg_category_ids"] == [3] and dicts[0]["not_exhaustive_category_ids"] == []
    annos = [a for r in dicts for a in r["annotations"]]
    assert len(annos) == len(data["annotations"]) and {a["category_id"] for a in annos} == {1202}
    x, y, w, _ = data["annotations"][0]["bbox"]
    np.testing.assert_array_equal(annos[0]["point_coords"], [[x + 0.5, y + 0.5], [x + w - 0.5, y + 0.5]])
    # The class names stay Detectron2's LVIS v1 names.
    assert (
        MetadataCatalog.get("lvis_v1_train_p10").thing_classes
        == MetadataCatalog.get("lvis_v1_train").thing_classes
    )


def test_lvis_p10_made_from_another_dataset_fails(builtin_root, nuclei):
    _lvis_p10(nuclei, builtin_root / "lvis/lvis_v1_train_n10_v0_without_masks.json", 80, 1)
    with pytest.raises(ValueError, match=r"lvis_v1_train_n10_v0_without_masks.json: its categories \(80\)"):
        DatasetCatalog.get("lvis_v1_train_p10")


COCO_ANN, VOC_ANN = "coco/annotations", "voc_2012_instance/annotations"


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("coco_2017_train_p10", f"{COCO_ANN}/instances_train2017_n10_v0_without_masks.json"),
        ("coco_2017_train_p10_v0", f"{COCO_ANN}/instances_train2017_n10_v0_without_masks.json"),
        ("coco_2017_train_p20_v3", f"{COCO_ANN}/instances_train2017_n20_v3_without_masks.json"),
        ("coco_2017_train_p10_random5", f"{COCO_ANN}/instances_train2017_n10_v0_random5_without_masks.json"),
        ("coco_2017_train_p1_v2_boundary5",
         f"{COCO_ANN}/instances_train2017_n1_v2_boundary5_without_masks.json"),
        # Detectron2 PointSup's own name for its first version of P10
        ("coco_2017_train_points_n10_v1_without_masks",
         f"{COCO_ANN}/instances_train2017_n10_v1_without_masks.json"),
        ("lvis_v1_train_p50", "lvis/lvis_v1_train_n50_v0_without_masks.json"),
        ("cityscapes_fine_instance_seg_train_p3_v4",
         "cityscapes/cityscapes_fine_instance_seg_train_n3_v4_without_masks.json"),
        ("voc_2012_train_instance_p5", f"{VOC_ANN}/voc_2012_train_instance_n5_v0_without_masks.json"),
        ("coco_2017_train_p0", None),
        ("coco_2017_train", None),
        ("coco_2017_train_p10_V1", None),
        ("my_dataset_p10", None),
    ],
)  # fmt: skip
def test_point_dataset_names_resolve_to_the_simulators_files(name, file):
    found = builtin.point_dataset_file(name)
    assert (found[1] if found else None) == file


def test_scheme_names_register_on_demand_and_name_a_missing_file(builtin_root):
    name = "coco_2017_train_p20_v3"
    assert name not in DatasetCatalog
    try:
        assert builtin.register_point_datasets(
            [name, "coco_2017_val", "not_a_scheme_name"], builtin_root
        ) == [name]
        meta = MetadataCatalog.get(name)
        assert meta.paired_val_dataset == "coco_2017_val" and meta.point_supervision is True
        assert list(meta.thing_classes) == list(MetadataCatalog.get("coco_2017_train").thing_classes)
        expected = builtin_root / "coco/annotations/instances_train2017_n20_v3_without_masks.json"
        with pytest.raises(FileNotFoundError, match=rf"'{name}'.*{expected}.*prepare_point_annotations"):
            DatasetCatalog.get(name)
        assert builtin.register_point_datasets([name], builtin_root) == []  # already there
    finally:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


def test_files_of_the_scheme_are_registered_at_import(tmp_path):
    """A fresh `import point_sup` registers every P_N file of the scheme under $DETECTRON2_DATASETS:
    the names need no Python, and other files in the folders are left alone."""
    ann = tmp_path / "coco" / "annotations"
    ann.mkdir(parents=True)
    for f in (
        "instances_train2017_n20_v0_without_masks.json",
        "instances_train2017_n10_v4_without_masks.json",
        "instances_train2017_n10_v0_boundary5_without_masks.json",
        "instances_train2017.json",
        "instances_val2017_n10_v0_without_masks.json",  # another stem: not a training set of the scheme
    ):
        (ann / f).write_text("{}")
    (tmp_path / "voc_2012_instance" / "annotations").mkdir(parents=True)
    (tmp_path / "voc_2012_instance/annotations/voc_2012_train_instance_n3_v1_without_masks.json").write_text(
        "{}"
    )
    code = (
        "import point_sup; from detectron2.data import DatasetCatalog, MetadataCatalog; "
        "from point_sup.data.builtin import point_dataset_file; "
        "names = sorted(n for n in DatasetCatalog.list() if point_dataset_file(n)); "
        "print(names); print(MetadataCatalog.get('coco_2017_train_p10_v4').json_file)"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names, json_file = proc.stdout.strip().splitlines()[-2:]
    assert eval(names) == sorted(
        [
            *POINT_SUP_DATASET_PAIRS,
            "coco_2017_train_p20",
            "coco_2017_train_p10_v4",
            "coco_2017_train_p10_boundary5",
            "voc_2012_train_instance_p3_v1",
        ]
    )
    assert json_file == str(ann / "instances_train2017_n10_v4_without_masks.json")
