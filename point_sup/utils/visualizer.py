"""Drawing P_N annotations and predictions, in the style of the paper's Figures 1 and 4.

* :func:`draw_points`: boxes and labelled points (object points red, background points blue);
* :func:`draw_predictions`: predicted masks as semi-transparent fills in distinct colours, each with
  a solid contour; a small "class score" label only when the dataset has several classes; optionally
  the P_N points of the image on top (as in Figure 1). ``point_sup.draw_predictions`` is this
  function; it also takes an image file's path.

Both draw with numpy (cv2 only for label text) on a copy of the image upscaled by an integer factor
with nearest-neighbour sampling (``scale``), so that small images stay sharp: points, boxes and
contours are drawn at the output resolution. Coordinates follow Detectron2's convention: a point at
continuous ``(x + 0.5, y + 0.5)`` is the centre of pixel ``(x, y)``, and is drawn centred on the
``scale x scale`` block that pixel becomes.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence

import numpy as np
from detectron2.structures import BoxMode

from .images import read_image

__all__ = [
    "BACKGROUND_COLOR",
    "BOX_COLOR",
    "OBJECT_COLOR",
    "draw_points",
    "draw_predictions",
    "instance_colors",
    "upscale",
]

# RGB in [0, 1].
OBJECT_COLOR = (1.0, 0.0, 0.0)  # red
BACKGROUND_COLOR = (0.0, 0.0, 1.0)  # blue
BOX_COLOR = (0.0, 0.8, 0.0)  # green boxes of the point annotations
POINT_OUTLINE_COLOR = (1.0, 1.0, 1.0)  # thin white ring: blue points stay visible on dark images
LABEL_TEXT_COLOR = (1.0, 1.0, 1.0)
LABEL_BACKGROUND_COLOR = (0.0, 0.0, 0.0)


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` (H, W[, C]) enlarged ``scale`` times in each direction, nearest-neighbour."""
    scale = _check_scale(scale)
    if scale == 1:
        return image.copy()
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def instance_colors(n: int) -> np.ndarray:
    """``n`` distinct bright colours, (n, 3) floats in [0, 255]; the same ``n`` always gives the same."""
    golden = 0.618033988749895  # hue steps of the golden ratio spread any number of colours apart
    hues = (0.12 + golden * np.arange(n)) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues], dtype=np.float64).reshape(n, 3) * 255


