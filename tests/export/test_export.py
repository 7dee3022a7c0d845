"""point_sup.export on the real nuclei tiles: every head's exported file predicts as eager inference.

Each head is a config of configs/COCO shrunk by conftest's TINY_OVERRIDES (ResNet-18, 128-px test
size), with seeded random weights. A random model scores its boxes nearly alike, so each head has a
seed, a score threshold and a blank image chosen (and checked here, on eager inference) so that it
keeps at least two detections on each of two tiles and the network outputs none at all on the blank
image: one exported file then meets a full tile, a crop of another tile in the other orientation (two
input sizes), and zero detections. Each threshold is more than 2e-4 from the score of every
detection on these images (measured with up to 100 detections), where the exported files' scores
differ from eager by less than 1e-6.

Every (head, format, method) is exported once per module (``exports``), and the eager results are
computed once per image; the comparisons are: boxes and scores within 1e-4, classes equal, masks
equal except on at most 0.1 % of each mask's pixels (contour ties), both on the full outputs at the
image's size (``ExportedModel(path)(image)`` against Detectron2's ``DefaultPredictor``) and on the
network's raw outputs (``ExportedModel.raw`` against ``model.inference(..., do_postprocess=False)``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES
from detectron2.data import detection_utils as utils
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from point_sup import model_zoo
from point_sup.export import ExportedModel, ExportError, ExportOptions, export_model, support_error
from point_sup.export.exporter import ONNX_OPSET, model_family
from point_sup.export.metadata import METADATA_KEY
from point_sup.export.runtime import RawDetections, prepare_input

TOLERANCE = 1e-4  # boxes and scores, in pixels and probability
MASK_VALUE_TOLERANCE = 1e-3  # raw mask probabilities / logits
MASK_PIXELS = 0.001  # the share of a mask's pixels that may differ (ties on the contour)


@dataclass(frozen=True)
class Head:
    """A shipped config, shrunk, with seeded weights.

    Attributes:
        config: the shipped config's name.
        family: what :func:`point_sup.export.exporter.model_family` calls its model.
        seed: ``torch.manual_seed`` before the model is built.
        score_threshold: ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` / ``MODEL.FCOS.INFERENCE_TH_TEST``:
            between the best raw score on the blank image (before post-processing drops empty boxes)
            and the second best on each tile.
        blank: the grey level of the blank image (on which the network detects nothing).
    """

    config: str
    family: str
    seed: int
    score_threshold: float
    blank: int


HEADS = {
    "mask_rcnn": Head("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml", "mask_rcnn", 0, 0.4978, 0),
    "point_rend": Head("COCO/point_rend_R_50_FPN_3x_P10_point_aug.yaml", "point_rend", 0, 0.4978, 0),
    "implicit_point_rend": Head(
        "COCO/implicit_point_rend_R_50_FPN_3x_P10_point_aug.yaml", "implicit_point_rend", 0, 0.4978, 0
    ),
    "implicit_point_rend_small": Head(
        "COCO/implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml", "implicit_point_rend", 0, 0.4978, 0
    ),
    "condinst": Head("COCO/condinst_R_50_FPN_3x_P10_point_aug.yaml", "condinst", 1, 0.0801, 128),
    "boxinst": Head("COCO/boxinst_R_50_FPN_3x_B.yaml", "condinst", 11, 0.0824, 128),
}

# Every head by tracing to TorchScript and to ONNX; scripting for the Mask R-CNN family.
EXPORTS = [
    *[(head, "torchscript", "tracing") for head in HEADS],
    *[(head, "onnx", "tracing") for head in HEADS],
    ("mask_rcnn", "torchscript", "scripting"),
]
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")

# The test-time resize (shortest edge 128, longest at most 192), worked out by hand for each image.
INPUT_SIZES = {"tile": (96, 192), "crop": (192, 128), "blank": (96, 192)}


def export_id(export: tuple[str, str, str]) -> str:
    return "-".join(export)


class Exports:
    """Each head's seeded model, eager results and exported files, made on first use."""

    def __init__(self, folder: Path, images: dict[str, np.ndarray]):
        self.folder = folder
        self.images = images
        self._predictors: dict[str, DefaultPredictor] = {}
        self._files: dict[tuple[str, str, str], Path] = {}
        self._exported: dict[tuple[str, str, str], ExportedModel] = {}
        self._eager: dict[tuple[str, str], tuple[Instances, Instances, torch.Tensor]] = {}

    def cfg(self, head: str):
        threshold = HEADS[head].score_threshold
        overrides = [
            *TINY_OVERRIDES,
            "DATASETS.TEST", ("nuclei_val",),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", threshold,
            "MODEL.FCOS.INFERENCE_TH_TEST", threshold,
        ]  # fmt: skip
        return model_zoo.get_config(HEADS[head].config, overrides=overrides, device="cpu")

    def predictor(self, head: str) -> DefaultPredictor:
        if head not in self._predictors:
            cfg = self.cfg(head)
            assert cfg.INPUT.FORMAT == "BGR"  # the arrays below are BGR for both predictors
            torch.manual_seed(HEADS[head].seed)
            self._predictors[head] = DefaultPredictor(cfg)
        return self._predictors[head]

    def image(self, head: str, name: str) -> np.ndarray:
        if name == "blank":
            return np.full_like(self.images["tile"], HEADS[head].blank)
        return self.images[name]

    def eager(self, head: str, name: str) -> tuple[Instances, Instances, torch.Tensor]:
        """Eager inference on image ``name``: the full outputs, the raw ones, and the network's input
        (DefaultPredictor's own resize, in a batch of one image, as the exported network takes it)."""
        if (head, name) not in self._eager:
            predictor = self.predictor(head)
            image = self.image(head, name)
            resized = predictor.aug.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            with torch.no_grad():
                raw = predictor.model.inference([{"image": tensor}], do_postprocess=False)[0]
            self._eager[head, name] = predictor(image)["instances"].to("cpu"), raw.to("cpu"), tensor
        return self._eager[head, name]

    def exported(self, export: tuple[str, str, str]) -> ExportedModel:
        if export not in self._exported:
            self._exported[export] = ExportedModel(self.file(export))
        return self._exported[export]

    def file(self, export: tuple[str, str, str]) -> Path:
        if export not in self._files:
            head, format, method = export
            path = self.folder / f"{export_id(export)}{SUFFIX[format]}"
            predictor = self.predictor(head)
            export_model(
                predictor.model,
                predictor.cfg,
                self.images["tile"],
                ExportOptions(format, method),
                path,
                config_name=HEADS[head].config,
            )
            self._files[export] = path
        return self._files[export]


@pytest.fixture(scope="module")
def images(nuclei_datasets) -> dict[str, np.ndarray]:
    """BGR arrays: a 256 x 128 validation tile (the export's sample) and a 100 x 150 crop of a
    training tile (the other orientation)."""
    root = Path(nuclei_datasets["image_root"])
    tile = utils.read_image(str(root / "val_0.png"), format="BGR")
    crop = np.ascontiguousarray(utils.read_image(str(root / "train_0.png"), format="BGR")[:150, :100])
    assert tile.shape == (128, 256, 3) and crop.shape == (150, 100, 3)
    return {"tile": tile, "crop": crop}


@pytest.fixture(scope="module")
def exports(images, tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("exports"), images)


# ------------------------------------------------------------------------------------------------
# Comparisons
def _mask_kind(head: str) -> str:
    return "image_logits" if HEADS[head].family == "condinst" else "box_probabilities"


def _mask_threshold(mask_kind: str) -> float:
    return 0.0 if mask_kind == "image_logits" else 0.5


def assert_masks_agree(expected: torch.Tensor, got: torch.Tensor) -> None:
    """(N, ...) bool masks: the same shape, each differing on at most MASK_PIXELS of its pixels."""
    assert got.dtype == torch.bool and got.shape == expected.shape
    if len(expected):
        differing = (expected != got).flatten(1).float().mean(dim=1)
        assert float(differing.max()) <= MASK_PIXELS, differing


def assert_same_instances(expected: Instances, got: Instances) -> None:
    """Full outputs at the image's size: boxes and scores within TOLERANCE, classes and masks equal."""
    assert got.image_size == expected.image_size
    assert len(got) == len(expected)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=TOLERANCE, rtol=0)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    height, width = expected.image_size
    assert got.pred_masks.shape == (len(expected), height, width)
    assert_masks_agree(expected.pred_masks, got.pred_masks)


def assert_same_raw(expected: Instances, got: RawDetections) -> None:
    """Raw outputs in the input's frame: ``expected`` from ``model.inference(do_postprocess=False)``."""
    masks = expected.get("pred_mask_logits" if got.mask_kind == "image_logits" else "pred_masks")
    assert got.boxes.shape == (len(expected), 4) and got.classes.dtype == torch.int64
    torch.testing.assert_close(got.boxes, expected.pred_boxes.tensor, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=TOLERANCE, rtol=0)
    assert torch.equal(got.classes, expected.pred_classes)
    assert got.masks.shape == masks.shape
    torch.testing.assert_close(got.masks, masks, atol=MASK_VALUE_TOLERANCE, rtol=0)
    threshold = _mask_threshold(got.mask_kind)
    assert_masks_agree(masks > threshold, got.masks > threshold)


# ------------------------------------------------------------------------------------------------
# Exported files against eager inference
@pytest.mark.slow
@pytest.mark.parametrize("export", EXPORTS, ids=export_id)
def test_one_file_predicts_as_eager_on_two_image_sizes(exports, export):
    """A file exported from the tile predicts as the model on the tile and on a crop of another
    orientation (both input sizes differ): full outputs and raw outputs."""
    head = export[0]
    exported = exports.exported(export)
    for name in ("tile", "crop"):
        image = exports.image(head, name)
        expected, expected_raw, tensor = exports.eager(head, name)
        assert len(expected) >= 2, f"{head} on the {name}: the test needs detections"
        assert tuple(tensor.shape) == (3, *INPUT_SIZES[name])
        assert torch.equal(prepare_input(image, exported.export_metadata), tensor)
        raw = exported.raw(tensor)
        assert_same_raw(expected_raw, raw)
        # What exported(image) returns (test_zero_detections calls it): raw, post-processed.
        assert_same_instances(expected, exported.postprocess(raw, INPUT_SIZES[name], image.shape[:2]))


@pytest.mark.slow
@pytest.mark.parametrize("export", EXPORTS, ids=export_id)
def test_zero_detections(exports, export):
    """On a blank image the model detects nothing, and so does the file exported from the tile (where
    it detects objects): empty outputs of the right shapes, not an error."""
    head = export[0]
    exported = exports.exported(export)
    image = exports.image(head, "blank")
    assert len(exports.eager(head, "tile")[0]) >= 2  # the file's sample, where the model detects objects
    expected, expected_raw, tensor = exports.eager(head, "blank")
    assert len(expected) == 0
    assert torch.equal(prepare_input(image, exported.export_metadata), tensor)
    raw = exported.raw(tensor)
    assert raw.boxes.shape == (0, 4) and raw.scores.shape == (0,) and raw.classes.shape == (0,)
    assert_same_raw(expected_raw, raw)
    instances = exported(image)
    assert len(instances) == 0 and instances.image_size == image.shape[:2]
    assert instances.pred_masks.shape == (0, *image.shape[:2])
    assert_same_instances(expected, instances)


@pytest.mark.slow
@pytest.mark.parametrize("export", EXPORTS, ids=export_id)
def test_the_file_describes_itself(exports, export):
    """The metadata stored in the file: what was exported, how, and what the runner needs (resize,
    channel order, mask kind, class names of the config's test set)."""
    head, format, method = export
    cfg = exports.cfg(head)
    meta = exports.exported(export).export_metadata
    condinst = HEADS[head].family == "condinst"
    assert (meta.family, meta.config) == (HEADS[head].family, HEADS[head].config)
    assert (meta.format, meta.method) == (format, method)
    assert (meta.input_format, meta.min_size_test, meta.max_size_test) == ("BGR", 128, 192)
    assert meta.mask_kind == _mask_kind(head)
    assert meta.mask_stride == (cfg.MODEL.CONDINST.MASK_OUT_STRIDE if condinst else 0)
    assert meta.crop_to_box == (condinst and cfg.MODEL.CONDINST.INFER_CROP_TO_BOX)
    assert meta.num_classes == 1 and meta.class_names == ["nucleus"]


@pytest.mark.slow
def test_an_onnx_file_takes_one_image_without_a_batch_axis(exports):
    """The ONNX graph's contract: one (3, height, width) image in (a batch of one, without the axis),
    height and width free; every output's first axis is the number of detections; opset ONNX_OPSET;
    the metadata under its key."""
    import onnx

    model = onnx.load(str(exports.file(("mask_rcnn", "onnx", "tracing"))))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in model.graph.input] == [("image", [3, "height", "width"])]
    outputs = {o.name: dims(o) for o in model.graph.output}
    assert tuple(outputs) == OUTPUT_NAMES
    assert all(shape[0] == "detections" for shape in outputs.values())
    assert json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))["family"]


# ------------------------------------------------------------------------------------------------
# Without point_sup
TORCHSCRIPT_RUNNER = """
import sys
import torch
import torchvision  # registers the nms / roi_align operators the graphs call

torch.set_num_threads(1)
image = torch.load(sys.argv[1])
outputs = {}
for path in sys.argv[3:]:
    with torch.no_grad(), torch.jit.optimized_execution(False):  # as ExportedModel runs them
        outputs[path] = list(torch.jit.load(path)(image))
torch.save(outputs, sys.argv[2])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("point_sup", "detectron2")))
"""

ONNX_RUNNER = """
import json
import sys
import numpy as np
import onnxruntime

image = np.load(sys.argv[1])
arrays, families = {}, {}
for k, path in enumerate(sys.argv[3:]):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    families[path] = json.loads(session.get_modelmeta().custom_metadata_map["point_sup"])["family"]
    for name, value in zip(("boxes", "scores", "classes", "masks"), session.run(None, {"image": image})):
        arrays[f"{k}.{name}"] = value
np.savez(sys.argv[2], **arrays)
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("point_sup", "detectron2", "torch"))
print(json.dumps({"families": families, "imported": imported}))
"""


def _run(script: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_torchscript_files_run_with_torch_and_torchvision_alone(exports, tmp_path):
    """Every TorchScript file, loaded and run by a Python that imports torch and torchvision only
    (no point_sup, no Detectron2), gives the model's raw outputs on the tile."""
    files = {export: exports.file(export) for export in EXPORTS if export[1] == "torchscript"}
    torch.save(exports.eager("mask_rcnn", "tile")[2], tmp_path / "image.pt")  # every head's input
    imported = _run(TORCHSCRIPT_RUNNER, "image.pt", "outputs.pt", *map(str, files.values()), cwd=tmp_path)
    assert imported == "[]"
    outputs = torch.load(tmp_path / "outputs.pt")
    for (head, _, _), path in files.items():
        raw = RawDetections(*outputs[str(path)], mask_kind=_mask_kind(head))
        assert_same_raw(exports.eager(head, "tile")[1], raw)


@pytest.mark.slow
def test_onnx_files_run_with_onnxruntime_alone(exports, tmp_path):
    """Every ONNX file, loaded and run by a Python that imports numpy and onnxruntime only (no torch,
    no point_sup), gives the model's raw outputs on the tile, and its metadata reads as JSON."""
    files = {export: exports.file(export) for export in EXPORTS if export[1] == "onnx"}
    np.save(tmp_path / "image.npy", exports.eager("mask_rcnn", "tile")[2].numpy())  # every head's input
    paths = [str(path) for path in files.values()]
    report = json.loads(_run(ONNX_RUNNER, "image.npy", "outputs.npz", *paths, cwd=tmp_path))
    assert report["imported"] == []
    assert report["families"] == {str(path): HEADS[head].family for (head, _, _), path in files.items()}
    arrays = np.load(tmp_path / "outputs.npz")
    for k, (head, _, _) in enumerate(files):
        boxes, scores, classes, masks = (torch.from_numpy(arrays[f"{k}.{n}"]) for n in OUTPUT_NAMES)
        raw = RawDetections(boxes, scores, classes.long(), masks, _mask_kind(head))
        assert_same_raw(exports.eager(head, "tile")[1], raw)


# ------------------------------------------------------------------------------------------------
# Refusals
@pytest.mark.parametrize("head", HEADS)
def test_what_each_head_exports_to(exports, head, tmp_path):
    """TorchScript and ONNX by tracing for every head; scripting for the Mask R-CNN family only,
    and never to ONNX: the refusal names the head or the pair, and export_model writes nothing."""
    model = exports.predictor(head).model
    family = model_family(model)
    assert family == HEADS[head].family
    assert support_error(family, ExportOptions("torchscript", "tracing")) is None
    assert support_error(family, ExportOptions("onnx", "tracing")) is None
    scripting = support_error(family, ExportOptions("torchscript", "scripting"))
    if family == "mask_rcnn":
        assert scripting is None
    else:
        assert family in scripting and "--export-method tracing" in scripting
    onnx_scripting = support_error(family, ExportOptions("onnx", "scripting"))
    assert "ONNX" in onnx_scripting and "--export-method tracing" in onnx_scripting

    refused = [ExportOptions("onnx", "scripting")]
    if family != "mask_rcnn":
        refused.append(ExportOptions("torchscript", "scripting"))
    for options in refused:
        with pytest.raises(ExportError) as e:
            export_model(model, exports.cfg(head), exports.images["tile"], options, tmp_path / "model.out")
        assert str(e.value) == support_error(family, options)
    assert list(tmp_path.iterdir()) == []


def test_unknown_formats_and_methods_are_named():
    """ExportOptions refuses what it does not know, naming it and the choices."""
    with pytest.raises(ExportError, match="'tflite'.*torchscript, onnx"):
        ExportOptions("tflite")
    with pytest.raises(ExportError, match="'compile'.*tracing, scripting"):
        ExportOptions("torchscript", "compile")
