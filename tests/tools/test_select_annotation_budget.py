"""The annotation-budget command line as a user runs it: real nuclei data, determinism, budget
matching across supervisions (a subprocess each), bad input answered by one error line and no output
(the tool's main in this process: each case would otherwise pay the start-up of point_sup)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from point_sup_labels.budget import dataset_seconds, select_images, subset_coco
from point_sup_labels.coco_format import dumps_json, read_json

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/select_annotation_budget.py"


def run(*args, cwd=None, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *extra, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _tool():
    spec = importlib.util.spec_from_file_location("select_annotation_budget", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL_MODULE = _tool()


def run_in_process(*args, capsys, cwd=None, monkeypatch=None) -> subprocess.CompletedProcess:
    """The tool's main as its command line would run it, here; exit code and output as a subprocess's."""
    if cwd is not None:
        monkeypatch.chdir(cwd)
    TOOL_MODULE.logger.handlers.clear()  # its handlers write to the streams of the call that made them
    capsys.readouterr()
    try:
        code = TOOL_MODULE.main(list(map(str, args)))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_help_answers_before_importing_anything():
    proc = run("--help", extra=("-X", "importtime"))
    assert proc.returncode == 0
    for option in ("--supervision", "--fraction", "--budget-hours", "--seed", "--spotting-seconds"):
        assert option in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not {"torch", "detectron2", "point_sup"} & imported


def test_real_runs_budget_matching_and_byte_identical_rerun(nuclei_datasets, tmp_path):
    masks, p10 = nuclei_datasets["train"], nuclei_datasets["train_p10"]
    m_out = tmp_path / "train_M_25.json"
    proc = run(masks, m_out, "--supervision", "M", "--fraction", "0.25", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    m = read_json(m_out)
    expected = select_images(read_json(masks), "M", fraction=0.25)
    assert m_out.read_bytes() == dumps_json(subset_coco(read_json(masks), expected))
    assert len(m["images"]) == 1 and len(m["annotations"]) == expected.num_objects > 0
    assert all("segmentation" in a for a in m["annotations"])
    for text in (
        f"selected 1 of 4 images (25.0%) and {expected.num_objects} of 100 objects",
        "categorization 0.061 h + spotting 0.030 h + per-object annotation",
        f"total {expected.total_hours:,.3f} h",
        "79.2 s per polygon mask; per image 219.5 s categorization + 109.8 s spotting",
    ):
        assert text in proc.stdout, text

    # P10 with the annotation time of the M subset: more images, the M subset's image first.
    hours = dataset_seconds(m, "M") / 3600
    assert hours == pytest.approx(expected.total_hours)
    p_out = tmp_path / "train_P10_budget_M25.json"
    args = (p10, p_out, "--supervision", "P10", "--budget-hours", repr(hours))
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    p = read_json(p_out)
    sel = select_images(read_json(p10), "P10", budget_hours=hours)
    assert sel.image_ids[0] == m["images"][0]["id"] and 1 < sel.num_images < 4
    assert [img["id"] for img in p["images"]] == sorted(sel.image_ids)  # input (file) order
    assert dataset_seconds(p, "P10") <= hours * 3600 < dataset_seconds(read_json(p10), "P10")
    assert all(len(a["point_coords"]) == 10 for a in p["annotations"])
    assert f"of a budget of {hours:,g} h" in proc.stdout and f"wrote {p_out}" in proc.stdout

    first = p_out.read_bytes()
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert p_out.read_bytes() == first  # byte-identical on a rerun


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1,')
    return path


# (arguments after INPUT OUTPUT, the INPUT, the message on stderr, the exit code)
BAD = {
    "fraction zero": (["--supervision", "M", "--fraction", "0"], "train", "--fraction: must be in (0, 1]", 2),
    "fraction above one": (
        ["--supervision", "M", "--fraction", "1.5"],
        "train",
        "must be in (0, 1], got 1.5",
        2,
    ),
    "fraction nan": (
        ["--supervision", "M", "--fraction", "nan"],
        "train",
        "--fraction: not a finite number",
        2,
    ),
    "zero budget": (["--supervision", "M", "--budget-hours", "0"], "train", "--budget-hours: must be > 0", 2),
    "negative budget": (["--supervision", "B", "--budget-hours", "-3"], "train", "must be > 0, got -3", 2),
    "unknown supervision": (
        ["--supervision", "P0", "--fraction", "1"],
        "train",
        "unknown supervision 'P0'",
        2,
    ),
    "another unknown": (["--supervision", "BoxInst", "--fraction", "1"], "train", "unknown supervision", 2),
    "both amounts": (
        ["--supervision", "M", "--fraction", "1", "--budget-hours", "9"],
        "train",
        "not allowed",
        2,
    ),
    "missing input": (["--supervision", "M", "--fraction", "1"], "missing", "does not exist", 2),
    "input a folder": (["--supervision", "M", "--fraction", "1"], "folder", "is not a file", 2),
    "malformed JSON": (["--supervision", "M", "--fraction", "1"], "broken", "broken.json: not valid JSON", 1),
    "budget fits no image": (["--supervision", "M", "--budget-hours", "0.01"], "train", "fits no image", 1),
    "masks for P10": (
        ["--supervision", "P10", "--fraction", "1"],
        "train",
        "annotation id=1, image id=1: no 'point_coords'/'point_labels': supervision P10 needs a P_N point",
        1,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_error_line_no_output(case, nuclei_datasets, tmp_path, capsys):
    args, which, message, code = BAD[case]
    inputs = {
        "train": nuclei_datasets["train"],
        "missing": tmp_path / "nothing.json",
        "folder": tmp_path,
        "broken": _bad_json(tmp_path),
    }
    out = tmp_path / "out.json"
    proc = run_in_process(inputs[which], out, *args, capsys=capsys)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))  # nothing, not even a temporary


def test_missing_output_folder_is_an_error_up_front(nuclei_datasets, tmp_path, capsys):
    proc = run_in_process(
        nuclei_datasets["train"],
        tmp_path / "no/such/dir/out.json",
        "--supervision",
        "M",
        "--fraction",
        "1",
        capsys=capsys,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"select_annotation_budget.py: error: the output directory {tmp_path}/no/such/dir of OUTPUT does not "
        "exist (see --help)"
    ]
    assert not (tmp_path / "no").exists()


def test_output_equal_to_input_is_refused(nuclei_datasets, tmp_path, capsys, monkeypatch):
    src = tmp_path / "data" / "train.json"
    src.parent.mkdir()
    src.write_bytes(Path(nuclei_datasets["train"]).read_bytes())
    before = (src.read_bytes(), src.stat().st_mtime_ns)
    (tmp_path / "link.json").symlink_to(src)
    os.link(src, tmp_path / "hard.json")
    for output, cwd in (
        (src, None),  # the same path
        ("train.json", src.parent),  # relative
        (tmp_path / "data/../data/./train.json", None),
        (tmp_path / "link.json", None),  # a symbolic link to the input
        (tmp_path / "hard.json", None),  # a hard link to the input
    ):
        proc = run_in_process(
            src,
            output,
            "--supervision",
            "M",
            "--fraction",
            "0.5",
            capsys=capsys,
            cwd=cwd,
            monkeypatch=monkeypatch,
        )
        assert proc.returncode == 2, (output, proc.stdout, proc.stderr)
        assert "is the INPUT file" in proc.stderr and "refusing to overwrite the input" in proc.stderr
        assert (src.read_bytes(), src.stat().st_mtime_ns) == before
    assert (tmp_path / "link.json").is_symlink()
