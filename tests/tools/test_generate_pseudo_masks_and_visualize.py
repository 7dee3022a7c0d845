"""The self-training and drawing command-line tools on the real nuclei data."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

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
