"""Mask losses of CondInst trained from masks (M) or from P_N points (paper Table 3b, footnote 2).

All maps are in the stride-s frame of point_sup.modeling.condinst.dynamic_mask_head: cell ``(r, c)`` covers
input coordinates ``[c s, (c + 1) s) x [r s, (r + 1) s)``.

M (CondInst's loss)
    :func:`~point_sup.modeling.common.box_terms.dice_loss` of the predicted probabilities against the
    ground-truth mask sampled at stride s (:func:`mask_cells_at_stride`: the input pixel
    ``(r s + s // 2, c s + s // 2)``, CondInst's), sampled from boolean masks on their device (the
    model's); the loss is computed in float32.
P_N (paper footnote 2)
    per-point cross-entropy *without interpolation*: each labelled point reads the logit of the cell
    that contains it, ``(floor(y / s), floor(x / s))`` (:func:`point_logits_at_cells`); points outside
    the ground-truth box are ignored and every other cell is unsupervised. The BCE is point_sup's one
    point loss (point_sup.modeling.common.point_loss.point_bce_loss) with its normalisation.
    ``MODEL.CONDINST.POINT_LOGITS: bilinear`` (point_sup's option) reads instead the value at the point
    of the mask upsampled to input pixels (:func:`point_logits_bilinear`): the mask that inference
    thresholds, so each point supervises the four nearest cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, PolygonMasks

from ..common.box_terms import dice_loss
from ..common.point_features import point_sample

__all__ = [
    "box_cells_at_stride",
    "box_masks_at_stride",
    "dice_loss",
    "mask_cells_at_stride",
    "mask_logits_to_image",
    "point_logits_at_cells",
    "point_logits_bilinear",
]


def mask_cells_at_stride(
    gt_masks: BitMasks | PolygonMasks,
    image_size: tuple[int, int],
    map_size: tuple[int, int],
    stride: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ground-truth masks of one image sampled on a stride-``stride`` map of the padded input, as bool.

    The bit masks are sampled first (a strided view: only the H x W sample pixels are read), then
    padded, on the masks' device: no full-resolution copy is made. Polygons (Detectron2's default
    ``INPUT.MASK_FORMAT``) are rasterized at ``image_size`` on the CPU first, as Detectron2's
    ``BitMasks.from_polygon_masks`` does (the same pixels as the data loader's ``"bitmask"`` format),
    and only the sampled map is moved to ``device``.

    Args:
        gt_masks: G masks of the image.
        image_size: (h, w) of the image (unpadded network input).
        map_size: (H, W) of the map; ``H * stride >= h`` and ``W * stride >= w``.
        stride: of the map.
        device: of the result (default: that of the bit masks; the CPU for polygons).

    Returns:
        (G, H, W) bool: the value of input pixel ``(r s + s // 2, c s + s // 2)``; False where that
        pixel is beyond the mask (padding).
    """
    if isinstance(gt_masks, PolygonMasks):
        gt_masks = BitMasks.from_polygon_masks(gt_masks, *image_size)
    masks = gt_masks.tensor
    height, width = map_size
    start = stride // 2
    sampled = masks[:, start::stride, start::stride][:, :height, :width]
    cells = F.pad(sampled, (0, width - sampled.shape[2], 0, height - sampled.shape[1])).to(torch.bool)
    return cells if device is None else cells.to(device)


def box_masks_at_stride(boxes: torch.Tensor, map_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Which cells of a stride-``stride`` map lie in each box: those whose centre is in the closed box.

    Args:
        boxes: (R, 4) XYXY input coordinates.
        map_size: (H, W).
        stride: of the map.

    Returns:
        (R, H, W) float32 in {0, 1}.
    """
    return box_cells_at_stride(boxes, map_size, stride).to(torch.float32)


def box_cells_at_stride(boxes: torch.Tensor, map_size: tuple[int, int], stride: int) -> torch.Tensor:
    """:func:`box_masks_at_stride` as a bool tensor (R, H, W) (1 byte per cell: full-image masks)."""
    height, width = map_size
    xs = (torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5) * stride
    ys = (torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5) * stride
    b = boxes.to(torch.float32)
    in_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] <= b[:, 2:3])  # (R, W)
    in_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] <= b[:, 3:4])  # (R, H)
    return in_y[:, :, None] & in_x[:, None, :]


def point_logits_at_cells(logits: torch.Tensor, point_coords: torch.Tensor, stride: int) -> torch.Tensor:
    """The logit of the cell containing each point (no interpolation).

    Args:
        logits: (R, 1, H, W) mask logits of R instances on a stride-``stride`` map.
        point_coords: (R, P, 2) input coordinates (x, y) of each instance's points.
        stride: of the map.

    Returns:
        (R, P) logits; points beyond the map read the nearest border cell (callers ignore them
        through their labels: such points are outside the image or the box).
    """
    num, _, height, width = logits.shape
    if num == 0 or point_coords.shape[1] == 0:
        return logits.new_zeros(point_coords.shape[:2])
    # float16 holds input coordinates beyond 1024 only to whole pixels: floor in float32 at least.
    coords = point_coords.to(torch.promote_types(point_coords.dtype, torch.float32))
    cols = torch.floor(coords[..., 0] / stride).long().clamp(0, width - 1)
    rows = torch.floor(coords[..., 1] / stride).long().clamp(0, height - 1)
    return torch.gather(logits.reshape(num, height * width), 1, rows * width + cols)


def point_logits_bilinear(logits: torch.Tensor, point_coords: torch.Tensor, stride: int) -> torch.Tensor:
    """The value at each point of the mask logits upsampled bilinearly to input pixels
    (:func:`mask_logits_to_image`, the mask that inference thresholds), without upsampling.

    Args:
        logits: (R, 1, H, W) mask logits of R instances on a stride-``stride`` map; cell ``(r, c)``
            covers input ``[c s, (c + 1) s) x [r s, (r + 1) s)``, its value sits at its centre.
        point_coords: (R, P, 2) continuous input coordinates (x, y) of each instance's points (the
            pixel centre of an integer annotation: index + 0.5).
        stride: of the map.

    Returns:
        (R, P) logits, interpolated between the four nearest cell centres; within half a cell of the
        map's edge the edge cells' values (as the upsampling's border), beyond it the same. Float32
        at least: the normalised coordinates need more than float16's 11 bits (a 1333-px side).
    """
    num, _, height, width = logits.shape
    if num == 0 or point_coords.shape[1] == 0:
        return logits.new_zeros(point_coords.shape[:2])
    dtype = torch.promote_types(torch.promote_types(logits.dtype, point_coords.dtype), torch.float32)
    coords = point_coords.to(dtype)
    # Per axis by a Python number: no tensor made from a list on the device each step.
    normalized = torch.stack([coords[..., 0] / (width * stride), coords[..., 1] / (height * stride)], dim=-1)
    return point_sample(logits.to(dtype), normalized, padding_mode="border")[:, 0]


def mask_logits_to_image(logits: torch.Tensor, stride: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Stride-s mask logits to input pixels: bilinear by ``stride`` (cell centres onto pixel centres),
    cropped to the unpadded image. (R, 1, H, W) -> (R, 1, h, w)."""
    up = (
        F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
        if stride > 1
        else logits
    )
    return up[..., : image_size[0], : image_size[1]]
