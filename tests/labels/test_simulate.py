"""The P_N simulator: labels identical to pycocotools, uniform points, exact noise, determinism."""

import math

import numpy as np
import pytest
from pycocotools import mask as mask_util

from point_sup_labels.coco_format import CocoFormatError, validate_coco_instances
from point_sup_labels.label_noise import boundary_sq_distances, mask_region
from point_sup_labels.point_file import apply_point_samples, dumps_point_annotations
from point_sup_labels.polygon_labels import polygon_labels
from point_sup_labels.rle_labels import decode_rle_counts, rle_labels
from point_sup_labels.sampling import annotation_keys, sample_points, sampling_ranges
from point_sup_labels.simulate import simulate_point_annotations
from point_sup_labels.time_model import annotation_time


def random_polygon(rng, h, w, mode):
    k = int(rng.integers(3, 14))
    if mode == "convex":
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        c, r = rng.uniform(0, [w, h]), rng.uniform(1, max(h, w) / 2)
        xy = c + r * np.stack([np.cos(a), np.sin(a)], 1)
    elif mode == "concave":  # a random (possibly self-intersecting) polygon
        xy = rng.uniform(0, 1, (k, 2)) * [w, h]
    elif mode == "border":  # vertices beyond and exactly on the image border
        xy = rng.integers(-2, 2 * max(h, w) + 3, (k, 2)) / 2.0
        xy = np.where(rng.random((k, 2)) < 0.3, np.minimum(np.maximum(xy, 0), [w, h]), xy)
    elif mode == "thin":  # sub-pixel wide slivers, vertical or horizontal
        x0, y0 = rng.uniform(0, [w, h])
        d = rng.uniform(-0.3, 0.3, k)
        L = rng.uniform(-10, 10, k)
        xy = np.stack([x0 + d, y0 + L], 1) if rng.random() < 0.5 else np.stack([x0 + L, y0 + d], 1)
    else:  # tenths of a pixel: many vertices exactly on rleFrPoly's 5x grid half-points
        xy = np.round(rng.uniform(-1, 1.1, (k, 2)) * [w, h] * 10) / 10
    return xy.ravel().tolist()


def all_pixels(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx.ravel(), yy.ravel()], 1)


def test_polygon_labels_equal_pycocotools_on_every_pixel():
    rng = np.random.default_rng(1)
    modes = ["convex", "concave", "border", "thin", "grid"]
    for i in range(400):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        polys = [random_polygon(rng, h, w, modes[(i + j) % 5]) for j in range(int(rng.integers(1, 4)))]
        expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w)))
        got = polygon_labels(polys, h, w, all_pixels(h, w)).reshape(h, w)
        assert np.array_equal(got, expected), (i, h, w, polys)


@pytest.mark.slow
def test_polygon_labels_equal_pycocotools_thorough():
    rng = np.random.default_rng(2)
    modes = ["convex", "concave", "border", "thin", "grid"]
    for i in range(5000):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        polys = [random_polygon(rng, h, w, modes[(i + j) % 5]) for j in range(int(rng.integers(1, 4)))]
        expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w)))
        got = polygon_labels(polys, h, w, all_pixels(h, w)).reshape(h, w)
        assert np.array_equal(got, expected), (i, h, w, polys)


def test_polygon_labels_large_image_sampled_points():
    # COCO-sized images, big polygons with many vertices; check random points only.
    rng = np.random.default_rng(3)
    for _ in range(100):
        h, w = 480, 640
        a = np.sort(rng.uniform(0, 2 * np.pi, 150))
        r = rng.uniform(20, 300) * rng.uniform(0.5, 1, 150)
        c = rng.uniform(0, [w, h])
        polys = [(c + r[:, None] * np.stack([np.cos(a), np.sin(a)], 1)).round(2).ravel().tolist()]
        expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w)))
        pts = np.stack([rng.integers(0, w, 500), rng.integers(0, h, 500)], 1)
        assert np.array_equal(polygon_labels(polys, h, w, pts), expected[pts[:, 1], pts[:, 0]])


