"""The answer store: simulator-identical points, crash-safe journal, resume, output rules, merge."""

import json
import os

import numpy as np
import pytest

from point_sup.data.datasets import load_coco_json_with_points
from point_sup_labels.annotation import (
    AnnotationStore,
    ConflictError,
    OutputInUseError,
    journal_path,
    merge_outputs,
)
from point_sup_labels.annotation.output import FLAGGED_KEY, META_KEY
from point_sup_labels.annotation.tasks import plan_tasks
from point_sup_labels.coco_format import CocoFormatError, load_coco_instances, validate_coco_instances
from point_sup_labels.simulate import simulate_point_annotations


def _boxes(nuclei_boxes):
    return load_coco_instances(nuclei_boxes["boxes"], require_segmentation=False)


def _answer_all(store, perfect_label, until=None):
    """Answer like a perfect annotator (seconds = 0.5 + index / 10), up to ``until`` answers."""
    n = 0
    while until is None or n < until:
        task = store.snapshot()["task"]
        if task is None:
            break
        store.answer(
            task["ann_id"],
            task["index"],
            perfect_label(task["ann_id"], task["point"]),
            0.5 + task["index"] / 10,
        )
        n += 1
    return n


def _journal_ops(path):
    return [json.loads(line)["op"] for line in journal_path(path).read_text().splitlines()]


def test_points_are_the_simulators(nuclei_boxes):
    sim, _ = simulate_point_annotations(load_coco_instances(nuclei_boxes["masks"]), num_points=7, seed=3)
    tasks = plan_tasks(_boxes(nuclei_boxes), num_points=7, seed=3)
    assert [t.ann_id for t in tasks] == [a["id"] for a in nuclei_boxes["data"]["annotations"]]
    np.testing.assert_array_equal(np.array([t.points for t in tasks]), sim[0].coords)
    other = plan_tasks(_boxes(nuclei_boxes), num_points=7, seed=4)
    assert [t.points for t in other] != [t.points for t in tasks]


def test_perfect_annotator_gives_the_simulated_file(nuclei_boxes, perfect_label, tmp_path):
    out = tmp_path / "points.json"
    with AnnotationStore(_boxes(nuclei_boxes), out, num_points=4, seed=1) as store:
        assert _answer_all(store, perfect_label) == 37 * 4
        assert store.snapshot()["finished"]
    res = json.loads(out.read_text())
    sim, _ = simulate_point_annotations(load_coco_instances(nuclei_boxes["masks"]), num_points=4, seed=1)
    src = nuclei_boxes["data"]
    assert res["images"] == src["images"] and res["categories"] == src["categories"]
    assert res[FLAGGED_KEY] == [] and res[META_KEY]["complete"] and res[META_KEY]["num_points"] == 4
    for ann, orig, coords, labels in zip(
        res["annotations"], src["annotations"], sim[0].coords, sim[0].labels, strict=True
    ):
        assert {k: v for k, v in ann.items() if not k.startswith("point_")} == orig
        assert ann["point_coords"] == coords.tolist() and ann["point_labels"] == labels.tolist()
        assert ann["point_seconds"] == [0.5, 0.6, 0.7, 0.8]
    validate_coco_instances(res, require_segmentation=False)  # the simulator's own checks of point fields
    dicts = load_coco_json_with_points(str(out), str(nuclei_boxes["images"]))
    assert sum(len(d["annotations"]) for d in dicts) == 37
    np.testing.assert_array_equal(dicts[0]["annotations"][0]["point_coords"], sim[0].coords[0] + 0.5)


def test_output_holds_only_complete_images_and_sets_flagged_apart(nuclei_boxes, perfect_label, tmp_path):
    out = tmp_path / "points.json"
    store = AnnotationStore(_boxes(nuclei_boxes), out, num_points=2)
    assert json.loads(out.read_text())["images"] == []  # written at once, empty
    _answer_all(store, perfect_label, until=3)  # first object done, second half done
    res = json.loads(out.read_text())
    assert res["images"] == [] and res["annotations"] == []
    first = store.snapshot()["task"]["ann_id"]
    store.flag(first)
    assert store.snapshot()["task"]["ann_id"] == first + 1
    # Finish image 1 (26 objects): it appears, with its 25 answered objects and the flagged one apart.
    while store.snapshot()["task"]["image_id"] == 1:
        _answer_all(store, perfect_label, until=1)
    res = json.loads(out.read_text())
    assert [img["id"] for img in res["images"]] == [1]
    assert len(res["annotations"]) == 25 and first not in {a["id"] for a in res["annotations"]}
    assert [(a["id"], a["point_sup_flag"]) for a in res[FLAGGED_KEY]] == [(first, "bad_box")]
    assert "point_coords" not in res[FLAGGED_KEY][0]
    p = store.progress()
    assert (p["objects_done"], p["objects_flagged"], p["images_complete"]) == (26, 1, 1)
    assert p["points_total"] == 36 * 2 and p["points_done"] == 25 * 2
    assert p["eta_seconds"] == pytest.approx(11 * 2 * p["seconds_per_point"])
    # Undoing the last answer of image 1 makes it incomplete again: it leaves the output.
    store.undo()
    assert json.loads(out.read_text())["images"] == []
    store.close()


