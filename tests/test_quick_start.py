"""README.md's quick start, as written, in a fresh virtualenv holding a non-editable install of the repo.

The fresh virtualenv (``python -m venv --without-pip``) reuses this environment's torch and
detectron2 (several GB) through one ``.pth`` line naming this environment's site-packages
directory. A plain path line only adds that directory to ``sys.path``: the ``.pth`` files inside it
are not run, so the editable point_sup installed there stays unseen, and the test checks that
``point_sup`` (and its configs) are imported from the new environment. The repository is copied and
installed with ``pip install --no-deps --no-build-isolation --ignore-installed`` (a wheel is built:
what ``pip install .`` does), and each snippet runs as its own script under ``python -I`` (no
current directory, no ``PYTHONPATH`` on ``sys.path``), from a folder laid out as ``make demo`` leaves
it: ``output/demo/P10/model_final.pth`` (here a seeded, untrained nuclei P10 model: the snippets
only need one that loads) and ``datasets/nuclei``.

The snippets are the ``python`` code blocks of README.md's "Quick start" section; :data:`FALLBACK`
holds the agreed text, used only while the README has no such section.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from point_sup.engine.experiment import load_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Not copied into the installed copy: environments, outputs, caches and data.
NOT_COPIED = (".git", ".venv", "output", "datasets", "build", "dist", "__pycache__", "*.egg-info", ".*cache")
TIMEOUT = 300

FALLBACK = [
    """\
from point_sup import Predictor, draw_predictions, model_zoo

cfg = model_zoo.get_config("nuclei/mask_rcnn_R_18_FPN_P10.yaml")  # MODEL.DEVICE: cuda if there is one
predictor = Predictor(cfg, "output/demo/P10/model_final.pth")      # the P10 model `make demo` trained
instances = predictor("datasets/nuclei/images/val_0.png")          # or an H x W x 3 array
print(f"{len(instances)} nuclei; scores {instances.scores[:3].tolist()}")
picture = draw_predictions("datasets/nuclei/images/val_0.png", instances)  # H x W x 3 RGB uint8
""",
    """\
import json
import point_sup_labels

coco = json.load(open("datasets/nuclei/annotations/nuclei_train.json"))  # COCO instances with masks
p10, stats = point_sup_labels.simulate_coco(coco, num_points=10, seed=0)   # a new dict; coco unchanged
print(stats)
""",
    """\
from point_sup import model_zoo

print(model_zoo.get_config_file("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"))
cfg = model_zoo.get_config("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml", overrides=["SOLVER.IMS_PER_BATCH", 8])
""",
]


def quick_start_snippets(readme: str) -> list[str]:
    """The ``python`` blocks of the "Quick start" section (up to the next ``## `` heading), or
    :data:`FALLBACK` where there is no such section."""
    section = re.search(r"^## Quick start[^\n]*\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M) if section else []
    return blocks or FALLBACK


def _run(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DETECTRON2_DATASETS")}
    env["OMP_NUM_THREADS"] = "2"
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> tuple[Path, Path]:
    """(its python, its site-packages) with the repository installed, not editable."""
    tmp = tmp_path_factory.mktemp("quick_start")
    copy = tmp / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*NOT_COPIED))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "_point_sup_test_base_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(
        python,
        ["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--no-cache-dir", str(copy)],
        cwd=tmp,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return python, site


@pytest.fixture(scope="module")
def demo_folder(nuclei_datasets, tmp_path_factory) -> Path:
    """A working directory as ``make demo`` leaves it: the nuclei data and a P10 model."""
    work = tmp_path_factory.mktemp("demo_cwd")
    shutil.copytree(Path(nuclei_datasets["datasets_root"]) / "nuclei", work / "datasets" / "nuclei")
    cfg = load_config(str(ROOT / "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model_dir = work / "output" / "demo" / "P10"
    model_dir.mkdir(parents=True)
    DetectionCheckpointer(build_model(cfg), save_dir=str(model_dir)).save("model_final")
    return work


def test_the_installed_copy_is_imported_with_its_configs(fresh_venv, tmp_path):
    python, site = fresh_venv
    probe = _run(
        python,
        ["-I", "-c", "import json, point_sup, point_sup_labels; from point_sup import model_zoo; "
         "print(json.dumps([point_sup.__file__, point_sup_labels.__file__, str(model_zoo.configs_dir()), "
         "model_zoo.list_configs()]))"],
        cwd=tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    point_sup_file, labels_file, configs, names = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(point_sup_file).is_relative_to(site) and Path(labels_file).is_relative_to(site)
    assert Path(configs) == site / "point_sup" / "model_zoo_configs"
    assert names == sorted(
        p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")
    )


def test_readme_quick_start_runs_as_written(fresh_venv, demo_folder):
    python, site = fresh_venv
    snippets = quick_start_snippets((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any("Predictor(" in s for s in snippets) and any("simulate_coco(" in s for s in snippets)
    for k, snippet in enumerate(snippets):
        script = demo_folder / f"quick_start_{k}.py"
        script.write_text(snippet)
        run = _run(python, ["-I", script.name], cwd=demo_folder)
        assert run.returncode == 0, f"snippet {k}:\n{snippet}\nstderr:\n{run.stderr[-3000:]}"
        if "get_config_file(" in snippet:  # the printed config comes from the installed package
            printed = next(line for line in run.stdout.splitlines() if line.endswith(".yaml"))
            assert Path(printed).is_relative_to(site), printed
        if "Predictor(" in snippet:
            assert re.search(r"^\d+ nuclei; scores \[", run.stdout, re.M), run.stdout
        if "simulate_coco(" in snippet:
            assert run.stdout.strip(), "the snippet prints the simulation's statistics"