def test_degenerate_parts_are_ignored():
    # Parts under 3 vertices enclose nothing; pycocotools agrees when the first part is a real polygon.
    tri = [1.0, 1.0, 9.0, 1.5, 5.0, 8.0]
    polys = [tri, [2.0, 2.0, 7.0, 7.0], [3.0, 3.0]]
    expected = mask_util.decode(
        mask_util.merge(mask_util.frPyObjects([tri, [2.0, 2.0, 7.0, 7.0, 7.0, 7.0]], 10, 10))
    )
    assert np.array_equal(polygon_labels(polys, 10, 10, all_pixels(10, 10)).reshape(10, 10), expected)
    assert expected.sum() > 10


def test_rle_labels_equal_pycocotools_both_forms():
    rng = np.random.default_rng(4)
    for i in range(300):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        m = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
        if i % 3 == 0:  # blobby masks have long runs; counts > 31 need several characters
            m = np.zeros((h, w), np.uint8)
            m[rng.integers(0, h) :, rng.integers(0, w) :] = 1
        rle = mask_util.encode(np.asfortranarray(m))
        pts = all_pixels(h, w)
        assert np.array_equal(rle_labels(rle, pts).reshape(h, w), m)
        rle_str = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        assert np.array_equal(rle_labels(rle_str, pts).reshape(h, w), m)
        # Uncompressed form (as COCO stores crowds), decoded the way annToMask does it.
        flat = m.ravel(order="F")
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat[0]:
            runs = [0, *runs]
        unc = {"size": [h, w], "counts": runs}
        assert np.array_equal(mask_util.decode(mask_util.frPyObjects(unc, h, w)), m)
        assert np.array_equal(rle_labels(unc, pts).reshape(h, w), m)


def test_decode_rle_counts_matches_encoder_and_rejects_garbage():
    rng = np.random.default_rng(5)
    m = np.zeros((300, 400), np.uint8)
    m[10:290, 17:399] = rng.random((280, 382)) < 0.01  # runs from 1 to tens of thousands
    rle = mask_util.encode(np.asfortranarray(m))
    runs = decode_rle_counts(rle["counts"])
    assert runs.sum() == 300 * 400
    flat = m.ravel(order="F")
    assert np.array_equal(np.repeat(np.arange(len(runs)) % 2, runs), flat)
    with pytest.raises(ValueError, match="middle of a number"):
        decode_rle_counts("0\\")  # '\\' = 48 + 44: continuation bit set on the last char
    with pytest.raises(ValueError, match="outside"):
        decode_rle_counts("ab~")


def test_mask_region_equals_crop():
    rng = np.random.default_rng(6)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(2, 50, 2))
        polys = [random_polygon(rng, h, w, "concave"), random_polygon(rng, h, w, "convex")]
        full = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w)))
        c0, r0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        c1, r1 = int(rng.integers(c0 + 1, w + 1)), int(rng.integers(r0 + 1, h + 1))
        assert np.array_equal(mask_region(polys, h, w, (c0, c1), (r0, r1)), full[r0:r1, c0:c1])
        rle = mask_util.encode(np.asfortranarray(full))
        assert np.array_equal(mask_region(rle, h, w, (c0, c1), (r0, r1)), full[r0:r1, c0:c1])


def test_sampling_ranges_rule():
    boxes = np.array(
        [
            [10.0, 20.0, 5.0, 3.0],  # integer box: exactly its pixels
            [10.7, 20.2, 2.0, 1.0],  # centres 11.5 and 12.5 in [10.7, 12.7); row 20.5 in [20.2, 21.2)
            [-5.0, -5.0, 10.0, 10.0],  # clipped to [0, 5)
            [3.2, 4.6, 0.2, 0.1],  # thinner than a pixel, no centre inside: pixel under the centre
            [5.0, 5.0, 0.0, 4.0],  # zero width
            [200.0, 5.0, 10.0, 4.0],  # entirely outside
            [95.0, 45.0, 10.0, 10.0],  # clipped at the right/bottom border
        ]
    )
    ranges, clipped, empty = sampling_ranges(boxes, np.full(7, 50), np.full(7, 100))
    assert ranges.tolist()[:4] == [[10, 15, 20, 23], [11, 13, 20, 21], [0, 5, 0, 5], [3, 4, 4, 5]]
    assert ranges.tolist()[6] == [95, 100, 45, 50]
    assert empty.tolist() == [False, False, False, False, True, True, False]
    assert clipped.tolist() == [False, False, True, False, False, False, True]


