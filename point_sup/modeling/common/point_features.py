"""Shared point machinery: sampling features at points, box-relative coordinates, point selection.

Coordinate conventions used throughout point_sup:

* **Image coordinates** are Detectron2's continuous coordinates: pixel ``(i, j)`` (column ``i``,
  row ``j``) covers ``[i, i + 1) x [j, j + 1)`` and its centre is ``(i + 0.5, j + 0.5)``. Integer
  point annotations (pixel indices) become image coordinates by adding 0.5 in the dataset loader.
* **Box-relative coordinates** ``(u, v)`` in ``[0, 1]^2`` map a box ``(x0, y0, x1, y1)`` (XYXY,
  image coordinates) to ``x = x0 + u * (x1 - x0)``, ``y = y0 + v * (y1 - y0)``. A point is inside
  the box iff ``0 <= u <= 1`` and ``0 <= v <= 1``.
* **Normalized map coordinates** for :func:`point_sample`: ``(0, 0)`` and ``(1, 1)`` are the outer
  corners of a feature map, so the centre of cell ``k`` of an ``M``-cell side is ``(k + 0.5) / M``.
  An ``M x M`` RoI prediction (Mask R-CNN's 28x28, PointRend's 7x7) is aligned with its box
  (RoIAlign ``aligned=True``), so box-relative coordinates are directly its normalized coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes

__all__ = [
    "FeatureSampler",
    "box_chunks",
    "calculate_uncertainty",
    "features_for_point_sampling",
    "generate_regular_grid_point_coords",
    "get_point_coords_wrt_box",
    "get_point_coords_wrt_image",
    "get_uncertain_point_coords_on_grid",
    "get_uncertain_point_coords_with_randomness",
    "point_sample",
    "point_sample_fine_grained_features",
    "pooled_channels",
]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly interpolate ``input`` at normalized points.

    Args:
        input: (N, C, H, W) feature map or prediction.
        point_coords: (N, P, 2) or (N, Hp, Wp, 2) normalized (x, y) in [0, 1]^2 (see module doc:
            0 and 1 are the outer edges; cell centres at (k + 0.5) / size).
        kwargs: passed to :func:`torch.nn.functional.grid_sample` (e.g. ``mode="nearest"``).

    Returns:
        (N, C, P) or (N, C, Hp, Wp). Outside the map, values fade to 0 (``padding_mode="zeros"``).
    """
    add_dim = point_coords.dim() == 3
    if add_dim:
        point_coords = point_coords.unsqueeze(2)
    # align_corners=False is what makes [0, 1] the outer edges rather than the outer cell centres.
    output = F.grid_sample(input, 2.0 * point_coords - 1.0, align_corners=False, **kwargs)
    return output.squeeze(3) if add_dim else output


def generate_regular_grid_point_coords(
    num_boxes: int, side_size: int, device: torch.device | str
) -> torch.Tensor:
    """Centres of a ``side_size x side_size`` grid, row-major, for each of ``num_boxes`` boxes.

    Returns:
        (num_boxes, side_size², 2) normalized (x, y); cell ``(row, col)`` is at
        ``((col + 0.5) / side, (row + 0.5) / side)`` and has flat index ``row * side + col``.
    """
    centres = (torch.arange(side_size, device=device, dtype=torch.float32) + 0.5) / side_size
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
    return grid.unsqueeze(0).expand(num_boxes, -1, -1).contiguous()


