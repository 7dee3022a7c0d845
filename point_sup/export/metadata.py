"""What an exported file says about itself: :class:`ExportMetadata`, stored inside the file (TorchScript's
extra file ``point_sup.json``, ONNX's ``metadata_props`` key ``point_sup``) so that a runner needs no
config and no point_sup to prepare the input and read the outputs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

__all__ = ["FAMILIES", "MASK_KINDS", "METADATA_KEY", "ExportMetadata"]

METADATA_KEY = "point_sup"  # ONNX metadata_props key; TorchScript extra file f"{METADATA_KEY}.json"

FAMILIES = ("mask_rcnn", "point_rend", "implicit_point_rend", "condinst")

# "box_probabilities": (R, 1, M, M) mask probabilities in each box's frame (the ROI heads; Detectron2's
# detector_postprocess pastes them); "image_logits": (R, 1, H_o, W_o) mask logits at stride
# ``mask_stride`` over the padded input (CondInst / BoxInst).
MASK_KINDS = ("box_probabilities", "image_logits")

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportMetadata:
    """The exported network's contract.

    Input: ``image``, (3, h, w) float32 in ``input_format`` channel order, the user's image resized
    by Detectron2's ``ResizeShortestEdge([min_size_test, min_size_test], max_size_test)`` (what
    ``DefaultPredictor`` does). Outputs, for R detections in that resized frame: ``boxes`` (R, 4)
    XYXY pixels, ``scores`` (R,), ``classes`` (R,) int64, ``masks`` as ``mask_kind`` says.

    Attributes:
        family: one of :data:`FAMILIES` (BoxInst is the ``condinst`` family).
        config: the config file or name the model was built from (provenance only).
        format, method: "torchscript"/"onnx", "tracing"/"scripting".
        mask_kind: one of :data:`MASK_KINDS`.
        mask_stride: stride of ``image_logits`` masks over the input (0 for box probabilities).
        crop_to_box: CondInst's ``INFER_CROP_TO_BOX`` (mask pixels outside the box removed).
        class_names: the model's class names where the config's test dataset is registered, else None.
        torch_version, point_sup_version: of the exporting environment.
    """

    family: str
    config: str
    format: str
    method: str
    input_format: str
    min_size_test: int
    max_size_test: int
    mask_kind: str
    mask_stride: int
    crop_to_box: bool
    num_classes: int
    class_names: list[str] | None
    torch_version: str
    point_sup_version: str
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"export metadata: family {self.family!r} is not one of {FAMILIES}")
        if self.mask_kind not in MASK_KINDS:
            raise ValueError(f"export metadata: mask_kind {self.mask_kind!r} is not one of {MASK_KINDS}")
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"export metadata: input_format {self.input_format!r} is not BGR or RGB")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportMetadata:
        """Parse the JSON of :meth:`to_json`; ``source`` (the file) is named in any error."""
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: its point_sup metadata is not JSON ({e})") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{source}: its point_sup metadata is not a JSON object")
        version = fields.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{source}: point_sup export format version {version!r}; "
                f"this point_sup reads {FORMAT_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(fields))
        if missing:
            raise ValueError(f"{source}: its point_sup metadata lacks {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in fields.items() if k in names})
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
