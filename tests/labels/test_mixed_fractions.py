"""Mixed supervision in the simulator: --keep-masks-fraction, --box-only-fraction, --fraction-of.

The rule under test (point_sup_labels.simulate): u = hash(seed, annotation id or image id) in
[0, 1); "mask" if u < F, "box" if F <= u < F + G, else "points"; crowd objects always "points".
"""

import copy
import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from point_sup_labels.coco_format import dumps_json, validate_coco_instances
from point_sup_labels.mixed_supervision import (
    SUPERVISION_BOX,
    SUPERVISION_MASK,
    SUPERVISION_POINTS,
    apply_supervision,
    select_supervision,
    supervision_draws,
    supervision_kind,
    supervision_kinds,
)
from point_sup_labels.point_file import set_point_fields
from point_sup_labels.sharded import ShardedSimulation, ShardWorkers
from point_sup_labels.simulate import SimulationOptions, simulate_point_annotations

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "prepare_point_annotations_mixed", ROOT / "tools/prepare_point_annotations.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

POINT_FIELDS = ("point_coords", "point_labels")


def make_dataset(seed: int = 0, num_images: int = 40, per_image: int = 8) -> dict:
    """Polygons, compressed and uncompressed RLE (the latter crowd), a zero-area box, non-consecutive
    ids and negative image ids (they are hashed modulo 2**64)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        iid = 7 * i - 50
        h, w = (int(v) for v in rng.integers(20, 60, 2))
        images.append({"id": iid, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(per_image):
            k = len(anns)
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 12)
            a = np.sort(rng.uniform(0, 2 * np.pi, 7))
            poly = [np.round(np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1), 2).ravel().tolist()]
            x0, y0 = max(cx - r, 0.0), max(cy - r, 0.0)
            bbox = [round(x0, 2), round(y0, 2), round(min(cx + r, w) - x0, 2), round(min(cy + r, h) - y0, 2)]
            segm: object = poly
            if k % 5 == 1:
                rle = mask_util.merge(mask_util.frPyObjects(poly, h, w))
                segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            elif k % 9 == 2:  # uncompressed RLE, as COCO stores crowds
                m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, h, w))).ravel(order="F")
                b = np.concatenate([[0], np.flatnonzero(np.diff(m)) + 1, [m.size]])
                segm = {"size": [h, w], "counts": ([0] if m[0] else []) + np.diff(b).tolist()}
            if k == 3:
                bbox[2] = 0.0  # zero area
            anns.append(
                {
                    "id": 100 + 5 * k,
                    "image_id": iid,
                    "category_id": 1 + k % 2,
                    "bbox": bbox,
                    "segmentation": segm,
                    "iscrowd": int(k % 9 == 2),
                    "area": 1.0,
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"info": {"year": 2026}, "images": images, "annotations": anns, "categories": cats}


def simulate_outputs(data: dict, **kw) -> tuple[list[bytes], object]:
    """The output file of each version, as the tool's whole-file path writes them, and the counts."""
    inst = validate_coco_instances(copy.deepcopy(data))
    samples, stats = simulate_point_annotations(
        inst, drop_segmentation=kw.pop("drop_segmentation", True), **kw
    )
    outputs = []
    for s in samples:
        set_point_fields(inst.annotations, s)
        apply_supervision(inst.annotations, s.supervision)
        outputs.append(dumps_json(inst.data))
    return outputs, stats


def simulate_bytes(data: dict, **kw) -> tuple[bytes, object]:
    """The output file of one version and the run's counts."""
    (output,), stats = simulate_outputs(data, **kw)
    return output, stats


def kind_of(ann: dict) -> str:
    has_points = all(k in ann for k in POINT_FIELDS)
    assert has_points or not any(k in ann for k in POINT_FIELDS)
    if has_points:
        assert "segmentation" not in ann
        return "points"
    return "mask" if "segmentation" in ann else "box"


