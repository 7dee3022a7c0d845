"""The self-training and drawing command-line tools on the real nuclei data."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

from point_sup.engine.experiment import load_config

ROOT = Path(__file__).resolve().parents[2]
P10_CONFIG = ROOT / "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml"
CONDINST_P10_CONFIG = ROOT / "configs/nuclei/condinst_R_18_FPN_P10.yaml"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _saved_model(tiny_overrides, tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model(load_config(str(P10_CONFIG), tiny_overrides))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    return tmp_path / "model.pth"


def test_generate_pseudo_masks_cli(nuclei_datasets, tiny_overrides, tmp_path):
    weights = _saved_model(tiny_overrides, tmp_path)
    out = tmp_path / "sub" / "pseudo.json"
    opts = [str(v) for v in tiny_overrides]
    _tool("generate_pseudo_masks").main(
        ["--config-file", str(P10_CONFIG), "--dataset", "nuclei_train_p10", "--output", str(out),
         *opts, "MODEL.WEIGHTS", str(weights)]
    )  # fmt: skip
    coco = json.loads(out.read_text())
    source = json.loads(Path(nuclei_datasets["train_p10"]).read_text())
    assert len(coco["annotations"]) == len(source["annotations"])
    assert all("counts" in a["segmentation"] for a in coco["annotations"])
    assert not list(out.parent.glob("*.tmp"))


def _mixed_sizes_p10(nuclei_datasets, tmp_path) -> Path:
    """The P10 training and validation tiles of the nuclei data in one COCO file, interleaved
    (train, val, train, val, train, train): 192x256 and 128x256 tiles, which the tiny test size
    resizes to 128x171 and 96x192, two padded sizes."""
    train = json.loads(Path(nuclei_datasets["train_p10"]).read_text())
    val = json.loads(Path(nuclei_datasets["val_p10"]).read_text())
    order = [(train, 0), (val, 0), (train, 1), (val, 1), (train, 2), (train, 3)]
    coco = {"categories": train["categories"], "images": [], "annotations": []}
    for new_id, (source, i) in enumerate(order, start=1):
        image = source["images"][i]
        coco["images"].append({**image, "id": new_id})
        for ann in source["annotations"]:
            if ann["image_id"] == image["id"]:
                coco["annotations"].append({**ann, "image_id": new_id, "id": len(coco["annotations"]) + 1})
    path = tmp_path / "mixed_p10.json"
    path.write_text(json.dumps(coco))
    return path


def _cli_args(nuclei_datasets, tiny_overrides, mixed_json, weights, out, *flags) -> list[str]:
    opts = [str(v) for v in tiny_overrides]
    return [
        "--config-file", str(P10_CONFIG), "--dataset", "mixed_p10", "--output", str(out),
        "--register", "mixed_p10", str(mixed_json), str(nuclei_datasets["image_root"]),
        *flags, *opts, "MODEL.WEIGHTS", str(weights),
    ]  # fmt: skip


def test_pseudo_masks_are_the_same_bytes_for_any_batch_size(nuclei_datasets, tiny_overrides, tmp_path):
    """Batches of 3 over two image sizes (a batch only holds one padded size) give the bytes of
    batch 1; records keep the input's image order."""
    weights = _saved_model(tiny_overrides, tmp_path)
    mixed = _mixed_sizes_p10(nuclei_datasets, tmp_path)
    written = {}
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}" / "pseudo.json"
        args = _cli_args(
            nuclei_datasets, tiny_overrides, mixed, weights, out, "--batch-size", str(batch_size)
        )
        _tool("generate_pseudo_masks").main(args)
        written[batch_size] = out.read_bytes()
    assert written[1] == written[3]
    coco, source = json.loads(written[1]), json.loads(mixed.read_text())
    assert [i["file_name"] for i in coco["images"]] == [i["file_name"] for i in source["images"]]
    assert len(coco["annotations"]) == len(source["annotations"])
    masks = [mask_util.decode(a["segmentation"]) for a in coco["annotations"]]
    assert sum(int(m.sum()) for m in masks) > 0, "the comparison must not be one of empty masks"


def _env(datasets_root: Path) -> dict:
    # The subprocess registers the nuclei sets on `import point_sup` from $DETECTRON2_DATASETS/nuclei.
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(datasets_root))


