"""The drawing of points and predicted masks (paper Figures 1 and 4) on small synthetic images."""

import numpy as np
import pytest
import torch
from detectron2.data import Metadata
from detectron2.structures import Boxes, BoxMode, Instances

from point_sup.utils.visualizer import draw_points, draw_predictions, instance_colors, upscale

H, W = 20, 30
ONE_CLASS = Metadata(thing_classes=["nucleus"])
TWO_CLASSES = Metadata(thing_classes=["cat", "dog"])


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(30, 120, size=(H, W, 3), dtype=np.uint8)


def _masks() -> np.ndarray:
    masks = np.zeros((3, H, W), dtype=bool)
    masks[0, 2:8, 3:11] = True  # a rectangle
    yy, xx = np.mgrid[:H, :W]
    masks[1] = (yy - 13.5) ** 2 + (xx - 20.5) ** 2 <= 4.5**2  # a disk
    masks[2, 12:18, 2:8] = True  # scored below the threshold
    return masks


def _instances(scores=(0.9, 0.8, 0.3), classes=(0, 0, 0)) -> Instances:
    masks = _masks()
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inst = Instances((H, W))
    inst.pred_masks = torch.from_numpy(masks)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(classes)
    return inst


def _border(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Mask pixels within ``width`` 4-neighbour steps of a pixel outside the mask (or the image edge)."""
    inner = mask.copy()
    for _ in range(width):
        p = np.pad(inner, 1)
        inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


@pytest.mark.parametrize("scale", [1, 3])
def test_masks_filled_and_outlined_inside_only(scale):
    image, masks = _image(), _masks()
    alpha, width = 0.4, scale  # a contour `scale` pixels thick
    out = draw_predictions(
        image, _instances(), ONE_CLASS, scale=scale, alpha=alpha, contour_width=width
    ).astype(float)
    assert out.shape == (H * scale, W * scale, 3)
    big = upscale(image, scale).astype(float)
    colors = instance_colors(2)  # by decreasing score: instance 0, then 1
    drawn = np.zeros(out.shape[:2], dtype=bool)
    for mask, color in zip(masks[:2], colors, strict=True):
        mask = upscale(mask, scale)
        border = _border(mask, width)
        interior = mask & ~border
        assert interior.any() and border.any()
        np.testing.assert_allclose(out[interior], (1 - alpha) * big[interior] + alpha * color, atol=0.51)
        np.testing.assert_allclose(out[border], np.broadcast_to(color, out[border].shape), atol=0.51)
        drawn |= mask
    # Nowhere else is anything drawn: not outside the masks, not for the instance scored 0.3 (no text).
    np.testing.assert_array_equal(out[~drawn], big[~drawn])
    below = upscale(masks[2], scale)
    np.testing.assert_array_equal(out[below], big[below])


def test_threshold_selects_what_is_drawn():
    image, masks = _image(), _masks()
    out = draw_predictions(image, _instances(), ONE_CLASS, score_threshold=0.2)
    assert (out[masks[2]] != image[masks[2]]).any()  # now drawn
    out = draw_predictions(image, _instances(), ONE_CLASS, score_threshold=0.95)
    np.testing.assert_array_equal(out, image)  # nothing reaches 0.95


def test_labels_only_with_several_classes():
    image, masks = _image(), _masks()
    for meta in (ONE_CLASS, None):  # one class, or no metadata and every prediction of class 0
        auto = draw_predictions(image, _instances(), meta, scale=3)
        plain = draw_predictions(image, _instances(), meta, scale=3, labels=False)
        np.testing.assert_array_equal(auto, plain)
    # Two classes: a "class score" label, outside the masks too (above the boxes).
    inst = _instances(classes=(0, 1, 0))
    auto = draw_predictions(image, inst, TWO_CLASSES, scale=3)
    plain = draw_predictions(image, inst, TWO_CLASSES, scale=3, labels=False)
    outside = ~upscale(masks.any(axis=0), 3)
    assert (auto[outside] != plain[outside]).any(axis=-1).sum() > 20
    # Forced on with one class as well.
    forced = draw_predictions(image, _instances(), ONE_CLASS, scale=3, labels=True)
    assert (forced != draw_predictions(image, _instances(), ONE_CLASS, scale=3)).any()


def test_masks_at_another_resolution_are_rejected():
    inst = _instances()
    inst.pred_masks = torch.zeros((3, H // 2, W // 2), dtype=torch.bool)
    with pytest.raises(ValueError, match="pred_masks"):
        draw_predictions(_image(), inst)


def test_upscale_is_nearest_neighbour():
    image = _image()
    big = upscale(image, 3)
    assert big.shape == (3 * H, 3 * W, 3)
    np.testing.assert_array_equal(big[::3, ::3], image)
    np.testing.assert_array_equal(big[2::3, 1::3], image)
    with pytest.raises(ValueError):
        upscale(image, 1.5)


def _color_centroid(img: np.ndarray, rgb) -> tuple[float, float]:
    ys, xs = np.nonzero((img == np.array(rgb, dtype=np.uint8)).all(axis=-1))
    assert len(xs) > 0
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_points_red_and_blue_at_their_scaled_positions(scale):
    image = np.zeros((H, W, 3), dtype=np.uint8)
    ann = {
        "bbox": [2.0, 3.0, 25.0, 14.0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,
        "point_coords": [[7.5, 9.5], [20.5, 6.5]],  # centres of pixels (7, 9) and (20, 6)
        "point_labels": [1, 0],
    }
    out = draw_points(image, [ann], ONE_CLASS, radius=1.5 * scale, scale=scale)
    assert out.shape == (H * scale, W * scale, 3)
    # Pixel (x, y) becomes the scale x scale block starting at (x * scale, y * scale); its centre,
    # in pixel indices, is (x + 0.5) * scale - 0.5.
    for (px, py), rgb in (((7, 9), (255, 0, 0)), ((20, 6), (0, 0, 255))):
        cx, cy = _color_centroid(out, rgb)
        assert cx == pytest.approx((px + 0.5) * scale - 0.5)
        assert cy == pytest.approx((py + 0.5) * scale - 0.5)
    # The box outline is on the scaled box edges: columns 2*scale and 27*scale - 1.
    green = (out[..., 1] > 150) & (out[..., 0] < 50) & (out[..., 2] < 50)
    rows = slice(3 * scale, 17 * scale)
    assert green[rows, 2 * scale].all() and green[rows, 27 * scale - 1].all()
    assert not green[rows, 2 * scale - 1].any() and not green[rows, 27 * scale].any()
    # Nothing is written as text with one class: only green, red, blue and white (point rings) appear.
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    assert colors <= {(0, 0, 0), (0, 204, 0), (255, 0, 0), (0, 0, 255), (255, 255, 255)}


def test_points_keep_the_image_outside_what_is_drawn():
    image = _image()
    ann = {"bbox": [5, 5, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "point_coords": [], "point_labels": []}
    out = draw_points(image, [ann], ONE_CLASS, scale=2)
    np.testing.assert_array_equal(out[:, :8], upscale(image, 2)[:, :8])  # left of the box
