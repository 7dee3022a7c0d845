"""CondInst's mask and point losses (point_sup.modeling.condinst_losses) against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks, PolygonMasks

from point_sup.modeling.condinst_losses import (
    box_masks_at_stride,
    dice_loss,
    mask_logits_to_image,
    mask_targets_at_stride,
    point_logits_at_cells,
    point_logits_bilinear,
)


# ------------------------------------------------------------------------------------------------
# Losses against direct formulas
def test_dice_loss_equals_the_formula():
    p = torch.tensor([[0.2, 0.9, 0.5, 0.0]])
    t = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    expected = 1 - 2 * (0.9 + 0.5) / ((0.04 + 0.81 + 0.25) + 2 + 1e-5)
    assert dice_loss(p, t).item() == pytest.approx(expected, rel=1e-6)


def test_mask_targets_sample_the_pixel_at_each_cells_centre():
    masks = torch.zeros(1, 10, 13, dtype=torch.bool)
    masks[0, 2, 6] = True  # cell (0, 1) of stride 4 reads pixel (2, 6)
    masks[0, 3, 7] = True  # not a sampled pixel
    masks[0, 9, 10] = True  # cell (2, 2) reads (10, 10): outside the image (padding) -> 0
    targets = mask_targets_at_stride(BitMasks(masks), (10, 13), (3, 4), 4)
    expected = torch.zeros(1, 3, 4)
    expected[0, 0, 1] = 1
    torch.testing.assert_close(targets, expected)
    # polygons are rasterized at the image size first
    poly = PolygonMasks([[np.array([4.0, 0.0, 12.0, 0.0, 12.0, 8.0, 4.0, 8.0])]])
    targets = mask_targets_at_stride(poly, (10, 13), (3, 4), 4)
    assert targets[0, 0, 1] == 1 and targets[0, 1, 2] == 1 and targets[0, 0, 0] == 0 and targets[0, 2, 1] == 0


def test_box_masks_contain_the_cells_whose_centre_is_in_the_box():
    boxes = torch.tensor([[2.0, 6.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    masks = box_masks_at_stride(boxes, (3, 3), 4)
    # centres 2, 6, 10: x in [2, 10] -> all three columns; y in [6, 10] -> rows 1, 2
    assert masks[0].tolist() == [[0, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert masks[1].sum() == 0  # a degenerate box contains no centre


def test_point_logits_read_the_cell_that_contains_each_point():
    logits = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    coords = torch.tensor([[[0.5, 0.5], [3.99, 4.0], [4.0, 3.99], [15.9, 11.9]]])
    got = point_logits_at_cells(logits, coords, 4)
    assert got.tolist() == [[0.0, 4.0, 1.0, 11.0]]


def test_bilinear_point_logits_are_the_upsampled_masks_value_at_the_points_pixel():
    torch.manual_seed(3)
    logits = torch.randn(2, 1, 5, 7)
    image_size = (18, 27)  # the unpadded input inside the 20 x 28 map
    upsampled = mask_logits_to_image(logits, 4, image_size)  # what inference thresholds
    ys, xs = torch.meshgrid(torch.arange(18), torch.arange(27), indexing="ij")
    pixels = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # every pixel, borders included
    coords = (pixels.float() + 0.5)[None].expand(2, -1, -1)  # their centres
    got = point_logits_bilinear(logits, coords, 4)
    expected = upsampled[:, 0, pixels[:, 1], pixels[:, 0]]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a point between four cell centres reads their mean; no point reads zero padding
    between = point_logits_bilinear(logits, torch.tensor([[[8.0, 4.0]]] * 2), 4)
    torch.testing.assert_close(between[:, 0], logits[:, 0, :2, 1:3].mean(dim=(1, 2)))
    assert point_logits_bilinear(logits[:0], coords[:0], 4).shape == (0, coords.shape[1])