@pytest.mark.slow
def test_two_cpu_processes_write_the_bytes_of_one(nuclei_datasets, tiny_overrides, tmp_path):
    """--num-gpus 2 with MODEL.DEVICE cpu (gloo), run as users run it: each process predicts its
    half, rank 0 writes the file, byte-identical to a one-process run's."""
    weights = _saved_model(tiny_overrides, tmp_path)
    mixed = _mixed_sizes_p10(nuclei_datasets, tmp_path)
    one, two = tmp_path / "one" / "pseudo.json", tmp_path / "two" / "pseudo.json"
    _tool("generate_pseudo_masks").main(_cli_args(nuclei_datasets, tiny_overrides, mixed, weights, one))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "generate_pseudo_masks.py"), "--num-gpus", "2",
         *_cli_args(nuclei_datasets, tiny_overrides, mixed, weights, two)],
        env=_env(nuclei_datasets["datasets_root"]), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "from 2 processes" in log
    assert two.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in two.parent.iterdir()) == ["pseudo.json"]


@pytest.mark.parametrize(
    "mistake",
    ["missing_weights", "empty_weights", "output_is_input", "output_links_input", "output_is_weights"],
)
def test_a_bad_input_is_a_one_line_error_and_nothing_is_written(
    mistake, nuclei_datasets, tiny_overrides, tmp_path, capsys
):
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    weights = _saved_model(tiny_overrides, tmp_path / "model")
    mixed = _mixed_sizes_p10(nuclei_datasets, tmp_path / "data")
    before = mixed.read_bytes()
    out = tmp_path / "out" / "pseudo.json"
    if mistake == "missing_weights":
        weights = tmp_path / "model" / "no_such_model.pth"
    elif mistake == "empty_weights":
        weights = ""
    elif mistake == "output_is_input":
        out = mixed
    elif mistake == "output_is_weights":
        out = weights
    else:
        out = tmp_path / "data" / "link.json"
        out.symlink_to(mixed)
    listing = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        _tool("generate_pseudo_masks").main(_cli_args(nuclei_datasets, tiny_overrides, mixed, weights, out))
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("generate_pseudo_masks.py: error: ")
    expected = {
        "missing_weights": "no_such_model.pth does not exist",
        "empty_weights": "MODEL.WEIGHTS is empty",
        "output_is_input": "refusing to overwrite an input",
        "output_links_input": "refusing to overwrite an input",
        "output_is_weights": "is MODEL.WEIGHTS",
    }[mistake]
    assert expected in errors[0]
    assert sorted(p for p in tmp_path.rglob("*")) == listing
    assert mixed.read_bytes() == before


def test_visualize_points_red_and_blue(nuclei_datasets, tmp_path):
    written = _tool("visualize").main(
        ["--dataset", "nuclei_val_p10", "--output", str(tmp_path), "--num-images", "1"]
    )
    assert len(written) == 1
    img = np.asarray(Image.open(written[0]).convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    blue = (img[..., 2] > 200) & (img[..., 0] < 60) & (img[..., 1] < 60)
    assert red.sum() > 20 and blue.sum() > 20  # object points red, background points blue (Figure 1)


def test_visualize_draws_a_condinst_models_predictions_next_to_the_points(
    nuclei_datasets, tiny_overrides, tmp_path
):
    torch.manual_seed(0)
    model = build_model(load_config(str(CONDINST_P10_CONFIG), tiny_overrides))
    with torch.no_grad():  # untrained, but with boxes of 2 strides a side and masks filling them
        model.head.bbox_pred.bias.fill_(2.0)
        model.head.controller.bias[-1] = 5.0  # the bias of the dynamic head's output layer
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("condinst")
    weights = tmp_path / "condinst.pth"
    opts = [str(v) for v in tiny_overrides]
    out = tmp_path / "drawn"
    written = _tool("visualize").main(
        ["--dataset", "nuclei_val_p10", "--output", str(out), "--num-images", "1", "--score-threshold", "0",
         "--config-file", str(CONDINST_P10_CONFIG), *opts, "MODEL.WEIGHTS", str(weights)]
    )  # fmt: skip
    drawn = np.asarray(Image.open(written[0]).convert("RGB")).astype(int)
    (record,) = [  # the drawn image is named after its record's file
        r
        for r in json.loads(Path(nuclei_datasets["val_p10"]).read_text())["images"]
        if Path(r["file_name"]).stem == Path(written[0]).stem
    ]
    height, width = record["height"], record["width"]
    assert drawn.shape == (height, 2 * width, 3)  # the points panel, then the predictions panel
    image = np.asarray(Image.open(Path(nuclei_datasets["image_root"]) / record["file_name"]).convert("RGB"))
    # its 20 detections (score threshold 0): boxes and masks drawn over the image
    assert (np.abs(drawn[:, width:] - image.astype(int)).sum(axis=-1) > 30).mean() > 0.1