def get_point_coords_wrt_image(boxes: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Box-relative (u, v) to image coordinates.

    Args:
        boxes: (R, 4) XYXY image coordinates.
        point_coords: (R, P, 2) box-relative (u, v).

    Returns:
        (R, P, 2) image coordinates (x, y).
    """
    origin = boxes[:, None, 0:2]
    size = boxes[:, None, 2:4] - origin
    return origin + point_coords * size


def get_point_coords_wrt_box(boxes: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Image coordinates to box-relative (u, v); the inverse of :func:`get_point_coords_wrt_image`.

    Args:
        boxes: (R, 4) XYXY image coordinates. Degenerate (zero width/height) boxes are widened to
            a minimum size of 1e-6 so the result stays finite.
        point_coords: (R, P, 2) image coordinates (x, y).

    Returns:
        (R, P, 2) box-relative (u, v); inside the box iff both lie in [0, 1].
    """
    origin = boxes[:, None, 0:2]
    size = (boxes[:, None, 2:4] - origin).clamp(min=1e-6)
    return (point_coords - origin) / size


def point_sample_fine_grained_features(
    features_list: Sequence[torch.Tensor],
    feature_scales: Sequence[float],
    boxes: Sequence[Boxes],
    point_coords: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of image-level maps (e.g. FPN p2) at box-relative points.

    Args:
        features_list: L maps, each (N, C_l, H_l, W_l) for the N images of the batch.
        feature_scales: L scales (1 / stride) of those maps.
        boxes: N :class:`Boxes`, R boxes in total, in image coordinates.
        point_coords: (R, P, 2) box-relative (u, v), boxes concatenated in image order.

    Returns:
        features: (R, sum_l C_l, P) bilinear features at the points (P may be 0).
        point_coords_wrt_image: (R, P, 2) the points in image coordinates.
    """
    cat_boxes = Boxes.cat(list(boxes))
    point_coords_wrt_image = get_point_coords_wrt_image(cat_boxes.tensor, point_coords)
    num_boxes = [b.tensor.shape[0] for b in boxes]  # tensors while tracing: counts stay dynamic
    features_per_image = []
    for idx, coords in enumerate(torch.split(point_coords_wrt_image, num_boxes)):
        # Only an image without boxes is skipped: boxes without points (P = 0, e.g. a batch whose
        # objects have no labelled point left) still get their (R_i, C, 0) rows, so that the rows
        # stay aligned with the boxes and with anything concatenated to the features per point.
        if coords.shape[0] == 0:
            continue
        per_level = []
        for features, scale in zip(features_list, feature_scales, strict=True):
            # A map of stride s covers the image exactly: image coordinate x is map coordinate x / s.
            # Divided by Python ints rather than a (W, H) tensor made from the shape: the same float
            # divisions, but no host-to-device copy (one would wait for the GPU's queue, per map).
            height, width = features.shape[-2:]
            scaled = coords * scale
            normalized = torch.stack([scaled[..., 0] / width, scaled[..., 1] / height], dim=-1)
            sampled = point_sample(features[idx : idx + 1], normalized.reshape(1, -1, 2))
            per_level.append(sampled.squeeze(0).view(features.shape[1], coords.shape[0], coords.shape[1]))
        # One level (p2, the default) needs no concatenation: the transposed view is copied once below.
        level_cat = per_level[0] if len(per_level) == 1 else torch.cat(per_level, dim=0)
        features_per_image.append(level_cat.transpose(0, 1))
    if not features_per_image:
        channels = sum(f.shape[1] for f in features_list)
        empty = point_coords.new_zeros((0, channels, point_coords.shape[1]))
        return empty, point_coords_wrt_image
    return torch.cat(features_per_image, dim=0), point_coords_wrt_image


def features_for_point_sampling(
    features: Mapping[str, torch.Tensor], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The maps ``names`` of ``features``, prepared for many :func:`point_sample` calls.

    On CPU each is copied once to channels-last memory: ``grid_sample`` then reads a point's four
    neighbours as contiguous channel vectors instead of C strided scalars each, the same values in
    less time (docs/implementation.md, *Common: point sampling*). Elsewhere the maps are returned as
    they are.

    Args:
        features: image-level maps by name, each (N, C, H, W).
        names: the maps to keep.

    Returns:
        ``{name: (N, C, H, W)}``, the same values.
    """
    return {
        n: features[n].contiguous(memory_format=torch.channels_last)
        if features[n].device.type == "cpu"
        else features[n]
        for n in names
    }


def box_chunks(boxes: Sequence[Boxes], max_boxes: int | None) -> list[tuple[list[Boxes], slice]]:
    """Cut the R boxes of N images into chunks of at most ``max_boxes`` boxes of one image each.

    Args:
        boxes: N :class:`Boxes` (image coordinates), R in total.
        max_boxes: the largest chunk; None: one chunk of all R boxes (``boxes`` itself).

    Returns:
        Per chunk, in the images' order: the N-list of :class:`Boxes` that holds the chunk's boxes
        in its own image and no box elsewhere (what :meth:`FeatureSampler.at_points` takes), and the
        chunk's rows in the concatenation of all images' boxes (a slice of 0..R).
    """
    total = sum(len(b) for b in boxes)
    if max_boxes is None or total <= max_boxes:
        return [(list(boxes), slice(None) if torch.jit.is_tracing() else slice(0, total))]
    chunks = []
    start = 0
    for index, image_boxes in enumerate(boxes):
        for first in range(0, len(image_boxes), max_boxes):
            chunk = image_boxes[first : first + max_boxes]
            per_image = [chunk if k == index else b[0:0] for k, b in enumerate(boxes)]
            chunks.append((per_image, slice(start + first, start + first + len(chunk))))
        start += len(image_boxes)
    return chunks


def pooled_channels(head: str, input_shape: Mapping[str, ShapeSpec], names: Sequence[str]) -> int:
    """The channels of the maps ``names`` concatenated, for a ROI mask head that samples the
    image-level maps itself (PointRend, Implicit PointRend).

    Args:
        head: the head's name, for the error message.
        input_shape: what the ROI heads hand the mask head: the feature dict's shapes by name.
        names: the maps the head samples.

    Raises:
        ValueError: ``input_shape`` is one pooled shape (``ROI_MASK_HEAD.POOLER_TYPE`` is set) or
            lacks one of ``names``.
    """
    if not isinstance(input_shape, Mapping):
        raise ValueError(
            f"{head} samples image-level features itself: set MODEL.ROI_MASK_HEAD.POOLER_TYPE to '' "
            "so that ROI heads pass the feature dict"
        )
    missing = sorted(set(names) - set(input_shape))
    if missing:
        raise ValueError(
            f"{head} needs features {missing}, which ROI_HEADS.IN_FEATURES ({sorted(input_shape)}) "
            "does not provide"
        )
    return sum(input_shape[name].channels for name in names)


@dataclass(frozen=True)
class FeatureSampler:
    """The image-level maps ``names`` of a feature dict, sampled bilinearly at box-relative points and
    concatenated over channels in this order: a point head's fine-grained features and PointRend's RoI
    pooler.

    Attributes:
        names: the L maps to sample (e.g. POINT_HEAD.IN_FEATURES, ROI_MASK_HEAD.IN_FEATURES).
        scales: 1 / stride of each map by name (of ``names`` at least).
    """

    names: tuple[str, ...]
    scales: Mapping[str, float]

    @classmethod
    def from_shapes(cls, names: Sequence[str], input_shape: Mapping[str, ShapeSpec]) -> FeatureSampler:
        """The sampler of the maps ``names`` among those described by ``input_shape`` (name → shape)."""
        return cls(tuple(names), {name: 1.0 / spec.stride for name, spec in input_shape.items()})

    def at_points(
        self, features: Mapping[str, torch.Tensor], boxes: Sequence[Boxes], point_coords: torch.Tensor
    ) -> torch.Tensor:
        """Features at box-relative points.

        Args:
            features: image-level maps by name, each (N, C_l, H_l, W_l).
            boxes: N :class:`Boxes` (image coordinates), R in total.
            point_coords: (R, P, 2) box-relative (u, v).

        Returns:
            (R, sum_l C_l, P) features at the points.
        """
        sampled, _ = point_sample_fine_grained_features(
            [features[n] for n in self.names], [self.scales[n] for n in self.names], boxes, point_coords
        )
        return sampled

    def on_grid(
        self, features: Mapping[str, torch.Tensor], boxes: Sequence[Boxes], side: int
    ) -> torch.Tensor:
        """RoI features on a regular ``side x side`` grid over each box: PointRend's RoI pooler.

        Sampling every map at the grid's cell centres equals RoIAlign(aligned=True, sampling_ratio=1)
        per level; the levels are concatenated instead of assigning each box one level (the same with
        a single level such as p2).

        Args:
            features, boxes: as for :meth:`at_points`.
            side: S, cells per grid side (ROI_MASK_HEAD.POOLER_RESOLUTION).

        Returns:
            (R, sum_l C_l, S, S); cell ``(row, col)`` is sampled at box-relative
            ``((col + 0.5) / S, (row + 0.5) / S)``, in the dtype of the first map.
        """
        num_boxes = sum(b.tensor.shape[0] for b in boxes)  # a tensor while tracing: stays dynamic
        reference = features[self.names[0]]
        grid = generate_regular_grid_point_coords(num_boxes, side, reference.device).to(reference.dtype)
        sampled = self.at_points(features, boxes, grid)
        # Explicit channel count: a -1 cannot be inferred when there is no box.
        return sampled.reshape(num_boxes, sampled.shape[1], side, side)

    def prepare(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps of :attr:`names`, prepared for many :meth:`at_points` calls
        (:func:`features_for_point_sampling`)."""
        return features_for_point_sampling(features, self.names)


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """PointRend's uncertainty: ``-|logit|`` (highest where the prediction is closest to 0.5).

    Args:
        logits: (R, 1, ...) class-specific logits of the predicted (or ground-truth) class.

    Returns:
        (R, 1, ...) uncertainty scores.
    """
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """PointRend's training-time point selection (importance sampling biased to uncertain regions).

    Draws ``oversample_ratio * num_points`` uniform random points, keeps the
    ``importance_sample_ratio * num_points`` most uncertain of them and fills the rest with new
    uniform random points.

    Args:
        coarse_logits: (R, C, Hc, Wc) or (R, 1, Hc, Wc) coarse predictions.
        uncertainty_func: maps (R, C, P) sampled logits to (R, 1, P) uncertainties.
        num_points, oversample_ratio, importance_sample_ratio: as in PointRend (k and beta).

    Returns:
        (R, num_points, 2) box-relative (u, v).
    """
    assert oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1
    R = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(R, num_sampled, 2, device=coarse_logits.device)
    uncertainties = uncertainty_func(point_sample(coarse_logits, candidates))
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    coords = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(R, num_random, 2, device=coarse_logits.device)], dim=1)
    return coords


def get_uncertain_point_coords_on_grid(
    uncertainty_map: torch.Tensor, num_points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``num_points`` most uncertain cells of a regular grid (adaptive subdivision at inference).

    Args:
        uncertainty_map: (R, 1, H, W) uncertainties.
        num_points: how many cells to select (at most H * W).

    Returns:
        point_indices: (R, P) flat indices ``row * W + col``, P = min(num_points, H * W).
        point_coords: (R, P, 2) normalized (x, y) of those cell centres.
    """
    _, _, H, W = uncertainty_map.shape
    num_points = min(H * W, num_points)
    # flatten, not view(R, H * W): ONNX Reshape gets (R, -1), which fails for R = 0
    point_indices = torch.topk(uncertainty_map.flatten(1), k=num_points, dim=1)[1]
    xs = ((point_indices % W).to(torch.float32) + 0.5) / W
    ys = (torch.div(point_indices, W, rounding_mode="floor").to(torch.float32) + 0.5) / H
    return point_indices, torch.stack([xs, ys], dim=2)
