"""tools/prepare_point_annotations.py under kills, mistakes and odd input (issue 12, items 1-6 and 9).

The kill tests run the tool as a user does (a subprocess) on a file large enough that each stage
lasts a while, stop it with SIGSTOP at a stage recognised from outside (its worker processes in the
process table, its first temporary file in the output folder), send the signal, and then read the
process table and the output folder. No sleeps decide when to kill.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from point_sup_labels.file_io import StagedFiles

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/prepare_point_annotations.py"
_spec = importlib.util.spec_from_file_location("prepare_point_annotations_reliability", TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


@pytest.fixture(autouse=True)
def tool_logs_reach_caplog(caplog):
    """The tool's logger does not propagate once Detectron2's setup_logger configured it."""
    logger = logging.getLogger("point_sup")
    logger.addHandler(caplog.handler)
    yield
    logger.removeHandler(caplog.handler)


def coco(num_annotations: int, vertices: int = 4, seed: int = 0, annotations_first: bool = False) -> dict:
    """A COCO dict of ``num_annotations`` random convex polygons in 640x480 images."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in range(1, 101)]
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    anns = []
    for k in range(num_annotations):
        cx, cy, r = rng.uniform(60, 580), rng.uniform(60, 420), rng.uniform(10, 50)
        poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2)
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0)
        anns.append(
            {
                "id": k + 1,
                "image_id": int(k % 100) + 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": float((x1 - x0) * (y1 - y0)),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "segmentation": [poly.ravel().tolist()],
            }
        )
    parts = {"images": images, "categories": [{"id": 1, "name": "thing"}], "annotations": anns}
    if annotations_first:  # not shardable: the tool takes its whole-file path with a worker pool
        parts = {"annotations": anns, "images": images, "categories": parts["categories"]}
    return parts


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory):
    """Files that take the tool a few seconds: a shardable one and one for the worker-pool path."""
    folder = tmp_path_factory.mktemp("inputs")
    sharded, pooled = folder / "big.json", folder / "big_annotations_first.json"
    sharded.write_bytes(orjson.dumps(coco(20_000, vertices=48)))
    pooled.write_bytes(orjson.dumps(coco(20_000, vertices=48, annotations_first=True)))
    return {"sharded": sharded, "pool": pooled}


def _children(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:  # gone meanwhile (FileNotFoundError or ProcessLookupError)
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:  # the thread or process ended between the listing and the read
                continue
            for k in map(int, kids):
                if k not in found:
                    found.add(k)
                    todo.append(k)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the tool ended (exit {proc.returncode}) before {what}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.0002)