def test_undo_crosses_objects_and_restarts(nuclei_boxes, perfect_label, tmp_path):
    out = tmp_path / "points.json"
    store = AnnotationStore(_boxes(nuclei_boxes), out, num_points=3)
    assert not store.undo() and not store.snapshot()["can_undo"]
    _answer_all(store, perfect_label, until=4)  # object 1 done, object 2 at point 1
    store.flag(2)
    assert store.snapshot()["task"]["ann_id"] == 3
    assert store.undo()  # the flag
    assert (store.snapshot()["task"]["ann_id"], store.snapshot()["task"]["index"]) == (2, 1)
    assert store.undo()  # object 2's first answer
    assert store.undo()  # object 1's last answer: back into a finished object
    view = store.snapshot()["task"]
    assert (view["ann_id"], view["index"], len(view["answered"])) == (1, 2, 2)
    store.close()
    with AnnotationStore(_boxes(nuclei_boxes), out, num_points=3) as again:
        view = again.snapshot()["task"]
        assert (view["ann_id"], view["index"]) == (1, 2)
        assert again.undo()  # the history survives a restart
        assert again.snapshot()["task"]["index"] == 1
    assert _journal_ops(out) == ["header", *["answer"] * 4, "flag", *["undo"] * 4]


def test_resume_discards_a_torn_line_and_checks_settings(nuclei_boxes, perfect_label, tmp_path):
    out = tmp_path / "points.json"
    with AnnotationStore(_boxes(nuclei_boxes), out, num_points=3) as store:
        _answer_all(store, perfect_label, until=5)
    with open(journal_path(out), "ab") as f:  # a crash in the middle of writing an answer
        f.write(b'{"op":"answer","ann_id":2,"ind')
    with AnnotationStore(_boxes(nuclei_boxes), out, num_points=3) as store:
        assert store.progress()["points_done"] == 5
        _answer_all(store, perfect_label, until=1)
    lines = journal_path(out).read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(line) for line in lines)
    with pytest.raises(ValueError, match="started with --num-points 3, not 4"):
        AnnotationStore(_boxes(nuclei_boxes), out, num_points=4)
    with pytest.raises(ValueError, match="--seed 0, not 5"):
        AnnotationStore(_boxes(nuclei_boxes), out, num_points=3, seed=5)
    journal_path(out).write_text(journal_path(out).read_text().replace('"op":"answer"', "garbage", 1))
    with pytest.raises(CocoFormatError, match="line 2 is not valid JSON"):
        AnnotationStore(_boxes(nuclei_boxes), out, num_points=3)


def test_refuses_foreign_outputs_and_a_second_process(nuclei_boxes, tmp_path):
    foreign = tmp_path / "simulated.json"
    foreign.write_text("{}")
    with pytest.raises(FileExistsError, match="no journal"):
        AnnotationStore(_boxes(nuclei_boxes), foreign)
    assert foreign.read_text() == "{}"
    out = tmp_path / "points.json"
    with AnnotationStore(_boxes(nuclei_boxes), out), pytest.raises(OutputInUseError):
        AnnotationStore(_boxes(nuclei_boxes), out)
    AnnotationStore(_boxes(nuclei_boxes), out).close()  # the lock went with the first store


def test_conflicting_and_malformed_answers_record_nothing(nuclei_boxes, tmp_path):
    out = tmp_path / "points.json"
    with AnnotationStore(_boxes(nuclei_boxes), out, num_points=2) as store:
        with pytest.raises(ConflictError):
            store.answer(2, 0, 1, 1.0)  # not the current object
        with pytest.raises(ConflictError):
            store.answer(1, 1, 1, 1.0)  # not the current point
        with pytest.raises(ConflictError):
            store.flag(5)
        for label, seconds in ((2, 1.0), (True, 1.0), (1, -1.0), (1, float("nan"))):
            with pytest.raises(ValueError):
                store.answer(1, 0, label, seconds)
        with pytest.raises(ValueError, match="reason"):
            store.flag(1, "ugly")
        assert store.progress()["points_done"] == 0
    assert _journal_ops(out) == ["header"]


