"""Sharded parsing of a COCO file: cuts verified by the parsers, output identical to the whole-file path."""

import copy
import json

import numpy as np
import orjson
import pytest
from pycocotools import mask as mask_util

from point_sup_labels.coco_format import dumps_json, load_coco_instances
from point_sup_labels.file_io import StagedFiles
from point_sup_labels.mixed_supervision import apply_supervision
from point_sup_labels.point_file import dumps_point_annotations, set_point_fields
from point_sup_labels.sharded import NotShardableError, ShardedSimulation, ShardWorkers, plan_shards
from point_sup_labels.simulate import simulate_point_annotations


def make_dataset(seed: int = 0, num_images: int = 8, per_image: int = 9) -> dict:
    """Polygons (multi-part, crossing the border), compressed and uncompressed RLEs (crowd), a box
    partly outside its image, zero-area boxes, and extra fields whose strings look like JSON."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(20, 70, 2))
        images.append({"id": i, "file_name": "img},{" + f"{i}.png", "height": h, "width": w})
        for _ in range(per_image):
            k = len(anns)
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 15)
            a = np.sort(rng.uniform(0, 2 * np.pi, 7))
            parts = [np.round(np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1), 2).ravel().tolist()]
            if k % 5 == 0:
                parts.append([cx, cy, cx + 3, cy, cx, cy + 4])
            x0, y0 = max(cx - r, 0.0), max(cy - r, 0.0)
            bbox = [round(x0, 2), round(y0, 2), round(min(cx + r, w) - x0, 2), round(min(cy + r, h) - y0, 2)]
            segm: object = parts
            if k % 7 == 3:  # compressed RLE
                rle = mask_util.merge(mask_util.frPyObjects(parts, h, w))
                segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            elif k % 7 == 5:  # uncompressed RLE, as COCO stores crowds
                m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(parts, h, w))).ravel(order="F")
                b = np.concatenate([[0], np.flatnonzero(np.diff(m)) + 1, [m.size]])
                segm = {"size": [h, w], "counts": ([0] if m[0] else []) + np.diff(b).tolist()}
            if k % 11 == 4:
                bbox[2] = 0.0  # zero area: no points
            if k % 13 == 6:
                bbox[0] = -3.0  # partly outside the image: clipped
            anns.append(
                {
                    "id": 1000 + 3 * k,
                    "image_id": i,
                    "category_id": 1 + k % 3,
                    "bbox": bbox,
                    "segmentation": segm,
                    "iscrowd": int(k % 7 == 5),
                    "area": 1.5,
                    "note": "},{" * (k % 3),
                    "attributes": [{"a": k}, {"b": [1, {"c": 2}]}],
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    return {"info": {"year": 2026}, "images": images, "annotations": anns, "categories": cats, "z": [1]}


def whole_file_outputs(path, **kw) -> list[bytes]:
    inst = load_coco_instances(path)
    samples, _ = simulate_point_annotations(inst, drop_segmentation=not kw.pop("keep_masks", False), **kw)
    outputs = []
    for s in samples:
        if s.supervision is None:  # every object gets points
            outputs.append(dumps_point_annotations(copy.deepcopy(inst), s))
            continue
        out = copy.deepcopy(inst)  # as the tool writes mixed supervision
        set_point_fields(out.annotations, s)
        apply_supervision(out.annotations, s.supervision)
        outputs.append(dumps_json(out.data))
    return outputs


@pytest.fixture(scope="module")
def workers():
    with ShardWorkers(3) as w:
        yield w


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_plan_shards_cuts_between_top_level_elements(indent, n):
    data = make_dataset()
    for i, ann in enumerate(data["annotations"]):  # no '},{' inside annotations: every cut is right
        ann.pop("attributes")
        ann["note"] = f"n{i}"
    text = json.dumps(data, indent=indent).encode()
    layout = plan_shards(text, n, min_shard_bytes=1)
    assert len(layout.pieces) == n
    assert text[: layout.head_end].rstrip().endswith(b'"annotations": [')
    parsed = [json.loads(b"[" + text[a:b] + b"]") for a, b in layout.pieces[:-1]]
    last = json.loads(b'{"annotations":[' + text[layout.pieces[-1][0] :])
    assert [a for p in parsed for a in p] + last["annotations"] == data["annotations"]
    assert {k: v for k, v in last.items() if k != "annotations"} == {
        "categories": data["categories"],
        "z": [1],
    }
    sizes = [b - a for a, b in layout.pieces]
    assert max(sizes) < 2 * min(sizes) + 2000  # similar sizes
    assert len(plan_shards(text, 4).pieces) == 1  # small file: not cut (default minimum size)


@pytest.mark.parametrize(
    "text, reason",
    [
        (b'{"info": {"d": "\\"annotations"}, "annotations": [{"id": 1}]}', "exactly once"),
        (b'{"info": "x", "annotations": [{"id": 1}], "more": {"annotations": []}}', "exactly once"),
        (b'{"annotations": {"id": 1}}', "not followed by an array"),
        (b'{"annotations": [ ], "images": []}', "empty"),
        (b'{"images": [], "annotations": [', "empty"),
    ],
)
def test_plan_shards_refuses(text, reason):
    with pytest.raises(NotShardableError, match=reason):
        plan_shards(text, 2, min_shard_bytes=1)


@pytest.mark.parametrize("num_shards", [2, 3])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"versions": [0, 1, 2], "seed": 4},
        {"noise_rate": 0.1, "noise_mode": "random"},
        {"noise_rate": 0.2, "noise_mode": "boundary", "num_points": 5},
        {"keep_masks": True, "chunk_size": 5},
        {"keep_masks_fraction": 0.3, "box_only_fraction": 0.2, "noise_rate": 0.1, "chunk_size": 4},
        {"keep_masks_fraction": 0.2, "box_only_fraction": 0.4, "fraction_of": "images", "versions": [0, 1]},
    ],
)
def test_byte_identical_to_the_whole_file_path(tmp_path, options, num_shards):
    data = make_dataset(seed=1)
    path = tmp_path / "in.json"
    path.write_bytes(json.dumps(data).encode())
    expected = whole_file_outputs(path, **copy.deepcopy(options))
    kw = dict(options)
    keep = kw.pop("keep_masks", False)
    versions = kw.pop("versions", [0])
    with ShardWorkers(num_shards) as workers:
        sim = ShardedSimulation(path, workers, min_shard_bytes=1)
        assert len(sim._counts) == num_shards  # nested '},{' (attributes) and strings were not cut
        seen = []
        stats = sim.simulate(versions=versions, drop_segmentation=not keep, progress=seen.append, **kw)
        assert sum(seen) == len(data["annotations"]) == sim.num_annotations == stats.num_annotations
        assert (sim.num_images, sim.num_categories) == (8, 3)
        assert stats.num_zero_area > 0 and stats.num_clipped > 0 and stats.num_rle > 0
        assert [sim.dumps(k) for k in range(len(versions))] == expected
        with StagedFiles() as out:  # the workers write their shards in place: the same bytes
            for k in range(len(versions)):
                out.write_with(tmp_path / f"out{k}.json", lambda tmp, fd, k=k: sim.write(k, tmp, fd))
        assert [(tmp_path / f"out{k}.json").read_bytes() for k in range(len(versions))] == expected


def test_wrong_cuts_are_refused(tmp_path, workers):
    """Cuts placed inside a string or a nested array of objects never parse: the path is refused."""
    data = make_dataset()
    path = tmp_path / "in.json"
    text = json.dumps(data).encode()
    path.write_bytes(text)
    layout = plan_shards(text, 2, min_shard_bytes=1)
    start = layout.pieces[0][0]
    for marker in (b'"note": "},{', b'"attributes": [{"a": 0}, {'):
        gap = text.index(marker, start) + marker.rindex(b"}")  # the '}' of the marker's '},{'
        assert text[gap : gap + 3] == b"},{" or text[gap : gap + 4] == b"}, {"
        wrong = [(start, gap + 1), (text.index(b"{", gap), len(text))]
        with pytest.raises(NotShardableError, match="shard 0: a shard does not parse"):
            workers.request("parse", [(str(path), a, b, i == 1) for i, (a, b) in enumerate(wrong)])


def last_polygon(data: dict) -> list:
    return next(a for a in reversed(data["annotations"]) if isinstance(a["segmentation"], list))[
        "segmentation"
    ]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: d["annotations"][-1].update(id=d["annotations"][0]["id"]), "duplicate annotation ids"),
        (lambda d: d["annotations"][-1].pop("bbox"), "fails the checks"),
        (lambda d: last_polygon(d)[0].__setitem__(0, None), "bad polygon coordinates"),
        (lambda d: last_polygon(d)[0].__setitem__(0, 1e400), "does not parse"),  # 'Infinity'
        (lambda d: d["images"][0].update(width=0), "image width"),
        (lambda d: d.update(images={"id": 1}), "'images' must be a list"),
    ],
)
def test_problems_send_the_input_to_the_whole_file_path(tmp_path, workers, mutate, reason):
    data = make_dataset()
    mutate(data)
    path = tmp_path / "in.json"
    path.write_bytes(json.dumps(data).encode())
    with pytest.raises(NotShardableError, match=reason):
        ShardedSimulation(path, workers, min_shard_bytes=1).simulate()


def test_workers_survive_refusals_and_report_failures(tmp_path, workers):
    path = tmp_path / "in.json"
    path.write_bytes(orjson.dumps(make_dataset()))
    with pytest.raises(RuntimeError, match="worker failed"):  # a bug in a worker is not hidden
        workers.request("no_such_method", [()])
    sim = ShardedSimulation(path, workers, min_shard_bytes=1)  # the same workers still serve
    sim.simulate()
    assert json.loads(sim.dumps(0))["annotations"][0]["point_labels"]
    with pytest.raises(NotShardableError, match="regular file"):
        ShardedSimulation(tmp_path, workers)