def _temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def _run_tool(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TOOL), *args, "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, stage, signum",
    [
        ("sharded", "workers", signal.SIGKILL),
        ("sharded", "workers", signal.SIGTERM),
        ("pool", "workers", signal.SIGKILL),
        ("pool", "workers", signal.SIGTERM),
        ("sharded", "writing", signal.SIGKILL),
        ("sharded", "writing", signal.SIGTERM),
    ],
)
def test_a_killed_conversion_leaves_no_process_and_the_next_run_no_debris(
    big_inputs, tmp_path, path, stage, signum
):
    out = tmp_path / "out.json"
    args = [str(big_inputs[path]), str(out), "--workers", "2", "--num-versions", "3", "--keep-masks"]
    proc = _run_tool(args)
    try:
        if stage == "workers":
            # The two workers of the sharded path, or the pool's two (the pool path has first tried,
            # and given up, sharding: its workers are gone by then).
            _wait_until(lambda: len(_children(proc.pid)) >= 2, 60, "the workers start", proc)
        else:
            # With the workers up: the output folder's probe (before any work) is a temp file too.
            _wait_until(
                lambda: _temps(tmp_path) and len(_children(proc.pid)) >= 2,
                120,
                "the first output is staged",
                proc,
            )
        proc.send_signal(signal.SIGSTOP)  # the stage is held while we look
        workers = _children(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert (rc == -signum) if signum == signal.SIGKILL else (rc == 128 + signum), (rc, stderr)
    if signum == signal.SIGTERM:
        assert "Traceback" not in stderr
    # No worker outlives the tool (SIGKILL: Linux's parent-death signal; SIGTERM: the cleanup).
    _wait_until(lambda: not any(map(_running, workers)), 10, f"workers {sorted(workers)} to exit")
    assert not out.exists() and not any(tmp_path.glob("out_v*.json"))  # nothing half-written
    if signum == signal.SIGTERM:
        assert _temps(tmp_path) == []  # the cleanup of SIGTERM removed the staged files
    if signum == signal.SIGTERM:
        return
    # The next run leaves only its own outputs, whatever the killed one left behind.
    rerun = _run_tool(args)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert sorted(os.listdir(tmp_path)) == ["out_v0.json", "out_v1.json", "out_v2.json"]


def small() -> dict:
    data = coco(3)
    data["annotations"][1]["segmentation"] = [[10, 10, 30, 10, 30, 30, 10, 30]]
    return data


def _write(path: Path, data) -> str:
    path.write_bytes(data if isinstance(data, bytes) else orjson.dumps(data))
    return str(path)


def test_output_naming_the_input_is_refused(tmp_path, caplog):
    src = tmp_path / "in.json"
    _write(src, small())
    before = src.read_bytes()
    (tmp_path / "link.json").symlink_to(src)
    os.link(src, tmp_path / "hard.json")
    for out in (src, tmp_path / "link.json", tmp_path / "hard.json", tmp_path / "sub" / ".." / "in.json"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        caplog.clear()
        assert tool.main([str(src), str(out), "--no-progress"]) == 2
        assert "is the input file" in caplog.text and "refusing to overwrite the input" in caplog.text
        assert src.read_bytes() == before
    assert _temps(tmp_path) == []


def test_unusable_outputs_are_refused_before_any_work(tmp_path, caplog):
    src = _write(tmp_path / "in.json", small())
    (tmp_path / "out_v1.json").mkdir()
    cases = [
        ([str(tmp_path / "missing" / "out.json")], "the output directory .*missing does not exist"),
        ([str(tmp_path / "out_v1.json")], "OUTPUT .*out_v1.json is a directory"),
        ([str(tmp_path / "out.json"), "--num-versions", "2"], "OUTPUT .*out_v1.json is a directory"),
    ]
    for extra, message in cases:
        caplog.clear()
        assert tool.main([src, *extra, "--no-progress"]) == 2
        assert "loaded" not in caplog.text  # refused before reading the input
        assert __import__("re").search(message, caplog.text), caplog.text
    assert sorted(os.listdir(tmp_path)) == ["in.json", "out_v1.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_folder_is_refused_before_any_work(tmp_path, caplog):
    src = _write(tmp_path / "in.json", small())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert tool.main([src, str(locked / "out.json"), "--no-progress"]) == 2
        assert "is not writable" in caplog.text and "loaded" not in caplog.text
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "18446744073709551616"], "--seed: must be in [0, 2**64)"),
        (["--seed", "-1"], "--seed: must be in [0, 2**64)"),
        (["--seed", "x"], "--seed: not an integer: 'x'"),
    ],
)
def test_usage_mistakes_are_one_message(tmp_path, capsys, argv, message):
    src = _write(tmp_path / "in.json", small())
    with pytest.raises(SystemExit) as exit_:
        tool.main([src, str(tmp_path / "o.json"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_output_template_with_another_field_is_one_message(tmp_path, capsys):
    src = _write(tmp_path / "in.json", small())
    with pytest.raises(SystemExit) as exit_:
        tool.main([src, str(tmp_path / "{name}_{version}.json"), "--num-versions", "2"])
    assert exit_.value.code == 2
    assert "may contain only the field {version}, not {name}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in.json"]


def test_the_largest_seed_works(tmp_path):
    src = _write(tmp_path / "in.json", small())
    assert tool.main([src, str(tmp_path / "o.json"), "--seed", str(2**64 - 1), "--no-progress"]) == 0


def _stale_name(target: str, host: str, pid: int) -> str:
    return f".{target}.{host}_{pid}_abc123.tmp"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_next_run_removes_the_temporary_files_of_killed_runs_only(tmp_path):
    from point_sup_labels.file_io import atomic_open

    with atomic_open(tmp_path / "probe.json") as f:  # how this host's temporary files are named
        (name,) = _temps(tmp_path)
        f.write(b"{}")
    host = name.removeprefix(".probe.json.").split("_")[0]
    assert name.startswith(f".probe.json.{host}_{os.getpid()}_") and name.endswith(".tmp")
    (tmp_path / "probe.json").unlink()
    src = _write(tmp_path / "in.json", small())
    dead, alive = _dead_pid(), os.getpid()
    stale = _stale_name("out.json", host, dead)
    live = _stale_name("out.json", host, alive)
    other_host = _stale_name("out.json", "someotherhost", dead)
    unrelated = _stale_name("other.json", host, dead)
    for name in (stale, live, other_host, unrelated):
        (tmp_path / name).write_bytes(b"{half")
    assert tool.main([src, str(tmp_path / "out.json"), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["in.json", "out.json", live, other_host, unrelated])
    assert host == "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum())


def test_all_versions_appear_together_or_none(tmp_path):
    """A rename that fails in the middle of the commit puts back what the earlier ones replaced."""
    first, second, third = (tmp_path / f"out_v{k}.json" for k in range(3))
    first.write_text("previous v0")
    with pytest.raises(OSError), StagedFiles() as staged:
        staged.write(first, b"new v0")
        staged.write(second, b"new v1")
        staged.write(third, b"new v2")
        third.mkdir()  # after staging: only the rename of the last file fails
        (third / "keep").write_text("a non-empty folder cannot be replaced by a file")
    assert first.read_text() == "previous v0"
    assert not second.exists()
    assert sorted(os.listdir(tmp_path)) == ["out_v0.json", "out_v2.json"]


def _dup_annotations() -> bytes:
    data = small()
    head = orjson.dumps({k: v for k, v in data.items() if k != "annotations"})[:-1]
    anns = orjson.dumps(data["annotations"])
    return head + b',"annotations":' + anns + b',"annotations":[]}'


def _bad(mutate) -> dict:
    data = small()
    mutate(data["annotations"][1])
    return data


@pytest.mark.parametrize(
    "content, message",
    [
        (_dup_annotations(), "the top-level key 'annotations' occurs more than once"),
        (
            _bad(lambda a: a.update(segmentation=[[[10, 10], [30, 10], [30, 30], [10, 30]]])),
            "annotation id=2, image id=2: polygon coordinates must be finite numbers in flat lists "
            "[x0, y0, x1, y1, ...], got a part of 4 [x, y] pairs",
        ),
        (
            _bad(lambda a: a["segmentation"][0].__setitem__(3, "10.5")),
            "annotation id=2, image id=2: polygon coordinates must be finite numbers, got str '10.5'",
        ),
        (
            _bad(lambda a: a["segmentation"][0].__setitem__(0, True)),
            "annotation id=2, image id=2: polygon coordinates must be finite numbers, got bool True",
        ),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_odd_json_is_an_error_naming_the_annotation(tmp_path, caplog, monkeypatch, content, message, workers):
    from point_sup_labels import sharded as sharded_simulation

    monkeypatch.setattr(sharded_simulation, "MIN_SHARD_BYTES", 1)  # the sharded path for any size
    src = _write(tmp_path / "in.json", content)
    assert tool.main([src, str(tmp_path / "out.json"), "--workers", workers, "--no-progress"]) == 1
    assert message in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["in.json"]


def test_duplicate_keys_are_found_and_nested_ones_are_not_mistaken_for_them(tmp_path):
    from point_sup_labels.coco_format import CocoFormatError, read_json

    nested = tmp_path / "nested.json"  # "images" twice in the text, once at the top level: fine
    nested.write_text('{"images": [], "info": {"images": 1}, "categories": [{"name": "images"}]}')
    assert read_json(nested)["info"] == {"images": 1}
    twice = tmp_path / "twice.json"
    twice.write_text('{"images": [1], "info": {"images": 1}, "categories": [], "images": []}')
    with pytest.raises(CocoFormatError, match="twice.json: the top-level key 'images' occurs more"):
        read_json(twice)
    nan = tmp_path / "nan.json"  # the standard library's path (NaN literal) checks as well
    nan.write_text('{"a": NaN, "b": 1, "a": 2}')
    with pytest.raises(CocoFormatError, match="key 'a' occurs more than once"):
        read_json(nan)


def _record(coords, labels) -> list[dict]:
    return [
        {
            "image_id": 7,
            "height": 20,
            "width": 30,
            "annotations": [{"id": 3, "bbox": [0, 0, 9, 9], "point_coords": coords, "point_labels": labels}],
        }
    ]


@pytest.mark.parametrize(
    "coords, labels, message",
    [
        ([["3", 4]], [1], "point_coords must hold JSON numbers, got str '3'"),
        ([[True, 4]], [1], "point_coords must hold JSON numbers, got bool True"),
        ([[3, 4]], [True], "point_labels must hold JSON numbers, got bool True"),
        ([[3, 4]], ["1"], "point_labels must hold JSON numbers, got str '1'"),
        ([[3, -9223372036854775809]], [1], "point [3, -9223372036854775809] lies outside the 30x20 image"),
        ([[10**30, 4]], [1], "point [1000000000000000000000000000000, 4] lies outside the 30x20 image"),
    ],
)
def test_the_loader_takes_json_numbers_only(coords, labels, message):
    from point_sup.data.datasets import convert_point_annotations

    with pytest.raises(ValueError, match="src.json: image id 7, annotation id 3: ") as e:
        convert_point_annotations(_record(coords, labels), "src.json")
    assert message in str(e.value)


def test_zero_labelled_points_are_refused_and_a_share_is_reported(caplog):
    from detectron2.config import get_cfg

    from point_sup import add_point_sup_config
    from point_sup.data import check_point_supervision

    cfg = add_point_sup_config(get_cfg())
    cfg.INPUT.POINT_SUP = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    empty = {"image_id": 1, "file_name": "a.jpg", "height": 20, "width": 30}
    none = [dict(empty, annotations=[{"bbox": [0, 0, 5, 5], "point_coords": [], "point_labels": []}] * 3)]
    with pytest.raises(ValueError, match=r"dataset 'p0': none of its 3 objects has a labelled point"):
        check_point_supervision(cfg, "p0", dataset_dicts={"p0": none})
    some = [
        dict(
            empty,
            annotations=[
                {"bbox": [0, 0, 5, 5], "point_coords": [[1, 1]], "point_labels": [1]},
                {"bbox": [0, 0, 5, 5], "point_coords": [], "point_labels": []},
                {"bbox": [0, 0, 5, 5], "point_coords": [], "point_labels": [], "iscrowd": 1},
            ],
        )
    ]
    with caplog.at_level(logging.WARNING, logger="point_sup.data.checks"):
        check_point_supervision(cfg, "p_some", dataset_dicts={"p_some": some})
    assert "dataset 'p_some': 1 of 2 objects (50.0%) have no labelled point" in caplog.text


TRAIN_NET = ROOT / "tools/train_net.py"
P10 = "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config-file", "configs/nope.yaml"], "config file 'configs/nope.yaml': Config file"),
        (["--config-file", P10, "MODEL.FOO", "1"], "command-line overrides: Non-existent key: MODEL.FOO"),
        (["--config-file", P10, "SOLVER.MAX_ITER"], "command-line overrides: Override list has odd length"),
        (["--config-file", P10, "SOLVER.MAX_ITER", "'ten'"], "Type mismatch"),
        (
            ["--config-file", "BAD_KEY"],
            "(or a _BASE_ file it names): Non-existent config key: MODEL.NOT_A_KEY",
        ),
    ],
)
def test_train_net_config_mistakes_are_one_message(tmp_path, argv, message):
    if argv[1] == "BAD_KEY":
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"_BASE_: {ROOT / P10}\nMODEL:\n  NOT_A_KEY: 1\n")
        argv = ["--config-file", str(bad)]
    spec = importlib.util.spec_from_file_location("train_net_reliability", TRAIN_NET)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(argv)
    assert message in train_net.config_error(args)


def test_train_net_reports_a_config_mistake_once_without_a_traceback():
    """As a user runs it, with two processes requested: one message, before any process starts."""
    run = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--num-gpus", "2", "--config-file", P10, "MODEL.FOO", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "Command Line Args" not in run.stdout
    assert run.stderr.count("error:") == 1
    assert "train_net.py: error: the command-line overrides: Non-existent key: MODEL.FOO" in run.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed exit
def test_a_stop_request_whose_exit_was_swallowed_is_raised_again():
    """Python may run the handler inside a __del__, which ignores the SystemExit it raises."""
    from point_sup_labels.process import exit_on_termination

    class Swallower:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here; its exit is ignored

    reached_the_end = False
    with pytest.raises(SystemExit) as exit_, exit_on_termination():
        Swallower()
        reached_the_end = True
    assert reached_the_end and exit_.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
