"""BoxInst (Tian et al., CVPR 2021, §3): masks from boxes, the paper's box-only baseline (Figure 3:
31.6 AP; Figure 5): its two losses on CondInst's image-level maps and the image-side work they need.
The terms themselves live in point_sup.modeling.common.box_terms (the box prior of the ROI heads uses
them too); their names are re-exported here.

Maps are in the stride-s frame of point_sup.modeling.condinst.dynamic_mask_head (s = 4 for the mask
output): cell ``(r, c)`` covers input ``[c s, (c + 1) s) x [r s, (r + 1) s)``.

Projection and pairwise terms (:func:`projection_loss`, :func:`pairwise_loss`, warmed up by
:func:`pairwise_warmup`): point_sup.modeling.common.box_terms, on the stride-s maps here.
Colour similarity (:func:`cell_color_similarity`)
    ``exp(-||Lab_i - Lab_j|| / 2)`` of the input image (:func:`input_rgb`) average-pooled to stride s
    and converted to CIE Lab (:func:`rgb_to_lab`, sRGB with the D65 white); pairs with a cell outside
    the image (:func:`image_cells`: the cell's sample pixel ``(r s + s // 2, c s + s // 2)`` lies in
    the unpadded image and above its removed bottom rows, :func:`removed_bottom_rows`) are 0.

Both losses are computed in float32 whatever their inputs' dtype (float16 under CUDA's AMP): the
pairwise sum runs over R x K x H x W pairs, far beyond float16's largest value (65504).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.box_terms import (
    PairwiseOptions,
    color_similarity,
    input_rgb,
    neighbour_offsets,
    pairwise_loss,
    pairwise_warmup,
    projection_loss,
    rgb_to_lab,
)

__all__ = [
    "PairwiseOptions",
    "cell_color_similarity",
    "color_similarity",
    "image_cells",
    "input_rgb",
    "neighbour_offsets",
    "pairwise_loss",
    "pairwise_warmup",
    "projection_loss",
    "removed_bottom_rows",
    "rgb_to_lab",
]


def image_cells(
    image_sizes: list[tuple[int, int]],
    map_size: tuple[int, int],
    stride: int,
    bottom_rows: list[int] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The cells of a stride-``stride`` map that show the image.

    Args:
        image_sizes: N unpadded input sizes (h, w), in pixels.
        map_size: (H, W) of the map over the padded batch.
        stride: of the map, in input pixels.
        bottom_rows: per image, how many of its bottom pixel rows count as outside it (BoxInst's
            removal of COCO's unreliable bottom rows); None or values <= 0: none.
        device: of the result.

    Returns:
        (N, H, W) bool: cell (r, c) is True when its sample pixel ``(r s + s // 2, c s + s // 2)`` (the
        pixel point_sup.modeling.condinst.losses.mask_cells_at_stride reads) has row index
        ``< h - bottom_rows[i]`` and column index ``< w``.
    """
    height, width = map_size
    if not image_sizes:
        return torch.zeros((0, height, width), dtype=torch.bool, device=device)
    start = stride // 2
    rows = torch.arange(height, device=device) * stride + start
    cols = torch.arange(width, device=device) * stride + start
    removed = bottom_rows if bottom_rows is not None else [0] * len(image_sizes)
    if len(removed) != len(image_sizes):
        raise ValueError(f"{len(image_sizes)} image sizes but {len(removed)} bottom_rows")
    # Compared with Python numbers per image: no tensor is copied from the host each step.
    in_rows = torch.stack([rows < h - max(b, 0) for (h, _), b in zip(image_sizes, removed, strict=True)])
    in_cols = torch.stack([cols < w for _, w in image_sizes])
    return in_rows[:, :, None] & in_cols[:, None, :]


def removed_bottom_rows(
    bottom_pixels_removed: int, original_heights: list[int], image_sizes: list[tuple[int, int]]
) -> list[int]:
    """Per image, ``int(bottom_pixels_removed * h / height)``: BoxInst's removed bottom rows of the
    original image (``MODEL.BOXINST.BOTTOM_PIXELS_REMOVED`` of them, of height ``height``) in the
    pixels of its network input (height ``h``, from ``image_sizes``); 0 where none are removed."""
    if bottom_pixels_removed <= 0:
        return [0] * len(image_sizes)
    return [
        int(bottom_pixels_removed * h / height)
        for height, (h, _) in zip(original_heights, image_sizes, strict=True)
    ]


def cell_color_similarity(
    rgb: torch.Tensor,
    image_sizes: list[tuple[int, int]],
    map_size: tuple[int, int],
    stride: int,
    offsets: list[tuple[int, int]],
    bottom_rows: list[int] | None = None,
) -> torch.Tensor:
    """Colour similarities of the cells of a stride-``stride`` map with their neighbours.

    Args:
        rgb: (N, 3, H, W) input colours, RGB 0-255 (:func:`input_rgb`).
        image_sizes: N unpadded input sizes (h, w).
        map_size: (H_o, W_o) of the map.
        stride: s of the map, in input pixels.
        offsets: the K neighbours (:func:`neighbour_offsets`).
        bottom_rows: per image, bottom rows that count as outside it (:func:`removed_bottom_rows`).

    Returns:
        (N, K, H_o, W_o) :func:`color_similarity` of the image average-pooled over each cell, 0 for
        pairs with a cell outside the image (:func:`image_cells`).
    """
    height, width = map_size
    pixels = F.pad(
        rgb, (0, max(0, width * stride - rgb.shape[-1]), 0, max(0, height * stride - rgb.shape[-2]))
    )
    pooled = F.avg_pool2d(pixels[..., : height * stride, : width * stride], stride, stride)
    lab = rgb_to_lab(pooled / 255.0)
    valid = image_cells(list(image_sizes), map_size, stride, bottom_rows, device=lab.device)
    return color_similarity(lab, valid, offsets)