def binomial_ok(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------


def test_rule_is_the_documented_threshold_on_a_hash():
    ids = np.arange(100_000, dtype=np.uint64) * 3 + 11
    u = supervision_draws(4, ids)
    assert u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()
    kinds = supervision_kinds(4, ids, 0.25, 0.35)
    assert np.array_equal(kinds == SUPERVISION_MASK, u < 0.25)
    assert np.array_equal(kinds == SUPERVISION_BOX, (u >= 0.25) & (u < 0.6))
    counts = np.bincount(kinds, minlength=3)
    assert binomial_ok(counts[SUPERVISION_MASK], len(ids), 0.25)
    assert binomial_ok(counts[SUPERVISION_BOX], len(ids), 0.35)
    # The scalar form gives the same answers, by name.
    names = {SUPERVISION_POINTS: "points", SUPERVISION_MASK: "mask", SUPERVISION_BOX: "box"}
    for i in range(0, 300, 7):
        assert supervision_kind(4, int(ids[i]), 0.25, 0.35) == names[int(kinds[i])]
    # Each id on its own: any subset, in any order, gets the same draws.
    perm = np.random.default_rng(0).permutation(1000)
    assert np.array_equal(supervision_draws(4, ids[perm]), u[:1000][perm])
    # Edge fractions.
    assert (supervision_kinds(4, ids[:500], 0.0, 0.0) == SUPERVISION_POINTS).all()
    assert (supervision_kinds(4, ids[:500], 1.0, 0.0) == SUPERVISION_MASK).all()
    assert (supervision_kinds(4, ids[:500], 0.0, 1.0) == SUPERVISION_BOX).all()
    assert (supervision_kinds(4, ids[:500], 0.7, 0.3) != SUPERVISION_POINTS).all()
    # Another seed: another selection; ids as any Python integers (image ids), modulo 2**64.
    assert not np.array_equal(supervision_kinds(5, ids, 0.25, 0.35), kinds)
    assert supervision_draws(4, [-1])[0] == supervision_draws(4, [2**64 - 1])[0]
    assert supervision_draws(4, [2**70 + 3])[0] == supervision_draws(4, [3])[0]
    assert supervision_kind(2**64 - 1, 0, 0.5, 0.5) in ("mask", "box")  # the largest seed


def test_draws_are_independent_of_the_point_streams():
    from point_sup_labels.sampling import annotation_keys

    ids = np.arange(20_000, dtype=np.uint64)
    u = supervision_draws(0, ids)
    for version in range(3):
        keys = annotation_keys(0, version, ids)
        point_u = (keys >> np.uint64(11)).astype(np.float64) / 2**53
        assert abs(np.corrcoef(u, point_u)[0, 1]) < 0.05
        assert not np.array_equal(u, point_u)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"keep_masks_fraction": -0.1}, "keep_masks_fraction"),
        ({"keep_masks_fraction": 1.5}, "keep_masks_fraction"),
        ({"box_only_fraction": float("nan")}, "box_only_fraction"),
        ({"box_only_fraction": "0.2"}, "box_only_fraction"),
        ({"keep_masks_fraction": True}, "keep_masks_fraction"),
        ({"keep_masks_fraction": 0.6, "box_only_fraction": 0.5}, "at most 1"),
        ({"fraction_of": "pixels"}, "fraction_of"),
    ],
)
def test_options_refuse_bad_fractions(kw, message):
    with pytest.raises(ValueError, match=message):
        SimulationOptions(**kw)


# --------------------------------------------------------------------------------------------
# The simulator's output
# --------------------------------------------------------------------------------------------


def test_zero_fractions_change_nothing():
    data = make_dataset()
    plain, _ = simulate_bytes(data, seed=2, noise_rate=0.1)
    zero, stats = simulate_bytes(
        data, seed=2, noise_rate=0.1, keep_masks_fraction=0.0, box_only_fraction=0.0, fraction_of="images"
    )
    assert zero == plain
    assert stats.num_point_objects == stats.num_annotations and stats.num_mask_kept == stats.num_box_only == 0


def test_each_kind_has_exactly_its_fields_and_points_are_unchanged():
    data = make_dataset()
    plain = json.loads(simulate_bytes(data, seed=3)[0])["annotations"]
    text, stats = simulate_bytes(data, seed=3, keep_masks_fraction=0.3, box_only_fraction=0.2)
    mixed = json.loads(text)["annotations"]
    expected = select_supervision(data["annotations"], 3, 0.3, 0.2)
    names = ["points", "mask", "box"]
    counts = {"points": 0, "mask": 0, "box": 0}
    for orig, p, m, code in zip(data["annotations"], plain, mixed, expected.tolist(), strict=True):
        kind = kind_of(m)
        assert kind == names[code]
        if not orig["iscrowd"]:
            assert kind == supervision_kind(3, orig["id"], 0.3, 0.2)
        counts[kind] += 1
        rest = {k: v for k, v in orig.items() if k != "segmentation"}
        if kind == "mask":
            assert m == orig  # the segmentation as read, no point fields, every other key kept
            assert list(m) == list(orig)  # in the same key order
        elif kind == "box":
            assert m == rest
        else:
            assert m == p  # the points of a run without the fractions
            assert {k: v for k, v in m.items() if k not in POINT_FIELDS} == rest
        if orig["iscrowd"]:
            assert kind == "points"  # crowd objects are never selected
    assert counts == {
        "mask": stats.num_mask_kept,
        "box": stats.num_box_only,
        "points": stats.num_point_objects,
    }
    n = sum(1 for a in data["annotations"] if not a["iscrowd"])
    assert binomial_ok(counts["mask"], n, 0.3) and binomial_ok(counts["box"], n, 0.2)
    assert counts["mask"] > 0 and counts["box"] > 0
    assert stats.num_with_points == sum(1 for a in mixed if a.get("point_coords"))


