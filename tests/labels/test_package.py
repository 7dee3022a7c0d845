"""The P_N half imports neither torch nor Detectron2, so its tools start in a fraction of a second."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import point_sup_labels

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(point_sup_labels.__path__, "point_sup_labels."))


def test_every_module_imports_without_torch_or_detectron2():
    modules = _modules()
    assert {"point_sup_labels.simulate", "point_sup_labels.sharded", "point_sup_labels.annotation"} <= set(
        modules
    )
    code = (
        "import importlib, sys\n"
        "sys.modules['torch'] = sys.modules['detectron2'] = None  # any import of them raises\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'detectron2', 'point_sup')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['detectron2', 'torch']"  # only the blocked entries themselves


def _imported(argv: list[str]) -> set[str]:
    """Top-level packages that ``python -X importtime TOOL ...`` imports."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_the_conversion_and_annotation_tools_start_without_torch_or_detectron2(tmp_path):
    src = tmp_path / "in.json"
    image = {"id": 1, "file_name": "a.png", "height": 20, "width": 20}
    ann = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [2, 2, 10, 10],
        "segmentation": [[2, 2, 12, 2, 12, 12]],
    }
    src.write_text(
        json.dumps({"images": [image], "annotations": [ann], "categories": [{"id": 1, "name": "a"}]})
    )
    for argv in (
        ["tools/prepare_point_annotations.py", str(src), str(tmp_path / "out.json"), "--no-progress"],
        ["tools/prepare_point_annotations.py", "--help"],
        ["tools/convert_annotations.py", "--help"],
        ["tools/annotate.py", "--help"],
        ["tools/select_annotation_budget.py", "--help"],
    ):
        imported = _imported(argv)
        assert "point_sup_labels" in imported or "--help" in argv
        assert not imported & {"torch", "detectron2", "point_sup"}, argv
    assert json.loads((tmp_path / "out.json").read_text())["annotations"][0]["point_labels"]
