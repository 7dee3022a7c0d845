"""Annotation-budget subsets (Figure 5): the time arithmetic, nested prefixes of one seeded order."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from point_sup_labels.budget import (
    COCO_CATEGORIZATION_SECONDS_PER_IMAGE,
    COCO_SPOTTING_SECONDS_PER_IMAGE,
    AnnotationTimeModel,
    BudgetError,
    Supervision,
    check_supervision_fields,
    dataset_seconds,
    image_order,
    objects_per_image,
    parse_supervision,
    select_images,
    subset_coco,
)
from point_sup_labels.coco_format import CocoFormatError, dumps_json, validate_coco_instances
from point_sup_labels.time_model import SECONDS_PER_BOX, SECONDS_PER_POINT, SECONDS_PER_POLYGON_MASK

ROOT = Path(__file__).resolve().parents[2]

# Binary-exact per-image stages, so that the hand computations below are exact.
MODEL = AnnotationTimeModel(categorization_seconds=200.0, spotting_seconds=100.0)

# Objects per image of the hand-written dataset (image 30 has none; image 50 has a crowd annotation).
COUNTS = {10: 3, 20: 1, 30: 0, 40: 2, 50: 5, 60: 1}


def small_coco() -> dict:
    images = [{"id": iid, "file_name": f"{iid}.jpg", "height": 40, "width": 60} for iid in COUNTS]
    anns = []
    for iid, n in COUNTS.items():
        for k in range(n):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": 1 + k % 2,
                    "bbox": [1.0 + k, 2.0, 10.0, 8.0],
                    "area": 80.0,
                    "iscrowd": int(iid == 50 and k == 0),
                    "segmentation": [[1, 2, 11, 2, 11, 10, 1, 10]],
                }
            )
    anns.reverse()  # annotations need not be grouped or ordered by image
    return {
        "info": {"description": "hand-written"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "extra": {"kept": True},
    }


def many_images(num_images: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = [{"id": 1000 + 7 * i, "height": 50, "width": 50} for i in range(num_images)]
    anns = []
    for img in images:
        for _ in range(int(rng.integers(0, 12))):
            anns.append({"id": len(anns), "image_id": img["id"], "category_id": 1, "bbox": [0, 0, 5, 5]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}


def test_supervision_parsing():
    assert parse_supervision("M") == Supervision("M")
    assert parse_supervision("B") == Supervision("B")
    assert parse_supervision("P10") == Supervision("P", 10)
    assert parse_supervision("p1") == Supervision("P", 1)
    assert str(parse_supervision("P25")) == "P25" and str(parse_supervision("m")) == "M"
    for bad in ("P0", "P", "P-1", "P1.5", "P01", "X", "", "MB", " M"):
        with pytest.raises(ValueError, match="unknown supervision"):
            parse_supervision(bad)


def test_time_model_defaults_are_the_papers_and_cocos():
    m = AnnotationTimeModel()
    assert (m.box_seconds, m.point_seconds, m.polygon_mask_seconds) == (
        SECONDS_PER_BOX,
        SECONDS_PER_POINT,
        SECONDS_PER_POLYGON_MASK,
    )
    assert (SECONDS_PER_BOX, SECONDS_PER_POINT, SECONDS_PER_POLYGON_MASK) == (7.0, 0.9, 79.2)
    assert m.categorization_seconds == COCO_CATEGORIZATION_SECONDS_PER_IMAGE == 20000 * 3600 / 328000
    assert m.spotting_seconds == COCO_SPOTTING_SECONDS_PER_IMAGE == 10000 * 3600 / 328000
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="spotting_seconds"):
            AnnotationTimeModel(spotting_seconds=bad)


def test_per_object_seconds_and_p_n_uses_n():
    m = AnnotationTimeModel()
    assert m.object_seconds("M") == 79.2
    assert m.object_seconds("B") == 7.0
    assert m.object_seconds("P10") == pytest.approx(16.0)  # the paper's 7 + 10 x 0.9
    for n in (1, 5, 20):
        assert m.object_seconds(f"P{n}") == pytest.approx(7.0 + 0.9 * n)
    assert m.object_seconds("P20") > m.object_seconds("P10") > m.object_seconds("B")
    assert MODEL.image_seconds("P10", 3) == pytest.approx(300 + 3 * 16)
    assert "7 s per box + 10 x 0.9 s per point = 16 s per object" in m.describe("P10")


def test_objects_per_image_counts_every_annotation_crowd_included():
    ids, counts = objects_per_image(small_coco())
    assert ids == list(COUNTS) and counts.tolist() == list(COUNTS.values())


@pytest.mark.parametrize(("supervision", "per_object"), [("M", 79.2), ("B", 7.0), ("P10", 16.0), ("P3", 9.7)])
def test_arithmetic_matches_a_hand_computation(supervision, per_object):
    data = small_coco()
    # Everything: 6 images x (200 + 100) s, and 12 objects at the per-object price.
    sel = select_images(data, supervision, fraction=1.0, time_model=MODEL)
    assert (sel.num_images, sel.num_images_total, sel.num_objects, sel.num_objects_total) == (6, 6, 12, 12)
    assert sel.categorization_seconds == 6 * 200 and sel.spotting_seconds == 6 * 100
    assert sel.object_seconds == pytest.approx(12 * per_object, rel=1e-12)
    assert sel.total_seconds == pytest.approx(1800 + 12 * per_object, rel=1e-12)
    assert sel.dataset_seconds == pytest.approx(sel.total_seconds, rel=1e-12)
    assert dataset_seconds(data, supervision, MODEL) == pytest.approx(1800 + 12 * per_object, rel=1e-12)
    assert sel.everything and sel.per_object_seconds == pytest.approx(per_object)
    # Half: round(0.5 x 6) = 3 images, whichever the order put first; their objects by hand.
    half = select_images(data, supervision, fraction=0.5, time_model=MODEL)
    objects = sum(COUNTS[i] for i in half.image_ids)
    assert half.num_images == 3 and half.num_objects == objects
    assert half.total_seconds == pytest.approx(3 * 300 + objects * per_object, rel=1e-12)
    assert half.total_hours == pytest.approx(half.total_seconds / 3600)


def test_default_model_hand_computation():
    sel = select_images(small_coco(), "P10", fraction=1.0)
    stage = 20000 * 3600 / 328000 + 10000 * 3600 / 328000  # 329.27 s per image
    assert sel.total_seconds == pytest.approx(6 * stage + 12 * 16.0, rel=1e-12)
    assert sel.categorization_seconds == pytest.approx(6 * 219.5121951, rel=1e-9)
    assert sel.spotting_seconds == pytest.approx(6 * 109.7560976, rel=1e-9)


def test_fraction_takes_round_f_times_n_images():
    data = many_images(10)
    for fraction, k in ((0.05, 1), (0.1, 1), (0.24, 2), (0.25, 3), (0.5, 5), (0.99, 10), (1.0, 10)):
        assert select_images(data, "M", fraction=fraction).num_images == k, fraction
    with pytest.raises(BudgetError, match="selects no image"):
        select_images(data, "M", fraction=0.04)
    for bad in (0, -0.1, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            select_images(data, "M", fraction=bad)


def test_nested_across_fractions():
    data = many_images()
    order = [data["images"][i]["id"] for i in image_order([img["id"] for img in data["images"]], 0)]
    previous: tuple = ()
    for fraction in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
        ids = select_images(data, "P10", fraction=fraction).image_ids
        assert ids[: len(previous)] == previous and list(ids) == order[: len(ids)]
        previous = ids
    assert len(previous) == 200


def test_nested_across_budgets_longest_prefix_that_fits():
    data = many_images()
    model = AnnotationTimeModel()
    counts = dict(zip(*objects_per_image(data), strict=True))
    previous: tuple = ()
    for hours in (0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55):
        sel = select_images(data, "M", budget_hours=hours)
        ids = sel.image_ids
        assert ids[: len(previous)] == previous  # a larger budget only adds images
        spent = sum(model.image_seconds("M", counts[i]) for i in ids)
        assert sel.total_seconds == pytest.approx(spent, rel=1e-12) and spent <= hours * 3600
        if not sel.everything:  # the next image of the order would not fit
            nxt = select_images(data, "M", fraction=1.0).image_ids[len(ids)]
            assert spent + model.image_seconds("M", counts[nxt]) > hours * 3600
        previous = ids
    assert len(previous) == 200  # 55 h is more than the whole dataset (44.3 h)


def test_prefix_not_knapsack():
    data = small_coco()
    order = select_images(data, "M", fraction=1.0, time_model=MODEL).image_ids
    # Move every object (12 x 79.2 s) to the second image of the order; the others have none.
    for ann in data["annotations"]:
        ann["image_id"] = order[1]
    budget = (3 * 300) / 3600  # fits images 1, 3 and 4 of the order, but not 1 and 2
    sel = select_images(data, "M", budget_hours=budget, time_model=MODEL)
    assert sel.image_ids == order[:1]


@pytest.mark.parametrize("supervision", ["M", "B", "P10"])
def test_budget_equal_to_a_prefix_time_includes_it(supervision):
    data = many_images(60)
    everything = select_images(data, supervision, fraction=1.0)
    for k in range(1, 61):
        exact = select_images(data, supervision, fraction=k / 60).total_seconds
        sel = select_images(data, supervision, budget_hours=exact / 3600)
        assert sel.num_images == k and sel.image_ids == everything.image_ids[:k]
        if k > 1:  # one second less loses the last image (every image costs its stages, > 300 s)
            assert select_images(data, supervision, budget_hours=(exact - 1) / 3600).num_images == k - 1
    # Hand-computed prefix with the binary-exact model: the first two images exactly.
    small = small_coco()
    first = select_images(small, "M", fraction=1.0, time_model=MODEL).image_ids
    hours = (2 * 300 + (COUNTS[first[0]] + COUNTS[first[1]]) * 79.2) / 3600
    assert select_images(small, "M", budget_hours=hours, time_model=MODEL).image_ids == first[:2]


def test_budget_errors():
    data = small_coco()
    with pytest.raises(BudgetError, match=r"fits no image: the first image of the order \(id \d+"):
        select_images(data, "M", budget_hours=0.01, time_model=MODEL)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="budget must be"):
            select_images(data, "M", budget_hours=bad)
    with pytest.raises(ValueError, match="exactly one"):
        select_images(data, "M")
    with pytest.raises(ValueError, match="exactly one"):
        select_images(data, "M", fraction=0.5, budget_hours=1)
    with pytest.raises(ValueError, match="unknown supervision"):
        select_images(data, "P0", fraction=0.5)
    empty = {**data, "images": [], "annotations": []}
    with pytest.raises(BudgetError, match="no images"):
        select_images(empty, "M", budget_hours=1)


def test_budget_beyond_the_dataset_selects_everything():
    sel = select_images(small_coco(), "P10", budget_hours=100, time_model=MODEL)
    assert sel.everything and sel.num_images == 6
    assert any("covers the whole input" in line for line in sel.summary())


def test_same_seed_same_subset_other_seed_other_order():
    data = many_images()
    a = select_images(data, "M", fraction=0.3, seed=0)
    assert a == select_images(copy.deepcopy(data), "M", fraction=0.3, seed=0)
    b = select_images(data, "M", fraction=0.3, seed=1)
    assert a.image_ids != b.image_ids
    ids = [img["id"] for img in data["images"]]
    o0, o1 = image_order(ids, 0), image_order(ids, 1)
    assert sorted(o0.tolist()) == list(range(200)) and o0.tolist() != o1.tolist()
    assert o0.tolist() != list(range(200))  # shuffled, not the file order
    assert np.array_equal(image_order(ids, 0), o0)


def test_order_is_the_same_for_every_supervision_and_file_order():
    data = many_images()
    by_fraction = {s: select_images(data, s, fraction=0.4).image_ids for s in ("M", "B", "P1", "P10")}
    assert len(set(by_fraction.values())) == 1
    # Under one budget the cheaper supervisions get longer prefixes of the same order.
    m, p10, b = (select_images(data, s, budget_hours=8).image_ids for s in ("M", "P10", "B"))
    assert len(m) < len(p10) < len(b) and p10[: len(m)] == m and b[: len(p10)] == p10
    # The order follows the image ids, not their position in the file.
    shuffled = copy.deepcopy(data)
    np.random.default_rng(3).shuffle(shuffled["images"])
    assert select_images(shuffled, "M", fraction=0.4).image_ids == by_fraction["M"]


def test_subset_keeps_every_key_and_the_input_order():
    data = small_coco()
    before = dumps_json(data)
    sel = select_images(data, "M", fraction=0.5, time_model=MODEL)
    out = subset_coco(data, sel)
    assert list(out) == list(data)  # every top-level key, in the input's order
    assert all(out[k] == data[k] for k in data if k not in ("images", "annotations"))
    keep = set(sel.image_ids)
    assert out["images"] == [img for img in data["images"] if img["id"] in keep]
    assert out["annotations"] == [a for a in data["annotations"] if a["image_id"] in keep]
    assert len(out["annotations"]) == sel.num_objects
    assert dumps_json(data) == before  # the input is not modified
    assert dumps_json(subset_coco(data, list(sel.image_ids))) == dumps_json(out)


def _p_file(num_points: int) -> dict:
    data = small_coco()
    for ann in data["annotations"]:
        del ann["segmentation"]
        ann["point_coords"] = [[2, 3]] * num_points
        ann["point_labels"] = [1] * num_points
    return data


def test_check_supervision_fields():
    masks = validate_coco_instances(small_coco(), source="masks.json")
    check_supervision_fields(masks, "M")
    check_supervision_fields(masks, "B")
    with pytest.raises(CocoFormatError, match=r"masks.json: annotation id=12, .*no 'point_coords'"):
        check_supervision_fields(masks, "P10")  # the first annotation of the file has id 12

    p10 = validate_coco_instances(_p_file(10), source="p10.json", require_segmentation=False)
    check_supervision_fields(p10, "P10")
    check_supervision_fields(p10, "B")
    with pytest.raises(CocoFormatError, match=r"p10.json: annotation id=12, .*no 'segmentation'"):
        check_supervision_fields(p10, "M")
    with pytest.raises(CocoFormatError, match=r"annotation id=12, .*10 points for supervision P5 \(expected"):
        check_supervision_fields(p10, "P5")

    data = _p_file(10)
    data["annotations"][3]["point_coords"] = [[2, 3]] * 9
    data["annotations"][3]["point_labels"] = [1] * 9
    bad = validate_coco_instances(data, require_segmentation=False)
    with pytest.raises(CocoFormatError, match=rf"annotation id={data['annotations'][3]['id']}, .*9 points"):
        check_supervision_fields(bad, "P10")

    # Zero-area boxes: none (point_sup's files) up to N points (Detectron2's) are accepted, not more.
    data = _p_file(10)
    data["annotations"][0]["bbox"] = [5.0, 5.0, 0.0, 3.0]
    data["annotations"][0]["point_coords"] = data["annotations"][0]["point_labels"] = []
    data["annotations"][1]["bbox"] = [100.0, 5.0, 4.0, 3.0]  # outside the 60-pixel-wide image
    check_supervision_fields(validate_coco_instances(data, require_segmentation=False), "P10")
    data["annotations"][1]["point_coords"] = [[2, 3]] * 11
    data["annotations"][1]["point_labels"] = [1] * 11
    with pytest.raises(CocoFormatError, match="11 points .*a zero-area box, at most 10"):
        check_supervision_fields(validate_coco_instances(data, require_segmentation=False), "P10")


def test_module_imports_neither_torch_nor_detectron2():
    # torch and detectron2 made unimportable: any import of them fails the test.
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['detectron2'] = None\n"
        "import point_sup_labels.budget as b\n"
        "assert b.select_images\n"
        "heavy = ('torch', 'detectron2')\n"
        "print(sorted(k for k, v in sys.modules.items() if k.split('.')[0] in heavy and v is not None))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