def test_edited_box_is_asked_again(nuclei_boxes, perfect_label, tmp_path):
    out = tmp_path / "points.json"
    with AnnotationStore(_boxes(nuclei_boxes), out, num_points=2) as store:
        _answer_all(store, perfect_label, until=2)
        store.flag(2)
        _answer_all(store, perfect_label, until=2)
    data = json.loads(nuclei_boxes["boxes"].read_text())
    data["annotations"][1]["bbox"][2] -= 3  # the flagged box, fixed
    fixed = validate_coco_instances(data, require_segmentation=False)
    with AnnotationStore(fixed, out, num_points=2) as store:
        view = store.snapshot()["task"]
        assert (view["ann_id"], view["index"], view["bbox"]) == (2, 0, data["annotations"][1]["bbox"])
        assert store.progress()["objects_flagged"] == 0 and store.progress()["points_done"] == 4


def test_zero_area_boxes_need_no_answers(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 1, "bbox": [2, 2, 0, 5]},
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 3, 3]},
        ],
    }
    out = tmp_path / "points.json"
    with AnnotationStore(
        validate_coco_instances(data, require_segmentation=False), out, num_points=2
    ) as store:
        assert store.snapshot()["task"]["ann_id"] == 1
        assert store.progress()["objects_without_points"] == 1
        store.answer(1, 0, 1, 0.1)
        store.answer(1, 1, 0, 0.1)
    anns = json.loads(out.read_text())["annotations"]
    assert anns[0]["point_coords"] == [] and anns[0]["point_labels"] == []  # as the simulator writes it


def test_merge_of_shards_equals_one_annotator(nuclei_boxes, perfect_label, tmp_path):
    whole = tmp_path / "whole.json"
    with AnnotationStore(_boxes(nuclei_boxes), whole, num_points=2) as store:
        _answer_all(store, perfect_label)
    parts = []
    for k in range(2):
        part = tmp_path / f"part{k}.json"
        with AnnotationStore(_boxes(nuclei_boxes), part, num_points=2, shard=(k, 2)) as store:
            assert {t.image_id for t in store.tasks} == {k + 1}
            _answer_all(store, perfect_label)
            if k == 1:
                store.undo()
                store.flag(store.snapshot()["task"]["ann_id"])
        parts.append(part)
    stats = merge_outputs(parts, tmp_path / "merged.json")
    merged = json.loads((tmp_path / "merged.json").read_text())
    ref = json.loads(whole.read_text())
    assert merged["images"] == ref["images"] and merged["categories"] == ref["categories"]
    ref_anns = {a["id"]: a for a in ref["annotations"]}
    assert len(merged["annotations"]) == 36 and len(merged[FLAGGED_KEY]) == 1
    for a in merged["annotations"]:
        assert {k: v for k, v in a.items() if k != "point_seconds"} == {
            k: v for k, v in ref_anns[a["id"]].items() if k != "point_seconds"
        }
    assert (stats.num_images, stats.num_annotations, stats.num_flagged, stats.overlapping) == (2, 36, 1, 0)
    load_coco_json_with_points(str(tmp_path / "merged.json"), str(nuclei_boxes["images"]))

    # The same object in two files: the first is kept, the agreement of their labels reported.
    flipped = json.loads(parts[0].read_text())
    flipped["annotations"][0]["point_labels"][0] ^= 1
    (tmp_path / "flipped.json").write_text(json.dumps(flipped))
    stats = merge_outputs([parts[0], tmp_path / "flipped.json"], tmp_path / "m2.json")
    assert (stats.overlapping, stats.overlap_points, stats.overlap_agreeing) == (26, 52, 51)
    assert (
        json.loads((tmp_path / "m2.json").read_text())["annotations"]
        == json.loads(parts[0].read_text())["annotations"]
    )


def test_merge_rejects_inconsistent_inputs(nuclei_boxes, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    AnnotationStore(_boxes(nuclei_boxes), a, num_points=2).close()
    AnnotationStore(_boxes(nuclei_boxes), b, num_points=3).close()
    with pytest.raises(CocoFormatError, match="num_points 3 differs from 2"):
        merge_outputs([a, b], tmp_path / "m.json")
    (tmp_path / "plain.json").write_text(nuclei_boxes["boxes"].read_text())
    with pytest.raises(CocoFormatError, match="not an output of tools/annotate.py"):
        merge_outputs([a, tmp_path / "plain.json"], tmp_path / "m.json")
    with pytest.raises(ValueError, match="must not be one of the inputs"):
        merge_outputs([a], a)
    assert not os.path.exists(tmp_path / "m.json")
