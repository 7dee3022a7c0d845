"""The P_N simulation command line: real data end to end, determinism, bad input, no partial output."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "prepare_point_annotations", ROOT / "tools/prepare_point_annotations.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    from point_sup.data.nuclei import build_nuclei_coco

    return build_nuclei_coco(tmp_path_factory.mktemp("nuclei"))


def test_nuclei_end_to_end(nuclei, tmp_path):
    out = tmp_path / "p10.json"
    assert (
        tool.main([str(nuclei["train"]), str(out), "--num-points", "10", "--seed", "0", "--no-progress"]) == 0
    )
    src = json.loads(Path(nuclei["train"]).read_text())
    res = json.loads(out.read_text())
    assert (
        res["images"] == src["images"]
        and res["categories"] == src["categories"]
        and res["info"] == src["info"]
    )
    coco = COCO(str(nuclei["train"]))
    assert len(res["annotations"]) == len(src["annotations"]) == 100
    fg = 0
    for ann, orig in zip(res["annotations"], src["annotations"], strict=True):
        assert "segmentation" not in ann
        assert {k: v for k, v in ann.items() if not k.startswith("point_")} == {
            k: v for k, v in orig.items() if k != "segmentation"
        }
        pts = np.array(ann["point_coords"])
        assert pts.shape == (10, 2) and pts.dtype.kind == "i"
        x, y, w, h = ann["bbox"]
        assert (
            (pts[:, 0] >= x).all()
            and (pts[:, 0] < x + w).all()
            and (pts[:, 1] >= y).all()
            and (pts[:, 1] < y + h).all()
        )
        mask = coco.annToMask(orig)
        assert ann["point_labels"] == mask[pts[:, 1], pts[:, 0]].tolist()
        fg += sum(ann["point_labels"])
    assert 0.4 < fg / 1000 < 0.95  # nuclei fill most of their boxes


@pytest.fixture(autouse=True)
def tool_logs_reach_caplog(caplog):
    """The tool sets up Detectron2's logger for "point_sup", which does not propagate to the root
    logger where caplog listens: caplog listens on "point_sup" itself."""
    log = logging.getLogger("point_sup")
    log.addHandler(caplog.handler)
    yield
    log.removeHandler(caplog.handler)


@pytest.fixture
def small_shards(monkeypatch):
    """Files of any size are parsed in shards with --workers > 1 (point_sup_labels.sharded)."""
    from point_sup_labels import sharded as sharded_simulation

    monkeypatch.setattr(sharded_simulation, "MIN_SHARD_BYTES", 1)


SHARDS_REFUSED = "instead of in shards"


def test_byte_identical_across_workers_and_versions(nuclei, tmp_path, small_shards, caplog):
    common = [
        str(nuclei["train"]),
        "--seed",
        "3",
        "--noise-rate",
        "0.05",
        "--noise-mode",
        "boundary",
        "--no-progress",
    ]
    assert tool.main([*common[:1], str(tmp_path / "w1.json"), *common[1:], "--workers", "1"]) == 0
    assert tool.main([*common[:1], str(tmp_path / "w2.json"), *common[1:], "--workers", "2"]) == 0
    assert (tmp_path / "w1.json").read_bytes() == (tmp_path / "w2.json").read_bytes()
    assert SHARDS_REFUSED not in caplog.text  # --workers 2 parsed the file in two shards
    out = str(tmp_path / "v.json")
    assert tool.main([*common[:1], out, *common[1:], "--num-versions", "3", "--workers", "2"]) == 0
    assert (tmp_path / "v_v0.json").read_bytes() == (tmp_path / "w1.json").read_bytes()
    v1 = json.loads((tmp_path / "v_v1.json").read_text())["annotations"]
    v0 = json.loads((tmp_path / "v_v0.json").read_text())["annotations"]
    assert [a["point_coords"] for a in v0] != [a["point_coords"] for a in v1]
    named = str(tmp_path / "p10_seed{version}.json")
    assert tool.main([str(nuclei["train"]), named, "--num-versions", "2", "--no-progress"]) == 0
    assert (tmp_path / "p10_seed1.json").exists()


def test_keep_masks_and_noise(nuclei, tmp_path):
    clean, noisy = tmp_path / "clean.json", tmp_path / "noisy.json"
    assert tool.main([str(nuclei["val"]), str(clean), "--keep-masks", "--no-progress"]) == 0
    assert tool.main([str(nuclei["val"]), str(noisy), "--noise-rate", "0.1", "--no-progress"]) == 0
    a = json.loads(clean.read_text())["annotations"]
    b = json.loads(noisy.read_text())["annotations"]
    assert all("segmentation" in x for x in a)
    flips = sum(
        p != q
        for x, y in zip(a, b, strict=True)
        for p, q in zip(x["point_labels"], y["point_labels"], strict=True)
    )
    assert flips == round(0.1 * 10 * len(a))


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def small_dataset():
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 10, 10],
                "segmentation": [[2, 2, 12, 2, 12, 12]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "bbox": [-5, 20, 20, 20],
                "segmentation": [[0, 20, 15, 20, 0, 30]],
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 1,
                "bbox": [5, 5, 0, 3],
                "segmentation": [[5, 5, 6, 5, 5, 8]],
            },
        ],
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (None, "not valid JSON"),
        (lambda d: d["annotations"][1].pop("bbox"), "annotation id=11, image id=1: no 'bbox'"),
        (lambda d: d["annotations"][0].update(image_id=5), "annotation id=10: unknown image_id 5"),
        (
            lambda d: d["annotations"][0].update(category_id=9),
            "annotation id=10, image id=1: unknown category_id 9",
        ),
        (lambda d: d["images"][0].update(height=-30), "image id=1: image height"),
        (lambda d: d["annotations"][2].update(bbox=[1, 1, -2, 3]), "annotation id=12.*negative"),
        (lambda d: d["annotations"][2].update(bbox=[1, 1, float("inf"), 3]), "annotation id=12.*non-finite"),
        (
            lambda d: d["annotations"][1].update(segmentation={"counts": 3}),
            "annotation id=11.*unknown segmentation",
        ),
        (
            lambda d: d["annotations"][1]["segmentation"][0].__setitem__(2, None),
            "annotation id=11.*finite numbers",
        ),
        (
            lambda d: d["annotations"][1].update(segmentation={"size": [30, 40], "counts": "0\\"}),
            "annotation id=11.*RLE",
        ),
    ],
)
def test_bad_input_fails_clearly_without_output(tmp_path, caplog, mutate, message, small_shards):
    out = tmp_path / "out.json"
    if mutate is None:
        src = tmp_path / "in.json"
        src.write_text('{"images": [], "annotations": [')
    else:
        data = small_dataset()
        mutate(data)
        src = write(tmp_path / "in.json", data)
    for workers in ("1", "2"):
        caplog.clear()
        assert tool.main([str(src), str(out), "--workers", workers, "--no-progress"]) == 1
        assert message.split(".*")[0] in caplog.text
        assert (SHARDS_REFUSED in caplog.text) == (workers == "2")  # reported by the whole-file path
        assert sorted(os.listdir(tmp_path)) == ["in.json"]  # no output, no temporary file
    for v in range(2):
        assert not (tmp_path / f"out_v{v}.json").exists()


def test_summary_counts_clipped_and_zero_area(tmp_path, caplog):
    out = tmp_path / "out.json"
    assert tool.main([write(tmp_path / "in.json", small_dataset()), str(out), "--no-progress"]) == 0
    assert "1 boxes clipped to the image; 1 zero-area boxes without points" in caplog.text
    assert "annotation time for 2 objects" in caplog.text and "P10" in caplog.text
    anns = json.loads(out.read_text())["annotations"]
    assert anns[2]["point_coords"] == [] and anns[2]["point_labels"] == []
    assert all(0 <= x < 15 and 20 <= y < 30 for x, y in anns[1]["point_coords"])


def test_detectron2_catalog_dataset(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    name = "point_sup_test_catalog_dataset"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name,
            lambda: [
                {
                    "file_name": "a.png",
                    "image_id": 3,
                    "height": 30,
                    "width": 40,
                    "annotations": [
                        {
                            "bbox": [2, 2, 12, 12],
                            "bbox_mode": BoxMode.XYXY_ABS,
                            "category_id": 0,
                            "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
                            "iscrowd": 0,
                        }
                    ],
                }
            ],
        )
        MetadataCatalog.get(name).thing_classes = ["square"]
    out = tmp_path / "out.json"
    assert tool.main(["--dataset", name, str(out), "--no-progress"]) == 0
    ann = json.loads(out.read_text())["annotations"][0]
    assert ann["bbox"] == [2, 2, 10, 10] and ann["point_labels"] == [1] * 10
    assert tool.main(["--dataset", "no_such_dataset", str(out), "--no-progress"]) == 1


@pytest.mark.parametrize("root_key", ["image_root", "image_dir", None])
def test_catalog_file_names_are_relative_to_the_image_directory(tmp_path, monkeypatch, caplog, root_key):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    monkeypatch.chdir(tmp_path)
    # As Detectron2's Cityscapes loader gives them: paths under image_dir, relative to the cwd.
    inside = "datasets/city/leftImg8bit/train/aachen/a.png"
    outside = str(tmp_path / "elsewhere" / "b.png")
    square = {"bbox": [2, 2, 12, 12], "bbox_mode": 0, "category_id": 0, "iscrowd": 0,
              "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}  # fmt: skip
    name = f"point_sup_test_file_names_{root_key}"
    DatasetCatalog.register(
        name,
        lambda: [
            {"file_name": f, "image_id": k, "height": 30, "width": 40, "annotations": [dict(square)]}
            for k, f in enumerate([inside, outside, "./datasets/city/leftImg8bitX/c.png"])
        ],
    )
    meta = MetadataCatalog.get(name)
    meta.thing_classes = ["square"]
    if root_key is not None:
        meta.set(**{root_key: "datasets/city/leftImg8bit/"})
    try:
        out = tmp_path / "out.json"
        assert tool.main(["--dataset", name, str(out), "--no-progress"]) == 0
        names = [img["file_name"] for img in json.loads(out.read_text())["images"]]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    absolute = [str(tmp_path / inside), outside, str(tmp_path / "datasets/city/leftImg8bitX/c.png")]
    if root_key is None:
        assert names == absolute and "names no image_root" in caplog.text
    else:
        assert names == ["train/aachen/a.png", *absolute[1:]]
        assert "datasets/city/leftImg8bit/ is written relative to it" in caplog.text


def test_usage_errors_and_help(tmp_path):
    with pytest.raises(SystemExit) as e:
        tool.main([str(tmp_path / "only_one.json")])
    assert e.value.code == 2
    proc = subprocess.run([sys.executable, str(ROOT / "tools/prepare_point_annotations.py"), "--help"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "--num-versions" in proc.stdout and "--noise-mode" in proc.stdout
