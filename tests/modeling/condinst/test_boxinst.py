"""BoxInst's losses and colour similarity (point_sup.modeling.condinst.boxinst) against direct formulas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from point_sup.modeling.condinst.boxinst import (
    color_similarity,
    image_cells,
    neighbour_offsets,
    pairwise_loss,
    projection_loss,
    rgb_to_lab,
)


def test_projection_loss_equals_dice_of_the_max_projections():
    torch.manual_seed(1)
    probs = torch.rand(2, 5, 6)
    boxes = torch.zeros(2, 5, 6)
    boxes[0, 1:4, 2:5] = 1
    boxes[1, 0:2, 0:6] = 1
    got = projection_loss(probs, boxes)
    for r in range(2):
        px, tx = probs[r].max(dim=0).values, boxes[r].max(dim=0).values  # onto the x axis
        py, ty = probs[r].max(dim=1).values, boxes[r].max(dim=1).values  # onto the y axis
        d = [1 - 2 * (p * t).sum() / ((p * p).sum() + (t * t).sum() + 1e-5) for p, t in ((px, tx), (py, ty))]
        assert got[r].item() == pytest.approx(float(d[0] + d[1]), rel=1e-6)


def _pairwise_by_loops(logits, similarity, box_masks, offsets, thresh):
    total, count = 0.0, 0
    num, height, width = logits.shape
    for r in range(num):
        for k, (dy, dx) in enumerate(offsets):
            for y in range(height):
                for x in range(width):
                    if similarity[r, k, y, x] < thresh or box_masks[r, y, x] == 0:
                        continue
                    pi = torch.sigmoid(logits[r, y, x]).item()
                    pj = torch.sigmoid(logits[r, y + dy, x + dx]).item()
                    total += -math.log(pi * pj + (1 - pi) * (1 - pj))
                    count += 1
    return total / max(count, 1)


def test_pairwise_loss_equals_the_log_probability_of_equal_labels_over_similar_pairs():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 7) * 2
    offsets = neighbour_offsets(3, 2)
    assert len(offsets) == 8 and (-2, -2) in offsets and (0, 0) not in offsets
    lab = torch.rand(1, 3, 6, 7) * 60
    valid = torch.ones(1, 6, 7, dtype=torch.bool)
    valid[0, :, 6] = False  # padding column
    sim = color_similarity(lab, valid, offsets).expand(2, -1, -1, -1)
    box_masks = torch.zeros(2, 6, 7)
    box_masks[0, 1:5, 1:6] = 1
    box_masks[1, 0:6, 2:7] = 1
    got = pairwise_loss(logits, sim, box_masks, offsets, 0.3)
    expected = _pairwise_by_loops(logits, sim, box_masks, offsets, 0.3)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # no neighbour beyond the map or in the padding is ever selected
    k = offsets.index((0, 2))
    assert sim[0, k, :, 4:].sum() == 0


def test_color_similarity_on_a_real_image_against_skimage_lab(nuclei_datasets):
    skimage_color = pytest.importorskip("skimage.color")
    from PIL import Image

    image_file = sorted(Path(nuclei_datasets["image_root"]).glob("*.png"))[0]
    rgb = np.asarray(Image.open(image_file).convert("RGB"))[:64, :80]
    # false colours, so that a and b are exercised too
    rgb = np.stack([rgb[..., 0], 255 - rgb[..., 1], (rgb[..., 2] // 2 + 60)], axis=-1).astype(np.uint8)
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0)[0].permute(1, 2, 0)
    reference = skimage_color.rgb2lab(rgb)
    np.testing.assert_allclose(ours.numpy(), reference, atol=2e-3)
    offsets = neighbour_offsets(3, 2)
    valid = torch.ones(1, 64, 80, dtype=torch.bool)
    sim = color_similarity(ours.permute(2, 0, 1)[None], valid, offsets)[0]
    for k, (dy, dx) in enumerate(offsets):
        for y, x in ((10, 10), (30, 41), (2, 77)):
            if not (0 <= y + dy < 64 and 0 <= x + dx < 80):
                assert sim[k, y, x] == 0
                continue
            expected = math.exp(-np.linalg.norm(reference[y, x] - reference[y + dy, x + dx]) * 0.5)
            assert sim[k, y, x].item() == pytest.approx(expected, abs=1e-4)


def test_image_cells_are_those_whose_sample_pixel_is_in_the_image_above_the_removed_rows():
    sizes = [(10, 13), (9, 7), (16, 16)]
    bottom = [0, 3, -1]  # AdelaiDet's "-1 = none" as well as 0
    got = image_cells(sizes, (4, 4), 4, bottom)
    for i, (h, w) in enumerate(sizes):
        for r in range(4):
            for c in range(4):
                y, x = 4 * r + 2, 4 * c + 2  # the pixel mask_cells_at_stride reads
                assert got[i, r, c] == (y < h - max(bottom[i], 0) and x < w), (i, r, c)
    # (10, 13): 13 = 4 * 3 + 1 covers column 3 by one pixel but not its sample pixel 14
    assert got[0].sum() == 2 * 3
    torch.testing.assert_close(image_cells(sizes, (4, 4), 4), image_cells(sizes, (4, 4), 4, [0, 0, 0]))


def test_pairwise_loss_of_float16_logits_is_float32s_over_a_coco_sized_map():
    """Float16 logits (the generated heads under CUDA's AMP) over a 200 x 336 map: the terms are
    summed over 4 x 8 x 67200 pairs, far beyond float16's range, and -log P(same) of confident
    neighbours is below its resolution near 0; the loss is float32's of the same float16 values."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(4, 200, 336, generator=g) * 6).half()
    offsets = neighbour_offsets(3, 2)
    similarity = torch.rand(4, len(offsets), 200, 336, generator=g)
    box_masks = torch.zeros(4, 200, 336)
    box_masks[:, 20:180, 30:300] = 1
    got = pairwise_loss(logits, similarity, box_masks, offsets, 0.3)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    expected = pairwise_loss(logits.float(), similarity, box_masks, offsets, 0.3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    probs = projection_loss(logits.sigmoid(), box_masks)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, projection_loss(logits.sigmoid().float(), box_masks), rtol=0, atol=0)