def test_selection_follows_seed_and_ids_not_file_order_or_chunks():
    data = make_dataset()
    kw = {"keep_masks_fraction": 0.25, "box_only_fraction": 0.25}

    def by_id(d, **extra):
        anns = json.loads(simulate_bytes(d, **kw, **extra)[0])["annotations"]
        return {a["id"]: a for a in anns}

    base = by_id(data, seed=1)
    shuffled = copy.deepcopy(data)
    np.random.default_rng(0).shuffle(shuffled["annotations"])
    assert by_id(shuffled, seed=1, chunk_size=7, workers=2) == base
    assert by_id(data, seed=1) == base
    other = by_id(data, seed=2)
    assert [kind_of(a) for a in other.values()] != [kind_of(a) for a in base.values()]


def test_images_mode_selects_whole_images():
    data = make_dataset(num_images=60)
    text, stats = simulate_bytes(
        data, seed=0, keep_masks_fraction=0.3, box_only_fraction=0.3, fraction_of="images"
    )
    per_image: dict[int, set[str]] = {}
    for orig, ann in zip(data["annotations"], json.loads(text)["annotations"], strict=True):
        if not orig["iscrowd"]:
            per_image.setdefault(ann["image_id"], set()).add(kind_of(ann))
            assert kind_of(ann) == supervision_kind(0, ann["image_id"], 0.3, 0.3)
        else:
            assert kind_of(ann) == "points"
    assert all(len(kinds) == 1 for kinds in per_image.values())
    image_kinds = [next(iter(k)) for k in per_image.values()]
    assert {"mask", "box", "points"} <= set(image_kinds)
    assert binomial_ok(image_kinds.count("mask"), len(image_kinds), 0.3)
    assert stats.num_mask_kept + stats.num_box_only + stats.num_point_objects == stats.num_annotations


def test_noise_is_drawn_among_the_written_points():
    data = make_dataset()
    kw = {"seed": 5, "keep_masks_fraction": 0.3, "box_only_fraction": 0.3}
    clean = json.loads(simulate_bytes(data, **kw)[0])["annotations"]
    noisy_text, stats = simulate_bytes(data, noise_rate=0.2, **kw)
    noisy = json.loads(noisy_text)["annotations"]
    total = sum(len(a.get("point_labels", [])) for a in clean)
    flips = sum(
        p != q
        for a, b in zip(clean, noisy, strict=True)
        for p, q in zip(a.get("point_labels", []), b.get("point_labels", []), strict=True)
    )
    assert flips == math.floor(0.2 * total + 0.5) == stats.num_flipped[0]
    assert [kind_of(a) for a in clean] == [kind_of(a) for a in noisy]


def test_kept_segmentation_without_drop_keeps_masks_of_point_objects():
    # The library's drop_segmentation=False (the CLI refuses --keep-masks with the fractions):
    # "points" objects keep their mask besides the points, "box" objects still lose it.
    data = make_dataset()
    text, _ = simulate_bytes(
        data, seed=0, keep_masks_fraction=0.3, box_only_fraction=0.3, drop_segmentation=False
    )
    codes = select_supervision(data["annotations"], 0, 0.3, 0.3).tolist()
    for orig, ann, code in zip(data["annotations"], json.loads(text)["annotations"], codes, strict=True):
        assert ("segmentation" in ann) == (code != SUPERVISION_BOX)
        assert all(k in ann for k in POINT_FIELDS) == (code == SUPERVISION_POINTS)
        if "segmentation" in ann:
            assert ann["segmentation"] == orig["segmentation"]


@pytest.mark.parametrize("fraction_of", ["objects", "images"])
def test_sharded_is_byte_identical_to_the_whole_file_path(tmp_path, fraction_of):
    data = make_dataset(seed=1)
    path = tmp_path / "in.json"
    path.write_bytes(json.dumps(data).encode())
    kw = {
        "seed": 9,
        "keep_masks_fraction": 0.2,
        "box_only_fraction": 0.3,
        "fraction_of": fraction_of,
        "noise_rate": 0.1,
        "num_points": 4,
    }
    expected, expected_stats = simulate_outputs(data, versions=[0, 1], **kw)
    with ShardWorkers(2) as workers:
        sim = ShardedSimulation(path, workers, min_shard_bytes=1)
        assert len(sim._counts) == 2  # two shards, as in test_sharded
        stats = sim.simulate(versions=[0, 1], chunk_size=5, **kw)
        assert [sim.dumps(0), sim.dumps(1)] == expected
    assert (stats.num_mask_kept, stats.num_box_only, stats.num_point_objects, stats.num_flipped[0]) == (
        expected_stats.num_mask_kept,
        expected_stats.num_box_only,
        expected_stats.num_point_objects,
        expected_stats.num_flipped[0],
    )
    first, second = (json.loads(e)["annotations"] for e in expected)
    assert [kind_of(a) for a in second] == [kind_of(a) for a in first]  # one selection per seed
    assert [a.get("point_coords") for a in second] != [a.get("point_coords") for a in first]


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    from point_sup.data.nuclei import build_nuclei_coco

    return build_nuclei_coco(tmp_path_factory.mktemp("nuclei_mixed"))