def chi_square_upper(df, z=4.0):
    """Wilson-Hilferty approximation of the chi-square quantile at a normal z-score."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_points_are_uniform_in_the_box():
    # 7 x 5 box; 20000 annotation ids x 10 points = 200000 draws over 35 pixels.
    ranges = np.tile([[3, 10, 20, 25]], (20000, 1))
    pts = sample_points(annotation_keys(0, 0, np.arange(20000)), ranges, 10).reshape(-1, 2)
    assert pts[:, 0].min() == 3 and pts[:, 0].max() == 9 and pts[:, 1].min() == 20 and pts[:, 1].max() == 24
    counts = np.zeros((7, 5))
    np.add.at(counts, (pts[:, 0] - 3, pts[:, 1] - 20), 1)
    expected = len(pts) / 35
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < chi_square_upper(34)  # p ~ 3e-5 of a false alarm
    # Points of one annotation are independent: pairs (first, second point) uniform over 35^2 cells.
    two = sample_points(annotation_keys(1, 0, np.arange(50000)), ranges[:1].repeat(50000, 0), 2)
    cell = (two[:, 0, 0] - 3) * 5 + two[:, 0, 1] - 20
    cell2 = (two[:, 1, 0] - 3) * 5 + two[:, 1, 1] - 20
    pair_counts = np.bincount(cell * 35 + cell2, minlength=35 * 35)
    e2 = 50000 / 35**2
    assert ((pair_counts - e2) ** 2 / e2).sum() < chi_square_upper(35**2 - 1)


def test_keys_depend_on_seed_version_and_id_only():
    k = annotation_keys(0, 0, [5, 6, 7])
    assert np.array_equal(k[1:], annotation_keys(0, 0, [6, 7]))
    assert (
        len(
            {
                *k.tolist(),
                *annotation_keys(1, 0, [5, 6, 7]).tolist(),
                *annotation_keys(0, 1, [5, 6, 7]).tolist(),
            }
        )
        == 9
    )


def make_dataset(rng, num_images=6, per_image=12):
    images, anns = [], []
    for i in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(20, 80, 2))
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(per_image):
            polys = [random_polygon(rng, h, w, "convex") for _ in range(int(rng.integers(1, 3)))]
            m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w)))
            if m.sum() == 0:
                continue
            ys, xs = np.nonzero(m)
            bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
            kind = rng.integers(0, 3)
            if kind == 0:
                segm = polys
            else:
                rle = mask_util.encode(np.asfortranarray(m))
                segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                if kind == 2:
                    flat = m.ravel(order="F")
                    b = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
                    segm = {"size": [h, w], "counts": ([0] if flat[0] else []) + np.diff(b).tolist()}
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": bbox,
                    "segmentation": segm,
                    "iscrowd": int(kind == 2),
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def simulate(data, **kw):
    import copy

    inst = validate_coco_instances(copy.deepcopy(data))
    return simulate_point_annotations(inst, **kw)


def test_simulated_labels_equal_ann_to_mask_and_points_in_box():
    from pycocotools.coco import COCO

    data = make_dataset(np.random.default_rng(7))
    (s,), stats = simulate(data, num_points=10, seed=3, chunk_size=16)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    assert stats.num_with_points == len(data["annotations"]) and stats.num_polygon > 10 and stats.num_rle > 10
    for i, ann in enumerate(data["annotations"]):
        m = coco.annToMask(ann)
        x, y, w, h = ann["bbox"]
        pts = s.coords[i]
        assert (
            (pts[:, 0] >= x).all()
            and (pts[:, 0] < x + w).all()
            and (pts[:, 1] >= y).all()
            and (pts[:, 1] < y + h).all()
        )
        assert np.array_equal(s.labels[i], m[pts[:, 1], pts[:, 0]])


def test_determinism_across_workers_chunks_and_versions():
    data = make_dataset(np.random.default_rng(8))
    one, _ = simulate(data, seed=5, versions=[0, 1, 2], workers=1, chunk_size=1000)
    two, _ = simulate(data, seed=5, versions=[0, 1, 2], workers=2, chunk_size=7)
    solo, _ = simulate(data, seed=5, versions=[2])
    other, _ = simulate(data, seed=6, versions=[0])
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a.coords, b.coords) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(one[2].coords, solo[0].coords)
    assert not np.array_equal(one[0].coords, one[1].coords)
    assert not np.array_equal(one[0].coords, other[0].coords)


def test_random_noise_rate_is_exact():
    data = make_dataset(np.random.default_rng(9))
    (clean,), _ = simulate(data, seed=1)
    for rate in (0.05, 0.2, 1.0):
        (noisy,), stats = simulate(data, seed=1, noise_rate=rate, noise_mode="random")
        total = clean.labels.size
        k = math.floor(rate * total + 0.5)
        diff = np.flatnonzero(noisy.labels.ravel() != clean.labels.ravel())
        assert len(diff) == k == stats.num_flipped[0]
        assert np.array_equal(np.sort(noisy.flipped), diff)
        assert np.array_equal(noisy.coords, clean.coords)


def test_boundary_noise_flips_the_points_nearest_the_boundary():
    data = make_dataset(np.random.default_rng(10))
    (clean,), _ = simulate(data, seed=2)
    (noisy,), stats = simulate(data, seed=2, noise_rate=0.1, noise_mode="boundary", workers=2, chunk_size=9)
    # Recompute each point's distance independently: brute force over the full pycocotools mask.
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    dist = []
    for i, ann in enumerate(data["annotations"]):
        m = coco.annToMask(ann)
        H, W = m.shape
        x, y, w, h = (int(v) for v in ann["bbox"])
        c0, c1, r0, r1 = max(x - 1, 0), min(x + w + 1, W), max(y - 1, 0), min(y + h + 1, H)
        reg = m[r0:r1, c0:c1]
        for px, py in clean.coords[i]:
            other = np.argwhere(reg != reg[py - r0, px - c0])
            dist.append(((other[:, 0] - (py - r0)) ** 2 + (other[:, 1] - (px - c0)) ** 2).min())
    dist = np.array(dist)
    flipped = np.flatnonzero(noisy.labels.ravel() != clean.labels.ravel())
    assert len(flipped) == math.floor(0.1 * dist.size + 0.5) == stats.num_flipped[0]
    kept = np.setdiff1d(np.arange(dist.size), flipped)
    assert dist[flipped].max() <= dist[kept].min()
    assert dist[flipped].max() <= 2  # on these objects 10 % of points lie within sqrt(2) px of the boundary


def test_boundary_sq_distances_small_case():
    region = np.zeros((5, 5), np.uint8)
    region[1:4, 1:4] = 1
    d = boundary_sq_distances(region, (10, 20), np.array([[12, 22], [11, 21], [10, 20], [14, 24]]))
    assert d.tolist() == [4, 1, 2, 2]


def test_zero_area_and_clipped_boxes():
    data = make_dataset(np.random.default_rng(11), num_images=1, per_image=3)
    img = data["images"][0]
    extra = [
        {"bbox": [3.0, 3.0, 0.0, 5.0]},  # zero width
        {"bbox": [float(img["width"]) + 5, 0.0, 4.0, 4.0]},  # outside the image
        {"bbox": [-4.0, -4.0, 10.0, 10.0]},  # clipped
    ]
    for e in extra:
        e.update(
            id=len(data["annotations"]) + 1,
            image_id=1,
            category_id=1,
            segmentation=[[0.0, 0.0, 6.0, 0.0, 0.0, 6.0]],
        )
        data["annotations"].append(e)
    (s,), stats = simulate(data)
    assert stats.num_zero_area == 2 and stats.num_clipped == 1
    assert s.has_points.tolist()[-3:] == [False, False, True]
    assert s.point_lists(len(data["annotations"]) - 3) == ([], [])
    assert (s.coords[-1] >= 0).all() and (s.coords[-1] < 6).all()


def test_bad_coordinates_and_rle_name_the_annotation():
    data = make_dataset(np.random.default_rng(12), num_images=2, per_image=4)
    poly = next(a for a in data["annotations"] if isinstance(a["segmentation"], list))
    poly["segmentation"][0][3] = float("nan")
    with pytest.raises(CocoFormatError, match=f"annotation id={poly['id']}"):
        simulate(data, workers=2, chunk_size=2)
    poly["segmentation"][0][3] = 1.0
    rle = next(
        a
        for a in data["annotations"]
        if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
    )
    rle["segmentation"]["counts"] = rle["segmentation"]["counts"][:-1] + "o"  # wrong total
    with pytest.raises(CocoFormatError, match=f"annotation id={rle['id']}.*RLE"):
        simulate(data, workers=2, chunk_size=2)


def test_first_bad_annotation_in_file_order_for_any_workers_and_chunks():
    # Errors the validator leaves to the simulator: compressed RLE totals (checked by the worker)
    # and polygon coordinates (found while reading the chunk, raised by its task after the RLEs
    # before them). A bad RLE before a bad polygon of the same or a later chunk is reported first.
    data = make_dataset(np.random.default_rng(13), num_images=3, per_image=6)
    anns = data["annotations"]

    def compressed(i):
        return isinstance(anns[i]["segmentation"], dict) and isinstance(
            anns[i]["segmentation"]["counts"], str
        )

    k = next(i for i in range(len(anns)) if compressed(i))
    later = [i for i, a in enumerate(anns) if isinstance(a["segmentation"], list) and i > k]
    anns[k]["segmentation"]["counts"] = anns[k]["segmentation"]["counts"][:-1] + "o"  # wrong total
    anns[later[0]]["segmentation"][0][1] = "x"
    anns[later[-1]]["segmentation"][0][1] = None
    for workers, chunk_size in ((1, 2048), (2, 1), (2, later[0] + 1), (2, 5)):
        with pytest.raises(CocoFormatError, match=f"annotation id={anns[k]['id']}.*RLE"):
            simulate(data, workers=workers, chunk_size=chunk_size)
    # A bad polygon first; later chunks, with bad RLEs, are in flight when its chunk is collected.
    j = next(i for i, a in enumerate(anns) if isinstance(a["segmentation"], list) and i < k)
    anns[j]["segmentation"][0][0] = float("inf")
    for i in range(j + 1, len(anns)):
        if compressed(i):
            anns[i]["segmentation"]["counts"] = anns[i]["segmentation"]["counts"][:-1] + "o"
    for workers, chunk_size in ((1, 2048), (2, 1), (2, 3)):
        with pytest.raises(CocoFormatError, match=f"annotation id={anns[j]['id']}.*finite numbers"):
            simulate(data, workers=workers, chunk_size=chunk_size)


@pytest.mark.parametrize("num_points", [1, 3])
def test_dumps_point_annotations_equals_lists_then_dumps(num_points):
    import copy

    from point_sup_labels.coco_format import dumps_json

    data = make_dataset(np.random.default_rng(14), num_images=3, per_image=5)
    data["annotations"][2]["bbox"] = [1.0, 1.0, 0.0, 3.0]  # no points: empty lists
    inst = validate_coco_instances(copy.deepcopy(data))
    (s,), _ = simulate_point_annotations(inst, num_points=num_points, drop_segmentation=True)
    assert not s.has_points[2]
    fast = dumps_point_annotations(inst, s)
    apply_point_samples(inst, s)
    assert fast == dumps_json(inst.data)
    empty = validate_coco_instances({"images": [], "annotations": [], "categories": []})
    (e,), _ = simulate_point_annotations(empty)
    assert dumps_point_annotations(empty, e) == b'{"images":[],"annotations":[],"categories":[]}'


def test_annotation_time_model():
    t = annotation_time(1000, 10)
    assert t.point_annotation_seconds == pytest.approx(1000 * 16.0)
    assert t.polygon_mask_seconds == pytest.approx(79200.0)
    assert t.speedup == pytest.approx(4.95)
    assert "P10" in t.summary() and "5.0x faster" in t.summary()
