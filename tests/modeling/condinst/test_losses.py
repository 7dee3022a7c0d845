"""CondInst's mask and point losses (point_sup.modeling.condinst.losses) against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks, PolygonMasks

from point_sup.modeling.condinst.losses import (
    box_masks_at_stride,
    dice_loss,
    mask_cells_at_stride,
    mask_logits_to_image,
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
    targets = mask_cells_at_stride(BitMasks(masks), (10, 13), (3, 4), 4).float()
    expected = torch.zeros(1, 3, 4)
    expected[0, 0, 1] = 1
    torch.testing.assert_close(targets, expected)
    # polygons are rasterized at the image size first
    poly = PolygonMasks([[np.array([4.0, 0.0, 12.0, 0.0, 12.0, 8.0, 4.0, 8.0])]])
    targets = mask_cells_at_stride(poly, (10, 13), (3, 4), 4)
    assert targets[0, 0, 1] == 1 and targets[0, 1, 2] == 1 and targets[0, 0, 0] == 0 and targets[0, 2, 1] == 0


def _dense_targets(masks: torch.Tensor, map_size: tuple[int, int], stride: int) -> torch.Tensor:
    """The targets as computed before issue 23, the reference: the full-resolution masks in float32,
    zero-padded to the map's extent (or cut to it), then every ``stride``-th pixel from ``stride // 2``."""
    height, width = map_size
    padded = torch.zeros((masks.shape[0], height * stride, width * stride))
    h, w = min(masks.shape[1], height * stride), min(masks.shape[2], width * stride)
    padded[:, :h, :w] = masks[:, :h, :w].float()
    return padded[:, stride // 2 :: stride, stride // 2 :: stride]


# (crop of the tile, map size, stride): odd sizes, padding of several cells, masks beyond the map
TARGET_CASES = [
    ((191, 253), (48, 64), 4),
    ((191, 253), (52, 67), 4),
    ((64, 97), (8, 13), 8),
    ((33, 250), (17, 125), 2),
    ((50, 77), (50, 77), 1),
    ((150, 210), (30, 40), 4),  # the masks reach beyond the map: cut
    ((17, 19), (6, 7), 3),
]


@pytest.mark.parametrize("crop, map_size, stride", TARGET_CASES)
def test_mask_targets_of_real_nuclei_equal_the_full_resolution_computation(
    nuclei_datasets, crop, map_size, stride
):
    from replicas import nuclei_tiles

    h, w = crop
    tile = nuclei_tiles(nuclei_datasets)["train"][2]
    masks = torch.from_numpy(tile.masks[:, :h, :w].copy())
    assert masks.any(dim=(1, 2)).sum() >= 1
    expected = _dense_targets(masks, map_size, stride)
    cells = mask_cells_at_stride(BitMasks(masks), (h, w), map_size, stride)
    assert cells.dtype == torch.bool and torch.equal(cells.float(), expected)


def test_mask_targets_of_polygons_equal_those_of_the_loaders_bit_masks(nuclei_datasets):
    """Polygons (Detectron2's default INPUT.MASK_FORMAT) give the targets of the bit masks that the
    loader's ``"bitmask"`` format rasterizes from them (Detectron2's ``polygons_to_bitmask``)."""
    from detectron2.data.detection_utils import annotations_to_instances
    from replicas import nuclei_tiles
    from replicas.coco import polygons

    h, w = 191, 253
    tile = nuclei_tiles(nuclei_datasets)["train"][1]
    segmentations = [polygons(m) for m in tile.masks[:, :h, :w]]
    annos = [
        {"bbox": [0, 0, 1, 1], "bbox_mode": 0, "category_id": 0, "segmentation": p}
        for p in segmentations
        if p
    ]
    poly = annotations_to_instances(annos, (h, w), mask_format="polygon").gt_masks
    bits = annotations_to_instances(annos, (h, w), mask_format="bitmask").gt_masks
    assert isinstance(poly, PolygonMasks) and isinstance(bits, BitMasks) and len(poly) > 10
    for map_size, stride in (((48, 64), 4), ((25, 33), 8)):
        expected = _dense_targets(bits.tensor, map_size, stride)
        assert expected.sum() > 0
        assert torch.equal(mask_cells_at_stride(poly, (h, w), map_size, stride).float(), expected)
        assert torch.equal(mask_cells_at_stride(bits, (h, w), map_size, stride).float(), expected)


def test_dice_loss_in_float16_is_float32s_over_a_coco_sized_map():
    """Float16 probabilities over 200 x 336 cells (a COCO input at stride 4): sums of up to 67200,
    beyond float16's 65504; the loss is computed in float32, from the same float16 values."""
    g = torch.Generator().manual_seed(0)
    probs = (0.98 + 0.02 * torch.rand(2, 200, 336, generator=g)).half()
    targets = torch.rand(2, 200, 336, generator=g) < 0.7
    got = dice_loss(probs, targets)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, dice_loss(probs.float(), targets.float()), rtol=0, atol=0)
    assert not torch.isfinite((probs * probs).sum(dim=(1, 2))).all()  # what float16 sums would give


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


def test_points_read_in_float32_from_float16_logits():
    """Float16 logits (the generated heads under autocast) are read at float32 coordinates: points of
    a 1333-px-wide input land in their own cell and between the right cell centres."""
    torch.manual_seed(4)
    logits = torch.randn(1, 1, 3, 336).half()
    coords = torch.tensor([[[1031.5, 5.5], [1299.7, 9.1], [1034.9, 2.0]]])
    cells = point_logits_at_cells(logits, coords, 4)
    assert cells.tolist() == [
        [logits[0, 0, 1, 257].item(), logits[0, 0, 2, 324].item(), logits[0, 0, 0, 258].item()]
    ]
    bilinear = point_logits_bilinear(logits, coords, 4)
    assert bilinear.dtype == torch.float32
    torch.testing.assert_close(bilinear, point_logits_bilinear(logits.float(), coords, 4), rtol=0, atol=0)
