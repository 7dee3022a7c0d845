"""The Python API (``point_sup_labels.simulate_coco`` and friends): the CLI's bytes for the same
options, the input left as it was, a readable summary, lazy exports, and the old import paths of
the modules that were split (still working, with a DeprecationWarning)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

import point_sup_labels
from point_sup_labels.coco_format import CocoFormatError, dumps_json

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "prepare_point_annotations_api", ROOT / "tools/prepare_point_annotations.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

# The README's quick start, as written there.
README_SNIPPET = """\
import json
import point_sup_labels

coco = json.load(open("datasets/nuclei/annotations/nuclei_train.json"))  # COCO instances with masks
p10, stats = point_sup_labels.simulate_coco(coco, num_points=10, seed=0)   # a new dict; coco unchanged
print(stats)
"""


def masks_dataset(num_images: int = 12, per_image: int = 9) -> dict:
    """Disks as compressed RLE (as the nuclei file stores them), polygons, an uncompressed-RLE crowd
    region, a zero-area box, float image sizes (``64.0``, which validation turns into ints) and
    extra keys at every level."""
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(30, 70, 2))
        images.append({"id": i, "file_name": f"tile_{i}.png", "height": float(h), "width": w, "note": [i]})
        yy, xx = np.mgrid[:h, :w]
        for k in range(per_image):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 9)
            disk = np.asfortranarray(((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8))
            x, y, bw, bh = (float(v) for v in mask_util.toBbox(mask_util.encode(disk)))
            segm: object
            if k % 3 == 0:  # the disk's outline as a polygon
                a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
                segm = [np.round(np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1), 2).ravel().tolist()]
            elif k == 4:  # a crowd region, uncompressed RLE
                flat = disk.ravel(order="F")
                cuts = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
                segm = {"size": [h, w], "counts": ([0] if flat[0] else []) + np.diff(cuts).tolist()}
            else:
                segm = {"size": [h, w], "counts": mask_util.encode(disk)["counts"].decode("ascii")}
            bbox = [x, y, 0.0 if k == 7 else bw, bh]  # k == 7: a zero-area box
            anns.append(
                {
                    "id": 1000 + len(anns),
                    "image_id": i,
                    "category_id": 1,
                    "bbox": bbox,
                    "segmentation": segm,
                    "area": float(disk.sum()),
                    "iscrowd": int(k == 4),
                    "attributes": {"stain": "dapi"},
                }
            )
    return {"info": {"description": "disks"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "nucleus"}]}  # fmt: skip


# Options of simulate_coco and the CLI's flags for them (version k: file k of --num-versions k + 1).
CASES = {
    "defaults": {},
    "p3_random_noise": {"num_points": 3, "seed": 7, "noise_rate": 0.1},
    "boundary_noise_second_version_keep_masks": {
        "version": 1,
        "noise_rate": 0.2,
        "noise_mode": "boundary",
        "keep_masks": True,
    },
    "mixed_objects": {"seed": 2, "keep_masks_fraction": 0.2, "box_only_fraction": 0.3},
    "mixed_images_noise": {
        "seed": 5,
        "keep_masks_fraction": 0.3,
        "fraction_of": "images",
        "noise_rate": 0.05,
    },
}


def cli_argv(options: dict) -> list[str]:
    argv = []
    for name, value in options.items():
        if name == "version":
            argv += ["--num-versions", str(value + 1)]
        elif value is True:
            argv.append("--" + name.replace("_", "-"))
        else:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[dict, Path]:
    """The dataset and its JSON file (what the CLI reads)."""
    data = masks_dataset()
    path = tmp_path_factory.mktemp("api") / "instances.json"
    path.write_text(json.dumps(data))
    return data, path


@pytest.mark.parametrize("case", sorted(CASES))
def test_simulate_coco_is_the_cli_output_and_leaves_its_input(coco, tmp_path, case):
    data, src = coco
    before = copy.deepcopy(data)
    options = CASES[case]
    p, stats = point_sup_labels.simulate_coco(data, **options)
    assert data == before

    out = tmp_path / "out.json"
    assert tool.main([str(src), str(out), "--no-progress", *cli_argv(options)]) == 0
    version = options.get("version", 0)
    cli_bytes = (out.with_name(f"out_v{version}.json") if version else out).read_bytes()
    assert dumps_json(p) == cli_bytes  # the package's one serializer, as the CLI uses it
    written = tmp_path / "api.json"
    point_sup_labels.write_point_file(p, written)
    assert written.read_bytes() == cli_bytes
    assert point_sup_labels.read_point_file(written) == p == json.loads(cli_bytes)

    # Nothing of the result is shared with the input: changing it anywhere leaves the input as it was.
    for image in p["images"]:
        image["note"].append("changed")
    for ann in p["annotations"]:
        ann["bbox"][0] = -1.0
        ann["attributes"]["stain"] = "changed"
        if isinstance(ann.get("segmentation"), dict):
            ann["segmentation"]["size"][0] = 0
    p["info"]["description"] = "changed"
    assert data == before

    # Each case does what it says (points written, labels flipped, kinds of supervision drawn).
    assert stats.num_with_points > 0
    assert (stats.num_flipped[0] > 0) == ("noise_rate" in options)
    assert (stats.num_mask_kept > 0) == ("keep_masks_fraction" in options)
    assert (stats.num_box_only > 0) == ("box_only_fraction" in options)
    n = stats.points_per_object
    assert stats.num_images == len(data["images"]) and stats.num_annotations == len(data["annotations"])
    written_labels = [lab for a in p["annotations"] for lab in a.get("point_labels", [])]
    assert len(written_labels) == stats.num_with_points * n
    assert stats.num_object_labels == [sum(written_labels)]
    assert stats.num_background_labels == [len(written_labels) - sum(written_labels)]


def test_readme_quick_start_runs_as_written(coco, tmp_path, monkeypatch, capsys):
    data, _ = coco
    folder = tmp_path / "datasets" / "nuclei" / "annotations"
    folder.mkdir(parents=True)
    (folder / "nuclei_train.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(README_SNIPPET, scope)
    summary = capsys.readouterr().out
    assert scope["coco"] == data  # unchanged
    stats = scope["stats"]
    assert summary.strip() == str(stats)
    assert len(summary.splitlines()) <= 5
    first, points, time = summary.splitlines()
    objects = f"{len(data['annotations'])} objects, {stats.num_with_points} with points"
    assert first == f"P10: 12 images, {objects}, 12 zero-area boxes without"
    obj, bg = stats.num_object_labels[0], stats.num_background_labels[0]
    assert points == f"points: {obj + bg:,} ({obj:,} object, {bg:,} background)"
    assert time.startswith("annotation time of these objects (paper's model): ") and "x faster" in time


def test_summary_names_mixed_supervision_noise_and_versions():
    stats = point_sup_labels.SimulationStats(
        num_annotations=20,
        num_with_points=10,
        num_flipped=[3, 0],
        num_mask_kept=4,
        num_box_only=6,
        num_point_objects=10,
        num_images=2,
        points_per_object=5,
        num_object_labels=[30, 28],
        num_background_labels=[20, 22],
    )
    assert str(stats).splitlines() == [
        "P5: 2 images, 20 objects, 10 with points",
        "supervision: points on 10 objects, mask on 4, box only on 6",
        "points (version 1 of 2): 50 (30 object, 20 background; 3 flipped by label noise)",
        "points (version 2 of 2): 50 (28 object, 22 background)",
        "annotation time of these objects (paper's model): 1.9 min as P5 vs 13.2 min as polygon masks "
        "(6.9x faster)",
    ]
    assert "with points" in str(point_sup_labels.SimulationStats()) and "annotation time" not in str(
        point_sup_labels.SimulationStats()
    )


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"keep_masks": True, "box_only_fraction": 0.1}, ValueError, "keep_masks"),
        ({"num_points": 0}, ValueError, "num_points"),
        ({"seed": -1}, ValueError, "seed"),
        ({"noise_mode": "edges", "noise_rate": 0.1}, ValueError, "noise_mode"),
        ({"keep_masks_fraction": 0.8, "box_only_fraction": 0.3}, ValueError, "at most 1"),
    ],
)
def test_impossible_options_raise(coco, options, error, message):
    data, _ = coco
    with pytest.raises(error, match=message):
        point_sup_labels.simulate_coco(data, **options)


def test_bad_datasets_raise_naming_the_record_and_are_left_as_they_were(coco):
    data, _ = coco
    bad = copy.deepcopy(data)
    del bad["annotations"][5]["segmentation"]
    before = copy.deepcopy(bad)
    with pytest.raises(point_sup_labels.CocoFormatError, match=r"mine\.json: annotation id=1005"):
        point_sup_labels.simulate_coco(bad, source="mine.json")
    assert bad == before
    with pytest.raises(CocoFormatError, match="'annotations' must be a list"):
        point_sup_labels.simulate_coco({"images": [], "categories": []})
    with pytest.raises(CocoFormatError, match="top level must be a JSON object"):
        point_sup_labels.simulate_coco([])  # type: ignore[arg-type]


def test_exports_are_few_documented_and_imported_on_first_use():
    assert point_sup_labels.__all__ == [
        "CocoFormatError",
        "SimulationStats",
        "__version__",
        "read_point_file",
        "simulate_coco",
        "write_point_file",
    ]
    for name in point_sup_labels.__all__:
        value = getattr(point_sup_labels, name)
        assert name == "__version__" or value.__doc__, name
        assert name in (point_sup_labels.__doc__ or "") or name == "__version__"
    with pytest.raises(AttributeError):
        point_sup_labels.no_such_name  # noqa: B018
    code = (
        "import sys, point_sup_labels\n"
        "print(sorted(m for m in sys.modules if m.startswith(('numpy', 'orjson', 'point_sup_labels.'))))\n"
        "from point_sup_labels import simulate_coco\n"
        "print(simulate_coco.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "point_sup_labels.point_file"]


OLD_PATHS = [  # (old module, name, new module)
    ("point_sup_labels.simulate", "select_supervision", "point_sup_labels.mixed_supervision"),
    ("point_sup_labels.simulate", "SUPERVISION_KINDS", "point_sup_labels.mixed_supervision"),
    ("point_sup_labels.simulate", "FractionOf", "point_sup_labels.mixed_supervision"),
    ("point_sup_labels.simulate", "read_chunk", "point_sup_labels.chunks"),
    ("point_sup_labels.simulate", "AnnotationChunk", "point_sup_labels.chunks"),
    ("point_sup_labels.simulate", "SimulationStats", "point_sup_labels.simulation_results"),
    ("point_sup_labels.simulate", "PointSamples", "point_sup_labels.simulation_results"),
    ("point_sup_labels.formats.common", "Dataset", "point_sup_labels.formats.dataset"),
    ("point_sup_labels.formats.common", "FormatError", "point_sup_labels.formats.dataset"),
    ("point_sup_labels.formats.common", "pixel_index", "point_sup_labels.formats.rules"),
    ("point_sup_labels.formats.common", "coco_dict", "point_sup_labels.formats.coco"),
    ("point_sup_labels.formats.common", "write_files", "point_sup_labels.formats.outputs"),
]


@pytest.mark.parametrize("old, name, new", OLD_PATHS)
def test_old_import_paths_work_with_a_deprecation_warning(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} has moved to {new}\.{name}") as caught:
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)
    assert caught[0].filename == __file__  # the warning points at the code that uses the old path


def test_old_from_imports_warn_and_the_pipeline_names_do_not():
    with pytest.warns(DeprecationWarning, match="formats.coco.read_coco"):
        from point_sup_labels.formats.common import read_coco  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from point_sup_labels.simulate import SimulationOptions, simulate_point_annotations  # noqa: F401
    with pytest.raises(ImportError):
        from point_sup_labels.simulate import no_such_name  # noqa: F401
