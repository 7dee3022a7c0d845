"""Export a trained model to one TorchScript or ONNX file: :func:`export_model`.

The exported network runs from the resized image to the raw detections (``model.inference(...,
do_postprocess=False)``, Detectron2's ``tools/deploy`` convention); pasting masks at the image's
own size stays outside, in :class:`~point_sup.export.runtime.ExportedModel`. Which head exports in
which format by which method: :func:`support_error` and docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from torch import nn

from point_sup_labels.file_io import atomic_write_bytes

from ..modeling.condinst import PointSupCondInst
from ..modeling.implicit_point_rend import PointSupImplicitPointRendMaskHead
from ..modeling.point_rend import PointSupPointRendMaskHead
from ..predictor import test_metadata
from .metadata import METADATA_KEY, ExportMetadata
from .runtime import ExportedModel, RawDetections, prepare_input

__all__ = [
    "FORMATS",
    "METHODS",
    "ONNX_OPSET",
    "ExportError",
    "ExportOptions",
    "export_model",
    "support_error",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
METHODS = ("tracing", "scripting")
ONNX_OPSET = 17  # RoiAlign, NonMaxSuppression, TopK, GridSample (opset 16+) in one opset onnxruntime runs

# An exported file must reproduce eager inference on the sample image this closely, or nothing is written.
BOX_TOLERANCE = 1e-2  # pixels: ONNX Runtime's R50 boxes measured up to 3e-3 from eager's
SCORE_TOLERANCE = 1e-3


class ExportError(ValueError):
    """A request that cannot be exported; the message names the culprit (head, format, method, file)."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        format: "torchscript" (a ``torch.jit`` file) or "onnx" (opset :data:`ONNX_OPSET`).
        method: "tracing" (every head) or "scripting" (TorchScript of the Mask R-CNN family).
        opset: the ONNX opset.
    """

    format: str = "torchscript"
    method: str = "tracing"
    opset: int = ONNX_OPSET

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ExportError(f"export format {self.format!r}: expected one of {', '.join(FORMATS)}")
        if self.method not in METHODS:
            raise ExportError(f"export method {self.method!r}: expected one of {', '.join(METHODS)}")


def model_family(model: nn.Module) -> str:
    """The model family of a built model (:data:`~point_sup.export.metadata.FAMILIES`).

    Raises:
        ExportError: a model point_sup does not export (no mask head, or another project's head).
    """
    if isinstance(model, PointSupCondInst):
        return "condinst"
    if isinstance(model, GeneralizedRCNN) and getattr(model.roi_heads, "mask_on", False):
        head = model.roi_heads.mask_head
        if isinstance(head, PointSupImplicitPointRendMaskHead):
            return "implicit_point_rend"
        if isinstance(head, PointSupPointRendMaskHead):
            return "point_rend"
        if isinstance(head, MaskRCNNConvUpsampleHead):  # point_sup's P_N head is one at inference
            return "mask_rcnn"
        raise ExportError(f"mask head {type(head).__name__}: not a point_sup head; point_sup exports its own")
    raise ExportError(f"model {type(model).__name__}: not a point_sup instance segmentation model")


def support_error(family: str, options: ExportOptions) -> str | None:
    """Why ``family`` cannot be exported as ``options`` say, or None where it can."""
    if options.method == "scripting" and options.format == "onnx":
        return "ONNX export records a trace (torch.onnx); use --export-method tracing with --format onnx"
    if options.method == "scripting" and family != "mask_rcnn":
        return (
            f"{family}: TorchScript scripting compiles the inference code, and this head's subdivision / "
            "dynamic-head code is Python TorchScript does not compile (lambdas, options objects); "
            "use --export-method tracing"
        )
    return None


class _Outputs(nn.Module):
    """The model's raw detections of one image as a tuple (boxes, scores, classes, masks)."""

    def __init__(self, model: nn.Module, mask_field: str):
        super().__init__()
        self.model = model
        self.mask_field = mask_field

    def forward(self, image: torch.Tensor):
        instances = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return (
            instances.pred_boxes.tensor,
            instances.scores,
            instances.pred_classes,
            instances.get(self.mask_field),
        )


class _ScriptableOutputs(nn.Module):
    """:class:`_Outputs` in the form TorchScript compiles (fields read from the scripted Instances)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        instances = self.model.inference([{"image": image}], None, False)[0]
        boxes = instances.pred_boxes
        scores = instances.scores
        classes = instances.pred_classes
        masks = instances.pred_masks
        assert boxes is not None and scores is not None and classes is not None and masks is not None
        return boxes.tensor, scores, classes, masks


def _standard_mask_rcnn(model: GeneralizedRCNN, cfg: CfgNode) -> GeneralizedRCNN:
    """The same weights in Detectron2's own Mask R-CNN classes (what a P_N-trained Mask R-CNN is at
    inference), which Detectron2 can script."""
    standard_cfg = cfg.clone()
    standard_cfg.defrost()
    standard_cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    standard_cfg.MODEL.WEIGHTS = ""
    standard = build_model(standard_cfg).to(next(model.parameters()).device).eval()
    standard.load_state_dict(model.state_dict(), strict=True)
    return standard


def _scripted(model: nn.Module, cfg: CfgNode) -> torch.jit.ScriptModule:
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    fields = {
        "proposal_boxes": Boxes,
        "objectness_logits": torch.Tensor,
        "pred_boxes": Boxes,
        "scores": torch.Tensor,
        "pred_classes": torch.Tensor,
        "pred_masks": torch.Tensor,
    }
    return scripting_with_instances(_ScriptableOutputs(_standard_mask_rcnn(model, cfg)).eval(), fields)


def _metadata(
    model: nn.Module, cfg: CfgNode, family: str, options: ExportOptions, config: str
) -> ExportMetadata:
    from .. import __version__

    dataset = test_metadata(cfg)
    names = dataset.get("thing_classes") if dataset is not None else None
    condinst = family == "condinst"
    num_classes = int(cfg.MODEL.FCOS.NUM_CLASSES if condinst else cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if names is not None and len(names) != num_classes:
        logger.warning(
            f"DATASETS.TEST {dataset.name} has {len(names)} classes and the model {num_classes}: "
            "the exported file gets no class names"
        )
        names = None
    return ExportMetadata(
        family=family,
        config=config,
        format=options.format,
        method=options.method,
        input_format=cfg.INPUT.FORMAT,
        min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
        mask_kind="image_logits" if condinst else "box_probabilities",
        mask_stride=int(model.mask_out_stride) if condinst else 0,
        crop_to_box=bool(model.infer_crop_to_box) if condinst else False,
        num_classes=num_classes,
        class_names=list(names) if names else None,
        torch_version=torch.__version__,
        point_sup_version=__version__,
    )


def _save_torchscript(module: torch.jit.ScriptModule, metadata: ExportMetadata, f) -> None:
    torch.jit.save(module, f, _extra_files={f"{METADATA_KEY}.json": metadata.to_json()})


def _onnx_bytes(module: nn.Module, image: torch.Tensor, metadata: ExportMetadata, opset: int) -> bytes:
    import onnx

    buffer = io.BytesIO()
    axes = {
        "image": {1: "height", 2: "width"},
        "boxes": {0: "detections"},
        "scores": {0: "detections"},
        "classes": {0: "detections"},
        "masks": {0: "detections", 2: "mask_height", 3: "mask_width"},
    }
    # The TorchScript-based exporter (dynamo=False) reads the same trace torch.jit.trace records,
    # which is what keeps the number of detections and the image size dynamic in the graph.
    torch.onnx.export(
        module,
        (image,),
        buffer,
        opset_version=opset,
        dynamo=False,
        input_names=["image"],
        output_names=["boxes", "scores", "classes", "masks"],
        dynamic_axes=axes,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    return proto.SerializeToString()


def _matched(expected: RawDetections, got: RawDetections) -> RawDetections:
    """``got`` reordered to ``expected``'s order: each expected detection takes the nearest exported
    one of its class not taken yet (by box and score), since a runtime may order near-equal scores
    (1e-6 apart) differently."""
    distance = torch.maximum(
        (expected.boxes[:, None, :] - got.boxes[None, :, :]).abs().amax(-1),
        (expected.scores[:, None] - got.scores[None, :]).abs() * 100,
    )
    distance[expected.classes[:, None] != got.classes[None, :]] = float("inf")
    order: list[int] = []
    for row in distance:
        row[order] = float("inf")
        order.append(int(row.argmin()))
    index = torch.tensor(order, dtype=torch.long)
    return RawDetections(
        got.boxes[index], got.scores[index], got.classes[index], got.masks[index], got.mask_kind
    )


def _compare(expected: RawDetections, got: RawDetections, what: str, match_boxes: bool = True) -> str:
    """One line: the largest differences; raises ExportError where the exported model disagrees.

    With ``match_boxes`` False only the number of detections and their sorted scores are compared:
    on an image whose scores tie (a blank one), runtimes may keep other boxes of the same score.
    """
    if len(expected.boxes) != len(got.boxes):
        raise ExportError(
            f"{what}: {len(got.boxes)} detections where eager inference has {len(expected.boxes)}"
        )
    if not len(expected.boxes):
        return "0 detections on the sample image (pass one where the model detects objects to compare more)"
    if not match_boxes:
        score = float((expected.scores.sort().values - got.scores.sort().values).abs().max())
        if score > SCORE_TOLERANCE:
            raise ExportError(f"{what}: scores differ from eager inference by {score:.2g}")
        return f"{len(got.boxes)} detections; largest score difference {score:.2g}"
    got = _matched(expected, got)
    box = float((expected.boxes - got.boxes).abs().max())
    score = float((expected.scores - got.scores).abs().max())
    if box > BOX_TOLERANCE or score > SCORE_TOLERANCE or not torch.equal(expected.classes, got.classes):
        raise ExportError(f"{what}: differs from eager inference (box {box:.2g} px, score {score:.2g})")
    threshold = 0.0 if expected.mask_kind == "image_logits" else 0.5
    mask = float(((expected.masks > threshold) != (got.masks > threshold)).float().mean())
    return (
        f"{len(got.boxes)} detections; largest difference to eager: box {box:.2g} px, score {score:.2g}; "
        f"mask pixels {100 * mask:.3f} %"
    )


def export_model(
    model: nn.Module,
    cfg: CfgNode,
    sample_image: np.ndarray,
    options: ExportOptions,
    output: str | os.PathLike,
    config_name: str = "",
) -> ExportMetadata:
    """Export ``model`` (eval mode, weights loaded) to the file ``output``.

    Args:
        model: a built point_sup model, e.g. :attr:`point_sup.Predictor.model`.
        cfg: its config (test resize, input format, class names).
        sample_image: (H, W, 3) uint8 in BGR order: traced through; the exported model is then
            compared with eager inference before the file appears: on it, the same detections
            (matched by class, box within 0.01 px, score within 1e-3); on it transposed and on a
            blank image, the same number of detections and scores.
        options: format and method.
        output: the file to write (atomically; nothing is written when any step fails).
        config_name: recorded in the file's metadata.

    Returns:
        The metadata stored in the file.

    Raises:
        ExportError: an unsupported family / format / method, or an exported model that does not
            reproduce eager inference on the sample image.
    """
    family = model_family(model)
    problem = support_error(family, options)
    if problem is not None:
        raise ExportError(problem)
    metadata = _metadata(model, cfg, family, options, config_name)
    device = next(model.parameters()).device
    image = prepare_input(sample_image, metadata).to(device)
    traced_model = _Outputs(model, "pred_mask_logits" if family == "condinst" else "pred_masks").eval()
    with torch.no_grad():
        expected = RawDetections(*traced_model(image), mask_kind=metadata.mask_kind)
        # Tracing warns about every Python value it records as a constant; the check below is the
        # test that the trace generalises, at least to the sample.
        with contextlib.redirect_stderr(io.StringIO()), _quiet_tracer():
            module, data = None, None
            if options.method == "scripting":
                module = _scripted(model, cfg)
            else:
                # Detectron2's ROI heads count detections with len(), a Python int that a trace
                # records as a constant (mask_rcnn_inference splits the masks by it): counted by
                # __len__ instead, a traced tensor, as Detectron2's own TracingAdapter does.
                with patch_builtin_len():
                    if options.format == "onnx":
                        data = _onnx_bytes(traced_model, image, metadata, options.opset)
                    else:
                        module = torch.jit.trace(traced_model, (image,), check_trace=False)
    if data is None:
        buffer = io.BytesIO()
        _save_torchscript(module, metadata, buffer)
        data = buffer.getvalue()
    exported = ExportedModel.from_bytes(data, options.format, os.fspath(output), device=str(device))
    what = f"{family} as {options.format} by {options.method}"
    summary = _compare(expected, exported.raw(image), what + " (the sample image)")
    # A trace can hold what held for the sample only (a detection count, an image size): checked
    # on the sample transposed (another size and other detections) and on a blank image.
    for name, check in _check_images(sample_image):
        tensor = prepare_input(check, metadata).to(device)
        with torch.no_grad():
            eager = RawDetections(*traced_model(tensor), mask_kind=metadata.mask_kind)
        _compare(eager, exported.raw(tensor), f"{what} ({name})", match_boxes=False)
    atomic_write_bytes(output, data)  # a failed check above, or a kill, leaves no output
    logger.info(f"exported {family} to {output} ({options.format}, {options.method}): {summary}")
    return metadata


def _check_images(sample: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Images besides the sample on which an exported file must equal eager inference."""
    transposed = np.ascontiguousarray(sample.transpose(1, 0, 2)[:, ::-1])
    blank = np.full_like(sample, 128)
    return [("the sample image transposed", transposed), ("a blank image", blank)]


@contextlib.contextmanager
def _quiet_tracer():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
