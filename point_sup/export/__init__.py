"""Deployment: a trained point_sup model as one TorchScript or ONNX file, and the runner for it.

    from point_sup.export import ExportOptions, export_model, ExportedModel

    export_model(predictor.model, predictor.cfg, sample_bgr, ExportOptions("onnx"), "model.onnx")
    instances = ExportedModel("model.onnx")(bgr_image)  # as point_sup.Predictor returns

The file holds the network from the resized image to the detections before the size-dependent
post-processing (Detectron2's ``tools/deploy`` convention), and its own description
(:class:`ExportMetadata`): loading it needs ``torch.jit.load`` or onnxruntime, not point_sup.
"""

from .exporter import ExportError, ExportOptions, export_model, support_error
from .metadata import ExportMetadata
from .runtime import ExportedModel

__all__ = [
    "ExportError",
    "ExportMetadata",
    "ExportOptions",
    "ExportedModel",
    "export_model",
    "support_error",
]