@pytest.fixture
def tool_log(caplog):
    """The tool's logger ("point_sup") does not propagate to caplog's root handler."""
    log = logging.getLogger("point_sup")
    log.addHandler(caplog.handler)
    yield caplog
    log.removeHandler(caplog.handler)


def test_cli_on_nuclei_counts_kinds_and_workers(nuclei, tmp_path, tool_log, monkeypatch):
    from point_sup_labels import sharded

    monkeypatch.setattr(sharded, "MIN_SHARD_BYTES", 1)  # --workers 2 parses the file in shards
    src = str(nuclei["train"])
    plain, mixed, mixed2 = (tmp_path / f"{n}.json" for n in ("plain", "mixed", "mixed2"))
    fractions = ["--keep-masks-fraction", "0.3", "--box-only-fraction", "0.2", "--seed", "1", "--no-progress"]
    assert tool.main([src, str(plain), "--seed", "1", "--no-progress"]) == 0
    tool_log.clear()
    assert tool.main([src, str(mixed), *fractions, "--workers", "1"]) == 0
    assert tool.main([src, str(mixed2), *fractions, "--workers", "2"]) == 0
    assert "instead of in shards" not in tool_log.text
    assert mixed.read_bytes() == mixed2.read_bytes()
    orig = json.loads(Path(src).read_text())["annotations"]
    out = json.loads(mixed.read_text())["annotations"]
    ref = json.loads(plain.read_text())["annotations"]
    kinds = [kind_of(a) for a in out]
    for o, a, r, kind in zip(orig, out, ref, kinds, strict=True):
        assert kind == supervision_kind(1, o["id"], 0.3, 0.2)
        box_only = {key: v for key, v in o.items() if key != "segmentation"}
        assert a == {"mask": o, "box": box_only, "points": r}[kind]
    n = {k: kinds.count(k) for k in ("mask", "box", "points")}
    assert (
        f"kept masks on {n['mask']} objects, box only on {n['box']}, points on {n['points']}" in tool_log.text
    )
    assert len(out) == 100 and binomial_ok(n["mask"], 100, 0.3) and binomial_ok(n["box"], 100, 0.2)
    assert n["mask"] and n["box"] and n["points"]
    # Explicit zero fractions: the bytes of a run without them.
    zero = tmp_path / "zero.json"
    assert tool.main([src, str(zero), "--seed", "1", "--keep-masks-fraction", "0", "--box-only-fraction", "0",
                      "--fraction-of", "images", "--no-progress"]) == 0  # fmt: skip
    assert zero.read_bytes() == plain.read_bytes()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--keep-masks-fraction", "-0.1"], "--keep-masks-fraction"),
        (["--keep-masks-fraction", "1.01"], "--keep-masks-fraction"),
        (["--keep-masks-fraction", "abc"], "--keep-masks-fraction"),
        (["--box-only-fraction", "nan"], "--box-only-fraction"),
        (["--box-only-fraction", ""], "--box-only-fraction"),
        (
            ["--keep-masks-fraction", "0.6", "--box-only-fraction", "0.5"],
            "--keep-masks-fraction + --box-only-fraction",
        ),
        (["--keep-masks", "--box-only-fraction", "0.1"], "--keep-masks"),
        (["--fraction-of", "pixels"], "--fraction-of"),
    ],
)
def test_cli_refuses_bad_fractions_without_output(tmp_path, capsys, args, flag):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset(num_images=2)))
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit) as e:
        tool.main([str(src), str(out), "--no-progress", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]


def test_cli_accepts_fractions_summing_to_one(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(make_dataset(num_images=3)))
    out = tmp_path / "out.json"
    args = [str(src), str(out), "--keep-masks-fraction", "0.7", "--box-only-fraction", "0.3", "--no-progress"]
    assert tool.main(args) == 0
    anns = json.loads(out.read_text())["annotations"]
    assert all(kind_of(a) in ("mask", "box") for a in anns if not a["iscrowd"])
