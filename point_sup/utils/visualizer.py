"""Drawing P_N annotations and predictions (paper Figure 1: object points red, background blue)."""

from __future__ import annotations

import numpy as np
from detectron2.structures import BoxMode

__all__ = ["BACKGROUND_COLOR", "OBJECT_COLOR", "draw_points", "draw_predictions"]

OBJECT_COLOR = (1.0, 0.0, 0.0)  # red, RGB in [0, 1] as Detectron2's Visualizer takes it
BACKGROUND_COLOR = (0.0, 0.0, 1.0)  # blue


def _visualizer(image_rgb: np.ndarray, metadata):
    from detectron2.utils.visualizer import Visualizer  # imports cv2: only when drawing

    return Visualizer(image_rgb, metadata=metadata, scale=1.0)


def draw_points(image_rgb: np.ndarray, annotations: list[dict], metadata=None, radius: float | None = None):
    """Boxes and labelled points of P_N annotations drawn on an image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        annotations: Detectron2 annotation dicts with ``bbox``/``bbox_mode`` and ``point_coords``
            (continuous image coordinates, pixel centres at +0.5) and ``point_labels``.
        metadata: dataset metadata (for class names); optional.
        radius: point radius in pixels (default: scaled with the image size).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    vis = _visualizer(image_rgb, metadata)
    radius = radius or max(2.0, 0.006 * max(image_rgb.shape[:2]))
    names = metadata.get("thing_classes", None) if metadata is not None else None
    if names is not None and len(names) == 1:
        names = None  # one class: names would only hide the points
    for ann in annotations:
        x0, y0, x1, y1 = BoxMode.convert(
            ann["bbox"], ann.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS
        )
        vis.draw_box((x0, y0, x1, y1), edge_color="g")
        if names is not None:
            vis.draw_text(names[ann["category_id"]], (x0, y0), horizontal_alignment="left", font_size=8)
        for (x, y), label in zip(ann.get("point_coords", []), ann.get("point_labels", []), strict=True):
            vis.draw_circle((x, y), color=OBJECT_COLOR if label == 1 else BACKGROUND_COLOR, radius=radius)
    return vis.output.get_image()


def draw_predictions(image_rgb: np.ndarray, instances, metadata=None, score_threshold: float = 0.5):
    """Predicted boxes, classes, scores and masks with score >= ``score_threshold``.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        instances: Detectron2 ``Instances`` at the image's resolution (``pred_boxes``, ``scores``,
            ``pred_classes``, optionally ``pred_masks``), on any device.
    """
    vis = _visualizer(image_rgb, metadata)
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_threshold]
    return vis.draw_instance_predictions(instances).get_image()
