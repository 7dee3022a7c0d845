"""tools/annotate.py as a user runs it: resume after a SIGKILL, bad input, --host warning, merge, report."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from point_sup_labels.coco_format import CocoFormatError, load_coco_instances

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/annotate.py"


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    from point_sup.data.nuclei import build_nuclei_coco

    root = tmp_path_factory.mktemp("nuclei_cli")
    paths = build_nuclei_coco(root)
    data = json.loads(Path(paths["val"]).read_text())
    for a in data["annotations"]:
        del a["segmentation"]
    (root / "boxes.json").write_text(json.dumps(data))
    return {"boxes": root / "boxes.json", "masks": paths["val"], "images": paths["image_root"]}


def _start(args, python_flags=(), stderr=subprocess.PIPE):
    """Start the server; return the process and its base URL (read from the line it prints)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, *python_flags, str(TOOL), *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if "open http" not in line:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split("open ")[1].split()[0].rstrip("/")


def _state(base):
    with urllib.request.urlopen(base + "/api/state", timeout=10) as r:
        return json.loads(r.read())


def _answer(base, state, label):
    t = state["task"]
    body = json.dumps({"ann_id": t["ann_id"], "index": t["index"], "label": label, "seconds": 0.7}).encode()
    req = urllib.request.Request(
        base + "/api/answer", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_resume_after_the_server_is_killed(boxes, tmp_path):
    out = tmp_path / "points.json"
    args = ["--images", str(boxes["images"]), "--annotations", str(boxes["boxes"]), "--output", str(out)]
    args += ["--num-points", "3", "--seed", "2"]
    proc, base = _start(args)
    try:
        state = _state(base)
        given = []
        for k in range(7):  # objects 1 and 2 done, object 3 at its second point
            given.append((state["task"]["ann_id"], state["task"]["point"], k % 2))
            state = _answer(base, state, k % 2)
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: only what is on disk survives
        proc.wait(10)
    proc, base = _start(args)
    try:
        state = _state(base)
        assert (state["task"]["ann_id"], state["task"]["index"]) == (3, 1)
        assert state["progress"]["points_done"] == 7 and state["can_undo"]
        assert [(a["point"], a["label"]) for a in state["task"]["answered"]] == [(given[6][1], 0)]
        while not state["finished"]:
            state = _answer(base, state, 1)
    finally:
        proc.send_signal(signal.SIGTERM)  # a clean stop
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "stopped: 37/37 objects done" in err
    res = json.loads(out.read_text())
    anns = {a["id"]: a for a in res["annotations"]}
    assert len(anns) == 37 and res["point_sup_annotation"]["complete"]
    assert [anns[1]["point_labels"], anns[2]["point_labels"], anns[3]["point_labels"]] == [
        [0, 1, 0],
        [1, 0, 1],
        [0, 1, 1],
    ]
    assert all(a["point_seconds"] == [0.7] * 3 for a in anns.values())
    # Same points as the simulator with the same seed (the report's agreement uses them).
    from point_sup_labels.annotation import build_report

    numbers = build_report(out, boxes["masks"]).as_dict()
    assert numbers["num_objects"] == 37 and numbers["seconds_per_point_median"] == 0.7
    assert numbers["agreement"]["num_points"] == 111 and numbers["agreement"]["skipped_objects"] == 0


def test_malformed_input_gives_the_simulators_error(boxes, tmp_path):
    data = json.loads(boxes["boxes"].read_text())
    data["annotations"][4]["bbox"] = [1, 2, -3, 4]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    expected = f"{bad}: annotation id=5, image id=1: 'bbox' has a negative width or height: [1, 2, -3, 4]"
    for text, message in ((json.dumps(data), expected), ("{not json", f"{bad}: not valid JSON")):
        bad.write_text(text)
        run = subprocess.run(
            [sys.executable, str(TOOL), "--images", str(boxes["images"]), "--annotations", str(bad),
             "--output", str(tmp_path / "o.json")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 1 and message in run.stderr, run.stderr
        assert not (tmp_path / "o.json").exists()
        # The simulator's loader words the same problem the same way.
        with pytest.raises(CocoFormatError) as err:
            load_coco_instances(bad, require_segmentation=False)
        assert message in str(err.value)


def test_cli_usage_errors_merge_report_and_host_warning(boxes, tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("annotate_tool", TOOL)
    tool = module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([]) == 2
    with pytest.raises(SystemExit):
        tool.main(["--images", "x", "--annotations", "y", "--output", "z", "--shard", "3/2"])
    assert tool.main(["--images", str(tmp_path / "none"), "--annotations", str(boxes["boxes"]),
                      "--output", str(tmp_path / "o.json")]) == 1  # fmt: skip
    assert tool.main(["merge", str(tmp_path / "m.json"), str(boxes["boxes"])]) == 1  # not a tool output

    # Two shards annotated through the library, merged and reported through the command line.
    from point_sup_labels.annotation import AnnotationStore

    parts = []
    for k in range(2):
        part = tmp_path / f"part{k}.json"
        store = AnnotationStore(load_coco_instances(boxes["boxes"], require_segmentation=False), part,
                                num_points=1, shard=(k, 2))  # fmt: skip
        while (view := store.snapshot())["task"] is not None:
            store.answer(view["task"]["ann_id"], 0, 1, 2.0)
        store.close()
        parts.append(str(part))
    assert tool.main(["merge", str(tmp_path / "m.json"), *parts]) == 0
    assert len(json.loads((tmp_path / "m.json").read_text())["annotations"]) == 37
    assert tool.main(["report", str(tmp_path / "m.json")]) == 0

    # Any address but loopback is announced as reachable by others.
    proc, _ = _start(["--images", str(boxes["images"]), "--annotations", str(boxes["boxes"]),
                     "--output", str(tmp_path / "h.json"), "--host", "0.0.0.0"])  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "bound to 0.0.0.0, not a loopback address" in err


def _imported(importtime_log: str) -> set[str]:
    """The top-level packages a ``python -X importtime`` log (its stderr) shows imported."""
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in importtime_log.splitlines()
        if line.startswith("import time:")
    }


def test_a_whole_session_imports_neither_torch_nor_detectron2(boxes, tmp_path):
    """The tool runs on point_sup_labels alone: a whole session (input loaded, server listening,
    page, image and an answer served, a clean stop) imports neither torch, Detectron2 nor point_sup
    (``--help`` is checked in tests/labels/test_package.py)."""
    log = tmp_path / "importtime.txt"
    args = ["--images", str(boxes["images"]), "--annotations", str(boxes["boxes"]), "--output"]
    with log.open("w") as err:
        proc, base = _start([*args, str(tmp_path / "p.json")], python_flags=["-X", "importtime"], stderr=err)
        try:
            state = _state(base)
            for path in ("/", f"/images/{state['task']['image_id']}"):
                with urllib.request.urlopen(base + path, timeout=10) as r:
                    assert r.status == 200
            assert _answer(base, state, 1)["progress"]["points_done"] == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    imported = _imported(log.read_text())
    assert proc.returncode == 0 and "point_sup_labels" in imported
    assert not {"torch", "detectron2", "point_sup"} & imported, sorted(imported)