def draw_points(
    image_rgb: np.ndarray,
    annotations: list[dict],
    metadata=None,
    radius: float | None = None,
    scale: int = 1,
    labels: bool | None = None,
) -> np.ndarray:
    """Boxes and labelled points of P_N annotations drawn on an image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        annotations: Detectron2 annotation dicts with ``bbox``/``bbox_mode`` and ``point_coords``
            (continuous image coordinates, pixel centres at +0.5) and ``point_labels``
            (1 object, drawn red; 0 background, drawn blue).
        metadata: dataset metadata (for class names); optional.
        radius: point radius in pixels of the output image (default: grows with image size and scale).
        scale: integer upscaling factor of the output (nearest-neighbour); drawing is at that resolution.
        labels: draw class names at the boxes; default: only when the dataset has several classes.

    Returns:
        (H * scale, W * scale, 3) uint8 RGB.
    """
    scale = _check_scale(scale)
    canvas = upscale(_check_image(image_rgb), scale).astype(np.float64)
    line = max(1, scale // 2)
    names = _class_names(metadata)
    if labels is None:
        labels = names is not None and len(names) > 1
    for ann in annotations:
        box = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        _draw_rectangle(canvas, x0, y0, x1, y1, _rgb(BOX_COLOR), line)
        if labels:
            cls = int(ann.get("category_id", 0))
            _draw_label(canvas, names[cls] if names else str(cls), x0, y0, scale)
    # Points after all boxes, so no box line covers a point.
    _draw_annotation_points(canvas, annotations, image_rgb.shape[:2], radius, scale)
    return _to_uint8(canvas)


def draw_predictions(
    image: np.ndarray | str | os.PathLike,
    instances,
    metadata=None,
    score_threshold: float = 0.5,
    scale: int = 1,
    alpha: float = 0.5,
    contour_width: int | None = None,
    labels: bool | None = None,
    points: Sequence[dict] | None = None,
) -> np.ndarray:
    """Predicted masks with score >= ``score_threshold``: coloured fills and contours.

    Each instance gets its own colour (:func:`instance_colors`, in order of decreasing score); its
    mask is blended with it (``alpha``) and its border, inside the mask, drawn solid. Higher scores
    are drawn last, on top. Instances without ``pred_masks`` are drawn as box outlines.

    Args:
        image: (H, W, 3) uint8 RGB, or the path of an image file (read as RGB, EXIF-rotated as
            Detectron2 reads it; :class:`point_sup.utils.images.UnreadableImageError` if it cannot be).
        instances: Detectron2 ``Instances`` at the image's resolution (``scores``, ``pred_masks``
            (N, H, W), ``pred_boxes``, ``pred_classes``), on any device.
        metadata: dataset metadata (for class names); optional.
        score_threshold: instances scoring lower are not drawn.
        scale: integer upscaling factor of the output (nearest-neighbour); drawing is at that resolution.
        alpha: opacity of the mask fill.
        contour_width: contour thickness in output pixels (default ``max(1, round(scale / 2))``).
        labels: write "class score" at each instance; default: only when the dataset has several
            classes (with one class, labels would only hide the masks).
        points: P_N annotations of the image to draw on top, as :func:`draw_points` takes them
            (``point_coords`` in continuous image coordinates, ``point_labels``: 1 red, 0 blue);
            their boxes are not drawn.

    Returns:
        (H * scale, W * scale, 3) uint8 RGB.
    """
    scale = _check_scale(scale)
    image_rgb = _check_image(read_image(image, "RGB") if isinstance(image, (str, os.PathLike)) else image)
    canvas = upscale(image_rgb, scale).astype(np.float64)
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_threshold]
    scores = instances.scores.numpy()
    order = np.argsort(-scores, kind="stable")  # colour 0 for the best instance
    colors = np.empty((len(order), 3))
    colors[order] = instance_colors(len(order))  # colors[i]: instance i's colour
    masks = instances.pred_masks.numpy().astype(bool) if instances.has("pred_masks") else None
    if masks is not None and masks.shape[1:] != image_rgb.shape[:2]:
        raise ValueError(f"pred_masks of shape {masks.shape[1:]} on an image of shape {image_rgb.shape[:2]}")
    boxes = instances.pred_boxes.tensor.numpy() * scale if instances.has("pred_boxes") else None
    classes = instances.pred_classes.numpy() if instances.has("pred_classes") else np.zeros(len(scores), int)
    names = _class_names(metadata)
    if labels is None:
        labels = len(names) > 1 if names is not None else bool((classes > 0).any())
    width = contour_width if contour_width is not None else max(1, round(scale / 2))

    for i in order[::-1]:  # lowest score first, so the best ends on top
        if masks is not None:
            mask = upscale(masks[i], scale)
            canvas[mask] = (1.0 - alpha) * canvas[mask] + alpha * colors[i]
            canvas[mask & ~_erode(mask, width)] = colors[i]
        elif boxes is not None:
            _draw_rectangle(canvas, *boxes[i], colors[i], width)
    if labels:
        for i in order[::-1]:
            anchor = _label_anchor(boxes[i] if boxes is not None else None, masks, i, scale)
            if anchor is None:
                continue
            cls = int(classes[i])
            name = names[cls] if names is not None and cls < len(names) else str(cls)
            _draw_label(canvas, f"{name} {scores[i]:.0%}", *anchor, scale)
    if points:
        _draw_annotation_points(canvas, points, image_rgb.shape[:2], None, scale)
    return _to_uint8(canvas)


# --------------------------------------------------------------------------------------------------


def _check_scale(scale) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return image


def _rgb(color: Sequence[float]) -> np.ndarray:
    return np.asarray(color, dtype=np.float64) * 255


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _class_names(metadata) -> list[str] | None:
    names = metadata.get("thing_classes", None) if metadata is not None else None
    return list(names) if names else None


