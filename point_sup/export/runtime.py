"""Run an exported file (TorchScript or ONNX) as :class:`point_sup.Predictor` runs a checkpoint:
:class:`ExportedModel`."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..modeling.condinst.decoding import postprocess as condinst_postprocess
from ..utils.images import bgr_image
from .metadata import METADATA_KEY, ExportMetadata

__all__ = ["SUFFIXES", "ExportedModel", "RawDetections", "file_format", "prepare_input"]

# File name endings and the format each one means.
SUFFIXES = {".ts": "torchscript", ".onnx": "onnx"}


@dataclass
class RawDetections:
    """An exported network's outputs for one image, in the resized input's frame (CPU tensors).

    Attributes:
        boxes: (R, 4) XYXY pixels. scores: (R,). classes: (R,) int64.
        masks: (R, 1, M, M) probabilities in each box ("box_probabilities") or (R, 1, H_o, W_o)
            logits at the metadata's stride over the padded input ("image_logits").
        mask_kind: which of the two.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor
    mask_kind: str


def prepare_input(image_bgr: np.ndarray, metadata: ExportMetadata) -> torch.Tensor:
    """The network's input for an (H, W, 3) uint8 BGR image: (3, h, w) float32 in the model's channel
    order, resized as Detectron2's ``DefaultPredictor`` resizes (``ResizeShortestEdge``)."""
    image = image_bgr[:, :, ::-1] if metadata.input_format == "RGB" else image_bgr
    resize = T.ResizeShortestEdge([metadata.min_size_test] * 2, metadata.max_size_test)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def file_format(path: str | os.PathLike) -> str:
    """ "torchscript" or "onnx", from the file name's ending (:data:`SUFFIXES`)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{os.fspath(path)}: an exported model ends in {', '.join(SUFFIXES)}")
    return SUFFIXES[suffix]


class ExportedModel:
    """An exported point_sup model, called on one image at a time; returns that image's ``Instances``.

    Args:
        path: a file written by :func:`point_sup.export.export_model` (``tools/export_model.py``).
        device: "cpu" or "cuda" (ONNX: onnxruntime's CUDA provider where installed).
        format: "torchscript" or "onnx"; None: from the file name (.ts, .onnx).

    Attributes:
        export_metadata: the file's :class:`ExportMetadata`.
        input_format: the channel order of an array given to :meth:`__call__`.
        metadata: Detectron2 ``Metadata`` with the class names where the file has them, else None.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file that is no point_sup export (the message names it).
        ImportError: an ONNX file without onnxruntime installed.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", format: str | None = None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path} does not exist")
        self._load(Path(path).read_bytes(), format or file_format(path), path, device)

    @classmethod
    def from_bytes(cls, data: bytes, format: str, name: str, device: str = "cpu") -> ExportedModel:
        """The exported model of a file's content ``data`` ("torchscript" or "onnx"); ``name`` is
        named in errors."""
        model = cls.__new__(cls)
        model._load(data, format, name, device)
        return model

    def _load(self, data: bytes, format: str, name: str, device: str) -> None:
        self.path, self.format, self.device = name, format, device
        text = self._load_onnx(data) if format == "onnx" else self._load_torchscript(data)
        if not text:
            raise ValueError(f"{name}: no point_sup metadata in it; export with tools/export_model.py")
        self.export_metadata = ExportMetadata.from_json(text, name)
        self.input_format = self.export_metadata.input_format
        names = self.export_metadata.class_names
        self.metadata = Metadata(thing_classes=names) if names else None

    def _load_torchscript(self, data: bytes) -> str:
        import torchvision  # noqa: F401  (registers the nms / roi_align operators the graph calls)

        extra = {f"{METADATA_KEY}.json": ""}
        try:
            self._module = torch.jit.load(io.BytesIO(data), map_location=self.device, _extra_files=extra)
        except Exception as e:  # torch.jit.load's errors for a file of another kind vary
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise ValueError(f"{self.path}: not a TorchScript file ({reason})") from None
        return extra[f"{METADATA_KEY}.json"]

    def _load_onnx(self, data: bytes) -> str:
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(
                f"{self.path}: running an ONNX model needs onnxruntime (pip install onnxruntime)"
            ) from None
        providers = ["CPUExecutionProvider"]
        if (
            self.device.startswith("cuda")
            and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's concern
        try:
            self._session = onnxruntime.InferenceSession(data, options, providers=providers)
        except Exception as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise ValueError(f"{self.path}: not an ONNX model onnxruntime runs ({reason})") from None
        return self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")

    def raw(self, image: torch.Tensor) -> RawDetections:
        """The network's outputs for ``image`` ((3, h, w) float32 of :func:`prepare_input`), on the CPU."""
        if self.format == "onnx":
            outputs = self._session.run(None, {"image": image.cpu().numpy()})
            outputs = [torch.from_numpy(np.asarray(o)) for o in outputs]
        else:
            # Without optimisation: the profiling executor re-specialises the graph for each new
            # input size, seconds per image for these graphs; interpreted, the same operations run.
            with torch.no_grad(), torch.jit.optimized_execution(False):
                outputs = [o.cpu() for o in self._module(image.to(self.device))]
        boxes, scores, classes, masks = outputs
        return RawDetections(boxes, scores, classes.long(), masks, self.export_metadata.mask_kind)

    def __call__(self, image: str | os.PathLike | np.ndarray) -> Instances:
        """Predictions for one image, as :meth:`point_sup.Predictor.__call__` returns them.

        Args:
            image: an image file path, or an (H, W, 3) uint8 array in ``self.input_format`` order.

        Returns:
            ``Instances`` of image size (H, W), on the CPU: ``pred_boxes``, ``scores``,
            ``pred_classes`` and ``pred_masks`` ((N, H, W) bool).
        """
        bgr = bgr_image(image, self.input_format)
        tensor = prepare_input(bgr, self.export_metadata)
        return self.postprocess(self.raw(tensor), tuple(tensor.shape[1:]), bgr.shape[:2])

    def postprocess(
        self, raw: RawDetections, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> Instances:
        """``raw`` at the user's image size: boxes rescaled, masks pasted and thresholded, as the
        model's own ``inference`` does (Detectron2's ``detector_postprocess`` for the ROI heads,
        CondInst's decoding ``postprocess``).

        Args:
            raw: of an input of ``input_size`` (h, w).
            image_size: (H, W) of the user's image.
        """
        detections = Instances(
            input_size, pred_boxes=Boxes(raw.boxes), scores=raw.scores, pred_classes=raw.classes
        )
        height, width = image_size
        if raw.mask_kind == "image_logits":
            detections.pred_mask_logits = raw.masks
            meta = self.export_metadata
            return condinst_postprocess(
                detections, input_size, height, width, meta.mask_stride, meta.crop_to_box
            )
        detections.pred_masks = raw.masks
        return detector_postprocess(detections, height, width)
