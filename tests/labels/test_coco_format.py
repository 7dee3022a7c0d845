"""COCO JSON loading and validation: every bad input names the culprit."""

import copy
import json

import pytest

from point_sup_labels.chunks import read_chunk
from point_sup_labels.coco_format import (
    CocoFormatError,
    dumps_json,
    load_coco_instances,
    read_json,
    segmentation_kind,
    validate_coco_instances,
)

GOOD = {
    "info": {"note": "kept"},
    "images": [{"id": 7, "file_name": "a.jpg", "height": 10, "width": 20}],
    "categories": [{"id": 3, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5],
         "segmentation": [[1, 1, 6, 1, 6, 6]]},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 2, 2], "iscrowd": 1,
         "segmentation": {"size": [10, 20], "counts": [5, 3, 192]}},
        {"id": 4, "image_id": 7, "category_id": 3, "bbox": [0, 0, 2, 2],
         "segmentation": {"size": [10, 20], "counts": "52;3"}},
    ],
}  # fmt: skip


def broken(mutate):
    data = copy.deepcopy(GOOD)
    mutate(data)
    return data


def test_good_dataset_and_index():
    inst = validate_coco_instances(copy.deepcopy(GOOD), source="x.json")
    assert list(inst.images) == [7] and list(inst.categories) == [3]
    assert inst.image_size(inst.annotations[0]) == (10, 20)
    assert [segmentation_kind(a["segmentation"]) for a in inst.annotations] == [
        "polygon",
        "rle",
        "compressed_rle",
    ]
    chunk = read_chunk(inst, 0, 1, drop_segmentation=False)  # the polygon parts, flattened
    coords, sizes, owner = chunk.coords, chunk.part_sizes, chunk.part_owners
    assert coords.tolist() == [[1, 1], [6, 1], [6, 6]] and sizes.tolist() == [3] and owner.tolist() == [0]


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d["annotations"][0].pop("bbox"), r"annotation id=1, image id=7: no 'bbox'"),
        (lambda d: d["annotations"][0].update(image_id=99), r"annotation id=1: unknown image_id 99"),
        (lambda d: d["annotations"][0].update(category_id=5), r"annotation id=1.*unknown category_id 5"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 3]), r"annotation id=1.*negative"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, float("nan"), 3]), r"annotation id=1.*non-finite"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, 3]), r"annotation id=1.*4 numbers"),
        (
            lambda d: d["annotations"][0].update(segmentation={"foo": 1}),
            r"annotation id=1.*unknown segmentation form",
        ),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]), r"annotation id=1.*odd number"),
        (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 21]), r"annotation id=2.*RLE size"),
        (lambda d: d["annotations"][1]["segmentation"].update(counts=[5, 3]), r"annotation id=2.*sum to 8"),
        (lambda d: d["annotations"][2].update(id=1), r"annotation id=1: duplicate"),
        (lambda d: d["annotations"][0].update(id=-3), r"annotation 'id'"),
        (lambda d: d["images"][0].update(height=-10), r"image id=7: image height"),
        (lambda d: d["images"][0].update(width=float("inf")), r"image id=7: image width"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"image id=7: duplicate"),
        (lambda d: d.pop("categories"), r"'categories' must be a list"),
        (lambda d: d["annotations"][0].update(point_coords=[[25, 1]], point_labels=[1]), r"id=1.*outside"),
        (lambda d: d["annotations"][0].pop("segmentation"), r"annotation id=1.*no 'segmentation'"),
    ],
)
def test_bad_input_names_the_record(mutate, pattern):
    with pytest.raises(CocoFormatError, match=pattern):
        validate_coco_instances(broken(mutate), source="bad.json")


def test_first_problem_in_file_order_and_valid_inputs_off_the_fast_path():
    data = broken(lambda d: d["annotations"][1].update(bbox=[0, 0, -1, 1]))
    data["annotations"][2]["image_id"] = 99
    data["annotations"][0]["segmentation"] = {"size": [10, 20], "counts": [5, 3]}
    with pytest.raises(CocoFormatError, match=r"annotation id=1.*sum to 8"):
        validate_coco_instances(data)
    # Valid, but not of the exact types the fast checks expect: accepted by the per-annotation ones.
    data = broken(lambda d: d["annotations"][0].update(iscrowd=True))
    validate_coco_instances(data)
    data["annotations"][1]["segmentation"]["counts"] = [5, True, 194]  # a bool is no count
    with pytest.raises(CocoFormatError, match=r"annotation id=2.*non-negative integers"):
        validate_coco_instances(data)
    big = {**GOOD, "annotations": [dict(GOOD["annotations"][0], id=i) for i in range(500)]}
    big["annotations"][400]["segmentation"] = [[1, 1, 6, 1, "6", 6]]  # checked by the simulator's read_chunk
    big["annotations"][300] = dict(big["annotations"][300], bbox=[0, 0, 1, float("inf")])
    with pytest.raises(CocoFormatError, match=r"annotation id=300.*non-finite"):
        validate_coco_instances(big)


def test_integral_float_sizes_and_existing_points_are_accepted():
    data = broken(lambda d: d["images"][0].update(height=10.0))
    data["annotations"][0].update(point_coords=[[2, 3], [19, 9]], point_labels=[1, 0])
    inst = validate_coco_instances(data)
    assert inst.images[7]["height"] == 10 and isinstance(inst.images[7]["height"], int)


def test_read_json_errors_and_nan_literals(tmp_path):
    with pytest.raises(CocoFormatError, match="cannot read"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="bad.json: not valid JSON"):
        read_json(bad)
    # NaN is not JSON, but files written by Python's json contain it: the error names the annotation.
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(broken(lambda d: d["annotations"][2].update(bbox=[0, 0, float("nan"), 1]))))
    with pytest.raises(CocoFormatError, match="annotation id=4.*non-finite"):
        load_coco_instances(nan)


def test_dumps_is_compact_and_deterministic():
    assert dumps_json({"a": [1, 2.5], "b": "é"}) == '{"a":[1,2.5],"b":"é"}'.encode()


def test_integer_image_ids_renumber_only_non_integer_ids():
    """Detectron2's Cityscapes loader names images by file name; COCO ids are integers."""
    from point_sup_labels.coco_format import integer_image_ids

    coco = {
        "images": [
            {"id": "aachen_000000_000019_leftImg8bit.png"},
            {"id": "bochum_000000_000313_leftImg8bit.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": "bochum_000000_000313_leftImg8bit.png"},
            {"id": 2, "image_id": "aachen_000000_000019_leftImg8bit.png"},
        ],
    }
    integer_image_ids(coco)
    assert [img["id"] for img in coco["images"]] == [1, 2]
    assert [a["image_id"] for a in coco["annotations"]] == [2, 1]
    already = {"images": [{"id": 7}, {"id": 3}], "annotations": [{"id": 1, "image_id": 3}]}
    integer_image_ids(already)
    assert already == {"images": [{"id": 7}, {"id": 3}], "annotations": [{"id": 1, "image_id": 3}]}