def _draw_annotation_points(
    canvas: np.ndarray,
    annotations: Sequence[dict],
    image_hw: tuple[int, int],
    radius: float | None,
    scale: int,
) -> None:
    """The labelled points of ``annotations`` (object red, background blue) on the upscaled canvas."""
    if radius is None:  # grows with the image, so points stay visible on large pictures
        radius = max(2.0, 0.005 * max(image_hw) * scale)
    outline = max(1.0, scale / 3) if scale > 1 else 0.0
    for ann in annotations:
        coords = ann.get("point_coords", [])
        point_labels = ann.get("point_labels", [])
        for (x, y), label in zip(coords, point_labels, strict=True):
            color = OBJECT_COLOR if label == 1 else BACKGROUND_COLOR
            _draw_disk(canvas, float(x) * scale, float(y) * scale, radius, _rgb(color), outline)


def _draw_disk(canvas: np.ndarray, cx: float, cy: float, radius: float, color, outline: float) -> None:
    """Filled disk of pixels whose centres lie within ``radius`` of continuous ``(cx, cy)``."""
    h, w = canvas.shape[:2]
    reach = radius + outline
    x0, x1 = max(0, int(np.floor(cx - reach))), min(w, int(np.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(np.floor(cy - reach))), min(h, int(np.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dist2 = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2
    region = canvas[y0:y1, x0:x1]
    if outline > 0:
        region[dist2 <= reach**2] = _rgb(POINT_OUTLINE_COLOR)
    region[dist2 <= radius**2] = color


def _draw_rectangle(canvas: np.ndarray, x0, y0, x1, y1, color, width: int) -> None:
    """Outline, ``width`` pixels thick and inside, of the pixels covered by continuous [x0, x1) x [y0, y1)."""
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = (round(float(v)) for v in (x0, y0, x1, y1))
    c0, c1 = max(0, x0), min(w, max(x1, x0 + 1))
    r0, r1 = max(0, y0), min(h, max(y1, y0 + 1))
    if c0 >= c1 or r0 >= r1:
        return
    canvas[r0 : min(r1, r0 + width), c0:c1] = color
    canvas[max(r0, r1 - width) : r1, c0:c1] = color
    canvas[r0:r1, c0 : min(c1, c0 + width)] = color
    canvas[r0:r1, max(c0, c1 - width) : c1] = color


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion with the 4-neighbourhood; outside the image counts as background."""
    out = mask.copy()
    for _ in range(iterations):
        padded = np.pad(out, 1, constant_values=False)
        out = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return out


def _label_anchor(box, masks, index: int, scale: int) -> tuple[float, float] | None:
    if box is not None:
        return float(box[0]), float(box[1])
    if masks is None or not masks[index].any():
        return None
    ys, xs = np.nonzero(masks[index])
    return float(xs.min() * scale), float(ys.min() * scale)


def _draw_label(canvas: np.ndarray, text: str, x: float, y: float, scale: int) -> None:
    """Small white text on a black plate, just above (x, y) or, at the top edge, just below it."""
    import cv2  # only when text is drawn

    font, font_scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.3 + 0.1 * scale, 1
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    h, w = canvas.shape[:2]
    pad = 1
    x, y = round(float(x)), round(float(y))
    left = min(max(0, x), max(0, w - tw - 2 * pad))
    top = y - th - baseline - 2 * pad
    if top < 0:
        top = min(y, max(0, h - th - baseline - 2 * pad))
    plate = np.zeros((th + baseline + 2 * pad, tw + 2 * pad, 3), np.uint8)
    plate[:] = _rgb(LABEL_BACKGROUND_COLOR).astype(np.uint8)
    text_color = tuple(int(c) for c in _rgb(LABEL_TEXT_COLOR))
    cv2.putText(plate, text, (pad, pad + th), font, font_scale, text_color, thickness, cv2.LINE_AA)
    ph, pw = min(plate.shape[0], h - top), min(plate.shape[1], w - left)
    canvas[top : top + ph, left : left + pw] = plate[:ph, :pw]
