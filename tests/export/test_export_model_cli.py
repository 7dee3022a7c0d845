"""tools/export_model.py on a real nuclei tile: the file it writes, and the requests it refuses.

The model is the COCO Mask R-CNN P10 config shrunk by conftest's TINY_OVERRIDES, with seeded weights
saved as a checkpoint (and a CondInst one, for the head that does not script and for weights of
another architecture); the score threshold keeps a few detections of the random model (see
tests/export/test_export.py).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model

from point_sup import Predictor, model_zoo
from point_sup.export import ExportedModel

ROOT = Path(__file__).resolve().parents[2]
MASK_RCNN = "COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"
CONDINST = "COCO/condinst_R_50_FPN_3x_P10_point_aug.yaml"
# The tiny model's settings as a tool takes them: trailing KEY VALUE texts.
OVERRIDES = [
    *(str(v) for v in TINY_OVERRIDES),
    "DATASETS.TEST", "('nuclei_val',)",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.4978",
]  # fmt: skip


def _tool():
    spec = importlib.util.spec_from_file_location("tools_export_model", ROOT / "tools" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_model = _tool()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Seeded checkpoints of the tiny Mask R-CNN and CondInst, as Detectron2's checkpointer reads them."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name, config in (("mask_rcnn", MASK_RCNN), ("condinst", CONDINST)):
        torch.manual_seed(0)
        model = build_model(model_zoo.get_config(config, OVERRIDES, device="cpu"))
        files[name] = folder / f"{name}.pth"
        torch.save({"model": model.state_dict()}, files[name])
    return files


@pytest.fixture(scope="module")
def tiles(nuclei_datasets) -> Path:
    return Path(nuclei_datasets["image_root"])


def _argv(config: str, weights: Path, sample: Path, output: Path, *flags: str) -> list[str]:
    return [
        "--config-file", config,
        *flags,
        "--sample-image", str(sample),
        "--output", str(output),
        *OVERRIDES,
        "MODEL.WEIGHTS", str(weights),
    ]  # fmt: skip


@pytest.mark.slow
def test_onnx_export_writes_one_file_that_predicts_as_the_checkpoint(weights, tiles, tmp_path):
    """--format onnx writes FOLDER/model.onnx and nothing else (the folder created); run by
    ExportedModel it gives the checkpoint's predictions on another tile, cropped to another size."""
    out = tmp_path / "exported"
    flags = ["--format", "onnx", "--export-method", "tracing"]
    assert not out.exists()
    assert export_model.main(_argv(MASK_RCNN, weights["mask_rcnn"], tiles / "val_0.png", out, *flags)) == 0
    assert [p.name for p in out.iterdir()] == ["model.onnx"]

    exported = ExportedModel(out / "model.onnx")
    meta = exported.export_metadata
    assert (meta.family, meta.format, meta.method, meta.config) == ("mask_rcnn", "onnx", "tracing", MASK_RCNN)
    assert meta.class_names == ["nucleus"]
    predictor = Predictor(model_zoo.get_config(MASK_RCNN, OVERRIDES, device="cpu"), weights["mask_rcnn"])
    crop = np.ascontiguousarray(utils.read_image(str(tiles / "train_0.png"), format="BGR")[:150, :100])
    expected, got = predictor(crop), exported(crop)
    assert len(expected) >= 2 and len(got) == len(expected)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert got.pred_masks.shape == expected.pred_masks.shape == (len(expected), 150, 100)
    assert float((got.pred_masks != expected.pred_masks).flatten(1).float().mean(1).max()) <= 0.001


def test_bad_requests_exit_2_with_one_line_and_write_nothing(weights, tiles, tmp_path, capsys):
    """Each bad request: exit code 2, one error line naming the culprit, no output folder, no file."""
    out = tmp_path / "exported"
    sample = tiles / "val_0.png"
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    cases = {
        r"--format torchscript --export-method scripting: condinst: .*use --export-method tracing": _argv(
            CONDINST, weights["condinst"], sample, out, "--export-method", "scripting"
        ),
        r"--format onnx --export-method scripting: ONNX export records a trace": _argv(
            MASK_RCNN, weights["mask_rcnn"], sample, out, "--format", "onnx", "--export-method", "scripting"
        ),
        rf"model weights {re.escape(str(weights['condinst']))} do not fit the config's model": _argv(
            MASK_RCNN, weights["condinst"], sample, out, "--format", "onnx"
        ),
        rf"--sample-image: cannot read image {re.escape(str(tmp_path / 'missing.png'))}": _argv(
            MASK_RCNN, weights["mask_rcnn"], tmp_path / "missing.png", out
        ),
        rf"config file '{re.escape(str(broken))}' is not valid YAML": _argv(
            str(broken), weights["mask_rcnn"], sample, out
        ),
        r"argument --format: invalid choice: 'tflite'": _argv(
            MASK_RCNN, weights["mask_rcnn"], sample, out, "--format", "tflite"
        ),
    }
    for message, argv in cases.items():
        with pytest.raises(SystemExit) as e:
            export_model.main(argv)
        assert e.value.code == 2, message
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("export_model.py: error: "), err
        assert re.search(message, err), err
        assert not out.exists(), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]


def test_a_refused_export_leaves_an_existing_output_folder_as_it_was(weights, tiles, tmp_path, capsys):
    """Into a folder that exists (with a file of its own): a refused request adds nothing to it."""
    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = _argv(CONDINST, weights["condinst"], tiles / "val_0.png", out, "--export-method", "scripting")
    with pytest.raises(SystemExit) as e:
        export_model.main(argv)
    assert e.value.code == 2 and "condinst" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
