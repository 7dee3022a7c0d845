"""Every command of the recipe block (docs/reproducing.md), as written, on replicas of COCO, LVIS,
Cityscapes and VOC.

The replicas (tests/replicas) have the on-disk layouts of datasets/README.md and real image content;
the commands run from a working directory with the repository's tools/ and configs/, with
``$DETECTRON2_DATASETS`` pointing at the replicas, changed only by the scale knobs of
tests/recipes/scale.py (shown in docs/reproducing.md). The whole block runs in one subprocess
(tests/recipes/run_recipes.py); then each command's outcome is checked: trained models, evaluation
by each dataset's own evaluator, the simulator's files, the self-training and transfer chains.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from recipes.readme_recipes import RECIPES_DOC, configs_of_recipes, recipe_groups
from recipes.scale import RECIPE_SCALE_FLAGS, RECIPE_SCALE_OPTS, SCALE_KEYS
from replicas import nuclei_tiles
from replicas.cityscapes import build_cityscapes
from replicas.coco import build_coco, build_lvis, build_voc

from point_sup import add_point_sup_config

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

IMAGENET = "detectron2://ImageNetPretrained/"


def write_random_imagenet_weights(cache_dir: Path, config_files: set[str]) -> list[Path]:
    """Randomly initialised stand-ins for the ImageNet checkpoints the configs name, where Detectron2
    looks for a downloaded ``detectron2://`` file ($FVCORE_CACHE/detectron2/...), in Detectron2's
    checkpoint format (matched to the model by name, as converted torchvision weights are). The last
    norm of every residual branch is zero (an identity block at start, as in zero-gamma
    initialisation) so that activations of a random deep network stay finite."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    written = []
    for config in sorted(config_files):
        cfg = add_point_sup_config(get_cfg())
        cfg.merge_from_file(str(ROOT / config))
        if not cfg.MODEL.WEIGHTS.startswith(IMAGENET):
            continue
        path = cache_dir / "detectron2" / cfg.MODEL.WEIGHTS[len("detectron2://") :]
        if path.exists():
            continue
        torch.manual_seed(0)
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        state = {
            key: (torch.zeros_like(value) if key.endswith("conv3.norm.weight") else value).numpy()
            for key, value in backbone.state_dict().items()
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(
                {"model": state, "__author__": "point_sup recipe test (random)", "matching_heuristics": True},
                f,
            )
        written.append(path)
    return written


@pytest.fixture(scope="module")
def recipe_workdir(nuclei_datasets, tmp_path_factory):
    """A user's working directory: tools/ and configs/ of the repository, datasets/ with the replicas,
    a download cache with the stand-in ImageNet weights."""
    work = tmp_path_factory.mktemp("recipes")
    for name in ("tools", "configs"):
        (work / name).symlink_to(ROOT / name)
    datasets = work / "datasets"
    tiles = nuclei_tiles(nuclei_datasets)
    build_coco(datasets, tiles)
    build_lvis(datasets)
    build_voc(datasets, tiles)
    build_cityscapes(datasets, tiles)
    write_random_imagenet_weights(work / "cache", configs_of_recipes(recipe_groups()))
    return work


def test_scale_knobs_touch_no_recipe_key():
    keys = RECIPE_SCALE_OPTS[0::2]
    assert set(keys) <= SCALE_KEYS, set(keys) - SCALE_KEYS
    forbidden = (
        "MASK_FORMAT",
        "TRAIN_ON_PRED_BOXES",
        "POINT_LOSS",
        "WEIGHTS",
        "DATASETS",
        "STEPS",
        "NUM_CLASSES",
    )
    assert not [k for k in keys if any(word in k for word in forbidden)]
    assert set(RECIPE_SCALE_FLAGS) == {"--num-gpus", "--workers"}


def test_readme_shows_the_scale_knobs_verbatim():
    text = RECIPES_DOC.read_text(encoding="utf-8")
    scale = (HERE / "scale.py").read_text()
    start = scale.index("RECIPE_SCALE_OPTS = [")
    shown = scale[start : scale.index("# The only config keys")].strip()
    assert shown in text, f"{RECIPES_DOC.relative_to(ROOT)} must show tests/recipes/scale.py's lists verbatim"


def test_readme_links_the_recipes():
    """The front page sends readers to the recipe block's page."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"]({RECIPES_DOC.relative_to(ROOT).as_posix()})" in readme


def test_every_recipe_config_is_a_shipped_config():
    for config in configs_of_recipes(recipe_groups()):
        assert (ROOT / config).is_file(), config


def _train_outputs(record: dict, work: Path) -> Path:
    argv = record["argv"]
    output = Path(argv[argv.index("OUTPUT_DIR") + 1])
    return output if output.is_absolute() else work / output


def _segm_results(record: dict, work: Path) -> dict:
    """The mask metrics the command's evaluation reported: what --eval-only returns, or what the
    trainer's final evaluation wrote to metrics.json (``segm/AP``, ...)."""
    if "--eval-only" in record["argv"]:
        # run_recipes.py writes a NaN metric (an evaluation without detections, which a model of this
        # scale can end with, as the training's own final evaluation reports) as "nan".
        segm = {k: float(v) if v == "nan" else v for k, v in record["result"]["segm"].items()}
    else:
        metrics = [
            json.loads(line)
            for line in (_train_outputs(record, work) / "metrics.json").read_text().splitlines()
        ]
        evaluated = [m for m in metrics if "segm/AP" in m]
        assert evaluated, f"no evaluation after training: {record['command']}"
        segm = {k.split("/", 1)[1]: v for k, v in evaluated[-1].items() if k.startswith("segm/")}
    assert isinstance(segm["AP"], float), record["command"]
    if not math.isfinite(segm["AP"]):
        # NaN is the evaluators' "no predictions": a one-step model can lose all of its few
        # detections to empty boxes (FCOS's zero-length box sides). Anything else is a bug.
        assert _detections(record, work) == 0, f"AP {segm['AP']} with detections: {record['command']}"
    return segm


def _detections(record: dict, work: Path) -> int | None:
    """How many detections the command's COCO-style evaluator wrote (None: no results file)."""
    inference = _train_outputs(record, work) / "inference"  # build_evaluator's output folder
    for name in ("coco_instances_results.json", "lvis_instances_results.json"):
        files = list(inference.rglob(name))
        if files:
            return sum(len(json.loads(f.read_text())) for f in files)
    return None


@pytest.mark.slow
def test_readme_recipes_run_as_written(recipe_workdir):
    work = recipe_workdir
    results = work / "results.jsonl"
    results.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(work / "datasets"),
        "FVCORE_CACHE": str(work / "cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(HERE / "run_recipes.py"), str(RECIPES_DOC), str(results)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    failed = [r for r in records if not r["ok"]]
    assert proc.returncode == 0 and not failed, failed[0]["error"] if failed else proc.stderr[-4000:]
    check_records(records, work)


def check_records(records: list[dict], work: Path) -> None:
    """What each command of the block must have done (records of run_recipes.py, in ``work``)."""
    groups = recipe_groups()
    assert [r["command"] for r in records] == [c for g in groups for c in g.commands]
    for record in records:
        tool = Path(record["argv"][0]).name
        if tool == "train_net.py" and "--eval-only" not in record["argv"]:
            output = _train_outputs(record, work)
            assert record["model_final_bytes"], f"no model_final.pth: {record['command']}"
            metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
            # the mask losses: loss_mask (masks or points; PointRend's loss_mask_point), BoxInst's two
            mask_losses = ("loss_mask", "loss_prj", "loss_pairwise")
            trained = [m for m in metrics if any(k.startswith(mask_losses) for k in m)]
            losses = {k: v for k, v in (trained[-1] if trained else {}).items() if k.startswith(mask_losses)}
            assert losses and all(math.isfinite(v) for v in losses.values()), (record["command"], losses)
        if tool == "train_net.py":
            _segm_results(record, work)

    by_group = {g.id: [r for r in records if r["group"] == g.id] for g in groups}
    # Each dataset's own evaluator: COCO-style (AP per size), LVIS (rare/common/frequent), Cityscapes
    # (its AP and AP50 only), VOC as COCO-style mask AP50.
    assert {"APs", "APm", "APl"} <= set(_segm_results(by_group["coco"][-1], work))
    assert {"APr", "APc", "APf"} <= set(_segm_results(by_group["lvis"][-1], work))
    assert "AP50" in _segm_results(by_group["voc"][-1], work)
    assert set(_segm_results(by_group["cityscapes"][-1], work)) == {"AP", "AP50"}

    datasets = work / "datasets"
    coco_ann = datasets / "coco" / "annotations"
    # The simulator's files: P_N with N points per object, five distinct versions (v0 is [coco]'s),
    # 5 % of the labels flipped, LVIS kept in LVIS format, Cityscapes with integer image ids.
    clean = json.loads((coco_ann / "instances_train2017_n10_v0_without_masks.json").read_text())
    for n in (1, 2, 3, 5, 20, 50):
        pn = json.loads((coco_ann / f"instances_train2017_n{n}_v0_without_masks.json").read_text())
        assert {len(a["point_labels"]) for a in pn["annotations"] if a["bbox"][2] * a["bbox"][3] > 0} == {n}
    versions = [
        (coco_ann / f"instances_train2017_n10_v{k}_without_masks.json").read_bytes() for k in range(5)
    ]
    assert len(set(versions)) == 5 and json.loads(versions[0]) == clean
    labels = [lab for a in clean["annotations"] for lab in a["point_labels"]]
    for mode in ("random", "boundary"):
        noisy = json.loads((coco_ann / f"instances_train2017_n10_v0_{mode}5_without_masks.json").read_text())
        flipped = sum(
            a != b
            for a, b in zip(labels, [x for a in noisy["annotations"] for x in a["point_labels"]], strict=True)
        )
        assert flipped == int(0.05 * len(labels) + 0.5), (mode, flipped, len(labels))  # floor(R T + 0.5)
    lvis = json.loads((datasets / "lvis" / "lvis_v1_train_n10_v0_without_masks.json").read_text())
    assert all("coco_url" in img and "file_name" not in img for img in lvis["images"])
    cityscapes = json.loads(
        (datasets / "cityscapes" / "cityscapes_fine_instance_seg_train_n10_v0_without_masks.json").read_text()
    )
    assert all(isinstance(img["id"], int) for img in cityscapes["images"])
    assert all(
        (datasets / "cityscapes/leftImg8bit/train" / img["file_name"]).is_file()
        for img in cityscapes["images"]
    )

    # Self-training: one pseudo mask (RLE) per non-crowd box, images relative to coco/train2017, and the
    # stage-2 config's own mask format.
    pseudo = json.loads((coco_ann / "instances_train2017_pseudo_masks.json").read_text())
    assert len(pseudo["annotations"]) == sum(1 for a in clean["annotations"] if not a["iscrowd"])
    assert all("counts" in a["segmentation"] for a in pseudo["annotations"])
    assert all((datasets / "coco/train2017" / img["file_name"]).is_file() for img in pseudo["images"])
    stage2 = (work / "output/coco_self_training/config.yaml").read_text()
    assert "MASK_FORMAT: bitmask" in stage2 and "coco_2017_train_pseudo_masks" in stage2

    # Transfer: the VOC fine-tunings start from the COCO checkpoints their configs name.
    for target, init in (("M_from_coco_M", "M"), ("P10_from_coco_M", "M"), ("M_from_coco_P10", "P10")):
        log = (work / f"output/voc_mask_rcnn_R_50_FPN_{target}/log.txt").read_text()
        assert f"Loading from output/coco_mask_rcnn_R_50_FPN_3x_{init}/model_final.pth" in log, target

    # Figure 5: nested subsets of one image order, the same images for M and P10 at a fraction.
    subsets = {}
    for kind in ("M", "P10"):
        for f in ("0.1", "0.2", "0.5"):
            data = json.loads((coco_ann / f"instances_train2017_{kind}_f{f}.json").read_text())
            subsets[kind, f] = {img["id"] for img in data["images"]}
    assert subsets["M", "0.1"] < subsets["M", "0.2"] < subsets["M", "0.5"]
    assert all(subsets["M", f] == subsets["P10", f] for f in ("0.1", "0.2", "0.5"))
