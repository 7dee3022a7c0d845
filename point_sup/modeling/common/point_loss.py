"""The point-level mask loss (paper §3.2), the targets it compares against, and its options.

Every point-supervised head reduces its prediction to one logit per labelled point and calls
:func:`point_bce_loss`. Labels are float (:mod:`point_sup.point_labels`): 1 = object, 0 = background,
-1 = ignore (``IGNORE_LABEL``), -2 = padding (``PADDING_LABEL``; instances of one batch may have
different numbers of points). A point is ignored when it left the image under augmentation, or when it
lies outside the proposal box the prediction is made for (paper §3.2: "points outside the proposal box
are ignored").

Normalisation of the BCE (``MODEL.POINT_LOSS.NORMALIZATION``):

``"all_points"`` (default: Detectron2's PointSup/PointRend ``roi_mask_point_loss``, the code behind
    the paper's numbers)
    the sum of the BCE over the supervised points divided by the number of labelled points, ignored
    ones included; padding is not a point and is never counted.
``"valid_points"`` (point_sup's option)
    the mean over the supervised points only.

Labels of points sampled on ground-truth masks (heads trained from masks,
``MODEL.POINT_LOSS.MASK_POINT_LABELS``, :func:`mask_labels_at_points`): ``"bilinear"`` (default,
Detectron2's PointRend: the bit mask interpolated at the point) or ``"pixel"`` (point_sup's option:
the value of the pixel that contains the point, the rule by which P_N points are labelled).

Every head reads these keys, and how it is supervised, through one :class:`PointLossOptions`. Why the
two normalisations differ and when it matters: docs/implementation.md, *Common: the point loss*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import cat
from detectron2.structures import BitMasks, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage

from ...config import MIXED_SUP_WEIGHTING, is_mixed_supervision
from ...point_labels import IGNORE_LABEL, PADDING_LABEL
from .point_features import get_point_coords_wrt_box, get_point_coords_wrt_image, point_sample

__all__ = [
    "MASK_POINT_LABELS",
    "NORMALIZATIONS",
    "PointLossOptions",
    "cat_gt_classes",
    "check_choice",
    "get_mask_point_labels",
    "get_point_targets",
    "ignore_points_outside_boxes",
    "mask_labels_at_points",
    "point_bce_loss",
    "roi_grid_point_loss",
    "select_class_logits",
]

NORMALIZATIONS = ("all_points", "valid_points")
MASK_POINT_LABELS = ("bilinear", "pixel")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """ValueError naming the config ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {tuple(choices)}, got {value!r}")


@dataclass(frozen=True)
class PointLossOptions:
    """How a mask head is supervised and how its point loss is computed: the config keys that every
    head reads, read once (:meth:`from_config`) and checked here.

    Attributes:
        point_sup: ``INPUT.POINT_SUP``: train from labelled points instead of masks.
        normalization: ``MODEL.POINT_LOSS.NORMALIZATION``, one of :data:`NORMALIZATIONS`.
        mask_point_labels: ``MODEL.POINT_LOSS.MASK_POINT_LABELS``, one of :data:`MASK_POINT_LABELS`.
        mixed_sup: ``MODEL.MIXED_SUP.ENABLED``: each instance by the kind of its object
            (point_sup.modeling.common.mixed_loss).
        mixed_weighting: ``MODEL.MIXED_SUP.WEIGHTING``.
    """

    point_sup: bool = False
    normalization: str = "all_points"
    mask_point_labels: str = "bilinear"
    mixed_sup: bool = False
    mixed_weighting: str = "instances"

    def __post_init__(self) -> None:
        check_choice("MODEL.POINT_LOSS.NORMALIZATION", self.normalization, NORMALIZATIONS)
        check_choice("MODEL.POINT_LOSS.MASK_POINT_LABELS", self.mask_point_labels, MASK_POINT_LABELS)
        check_choice("MODEL.MIXED_SUP.WEIGHTING", self.mixed_weighting, MIXED_SUP_WEIGHTING)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> PointLossOptions:
        """The options of ``cfg``; ValueError for mixed supervision's invalid settings
        (point_sup.config.is_mixed_supervision) and for unknown values."""
        return cls(
            point_sup=bool(cfg.INPUT.POINT_SUP),
            normalization=cfg.MODEL.POINT_LOSS.NORMALIZATION,
            mask_point_labels=cfg.MODEL.POINT_LOSS.MASK_POINT_LABELS,
            mixed_sup=is_mixed_supervision(cfg),
            mixed_weighting=cfg.MODEL.MIXED_SUP.WEIGHTING,
        )


def get_point_targets(instances: Sequence[Instances]) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled points of training proposals, relative to each proposal's box.

    Args:
        instances: per image, proposals matched to ground truth with fields ``proposal_boxes``
            (R_i boxes, image coordinates), ``gt_point_coords`` (R_i, P_i, 2) image coordinates and
            ``gt_point_labels`` (R_i, P_i) in {1, 0, -1} (see point_sup.point_labels).

    Returns:
        point_coords: (R, P, 2) box-relative (u, v) for the R = sum R_i proposals, P = max P_i.
        point_labels: (R, P) float; -1 for ignored points and points outside the proposal box
            (closed interval: a point on the box edge counts as inside), -2 for padding.
    """
    coords, labels = [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        rel = get_point_coords_wrt_box(inst.proposal_boxes.tensor, inst.gt_point_coords.to(torch.float32))
        coords.append(rel)
        labels.append(ignore_points_outside_boxes(rel, inst.gt_point_labels))
    if not coords:
        device = instances[0].proposal_boxes.device if instances else torch.device("cpu")
        return torch.zeros((0, 0, 2), device=device), torch.zeros((0, 0), device=device)
    num_points = max(c.shape[1] for c in coords)
    coords = [F.pad(c, (0, 0, 0, num_points - c.shape[1])) for c in coords]
    labels = [F.pad(lab, (0, num_points - lab.shape[1]), value=PADDING_LABEL) for lab in labels]
    return torch.cat(coords), torch.cat(labels)


def ignore_points_outside_boxes(
    point_coords_wrt_box: torch.Tensor, point_labels: torch.Tensor
) -> torch.Tensor:
    """The labels with every labelled point outside its box set to ``IGNORE_LABEL``: the one rule of
    "points outside the box are unsupervised" (paper §3.2), for proposal boxes (ROI heads) and
    ground-truth boxes (CondInst) alike.

    Args:
        point_coords_wrt_box: (R, P, 2) box-relative (u, v) of each point (see point_features).
        point_labels: (R, P) labels (1, 0, -1 ignore, -2 padding).

    Returns:
        (R, P) float32, a new tensor: -1 where a point lies outside the closed box [0, 1]² (a point
        on the box edge counts as inside); padding stays padding.
    """
    labels = point_labels.to(torch.float32)
    outside = ((point_coords_wrt_box < 0.0) | (point_coords_wrt_box > 1.0)).any(dim=2) & (
        labels != PADDING_LABEL
    )
    # torch.where, not an in-place boolean assignment: one elementwise kernel, nothing to index.
    return torch.where(outside, IGNORE_LABEL, labels)


def cat_gt_classes(instances: Sequence[Instances], device: torch.device | str | None = None) -> torch.Tensor:
    """The ground-truth classes of all proposals, in the order of ``instances``.

    Args:
        instances: per image, R_i proposals with ``gt_classes`` (R_i,).
        device: of the empty result when there is no proposal (default: CPU).

    Returns:
        (R,) int64, R = sum R_i.
    """
    classes = [inst.gt_classes for inst in instances if len(inst) > 0]
    if not classes:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return cat(classes).to(torch.int64)


def mask_labels_at_points(
    gt_masks: PolygonMasks | BitMasks,
    point_coords_wrt_image: torch.Tensor,
    image_size: tuple[int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Ground-truth mask values at image points, for heads trained from masks with sampled points.

    Args:
        gt_masks: R masks of one image (polygons are rasterized to the image as Detectron2's
            ``BitMasks.from_polygon_masks`` does).
        point_coords_wrt_image: (R, P, 2) image coordinates (x, y).
        image_size: (H, W) of the image the masks belong to.
        mode: ``"bilinear"``: the bit mask interpolated bilinearly at the point, pixel values at the
            pixel centres ``(i + 0.5, j + 0.5)`` and 0 beyond the image (Detectron2's PointRend
            ``sample_point_labels``; soft labels in (0, 1) between pixels of different value).
            ``"pixel"``: the value of the pixel that contains the point (``floor`` of its image
            coordinates; the rule by which P_N annotations label their points); 0 outside the image.

    Returns:
        (R, P) float32 labels in [0, 1] (in {0, 1} for ``"pixel"``).
    """
    check_choice("MODEL.POINT_LOSS.MASK_POINT_LABELS", mode, MASK_POINT_LABELS)
    if isinstance(gt_masks, PolygonMasks):
        gt_masks = BitMasks.from_polygon_masks(gt_masks, *image_size)
    masks = gt_masks.tensor.to(point_coords_wrt_image.device)
    R, H, W = masks.shape
    if R == 0:
        return point_coords_wrt_image.new_zeros(point_coords_wrt_image.shape[:2])
    if mode == "bilinear":
        # A map covering the image exactly: image coordinates / (W, H) are its normalized coordinates
        # (divided by Python ints: no (W, H) tensor to copy to the device, which would wait for it).
        coords = point_coords_wrt_image.to(torch.float32)
        normalized = torch.stack([coords[..., 0] / W, coords[..., 1] / H], dim=-1)
        return point_sample(masks.to(torch.float32).unsqueeze(1), normalized).squeeze(1)
    cols = torch.floor(point_coords_wrt_image[..., 0]).long()
    rows = torch.floor(point_coords_wrt_image[..., 1]).long()
    inside = (cols >= 0) & (cols < W) & (rows >= 0) & (rows < H)
    flat = rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)
    values = torch.gather(masks.view(R, H * W), 1, flat).to(torch.float32)
    return values * inside


def get_mask_point_labels(
    instances: Sequence[Instances], point_coords: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Labels, from the ground-truth masks, of box-relative points of training proposals.

    Args:
        instances: per image, R_i proposals with ``proposal_boxes`` and ``gt_masks``.
        point_coords: (R, P, 2) box-relative (u, v) of the R = sum R_i proposals, in order.
        mode: ``MODEL.POINT_LOSS.MASK_POINT_LABELS`` (see :func:`mask_labels_at_points`).

    Returns:
        (R, P) float32 labels in [0, 1].
    """
    labels, start = [], 0
    for inst in instances:
        n = len(inst)
        if n == 0:
            continue
        coords = get_point_coords_wrt_image(inst.proposal_boxes.tensor, point_coords[start : start + n])
        labels.append(mask_labels_at_points(inst.gt_masks, coords, inst.image_size, mode))
        start += n
    if not labels:
        return point_coords.new_zeros(point_coords.shape[:2])
    return torch.cat(labels)


def select_class_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The channel of each instance's class, or the only channel of a class-agnostic prediction.

    Args:
        logits: (R, C, ...) with C = number of classes, or (R, 1, ...).
        classes: (R,) int64 class indices.

    Returns:
        (R, 1, ...).
    """
    if logits.shape[1] == 1:
        return logits
    return logits[torch.arange(logits.shape[0], device=logits.device), classes].unsqueeze(1)


def point_bce_loss(
    point_logits: torch.Tensor,
    point_labels: torch.Tensor,
    normalization: str = "all_points",
    log_prefix: str = "",
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy at labelled points, normalised as the module docstring says.

    Args:
        point_logits: (R, P) logits at the labelled points; with ``classes``, (R, C, P) or
            (R, 1, P) logits of which each instance's class channel is used.
        point_labels: (R, P) float targets in [0, 1]; -1 = ignore, -2 = padding.
        normalization: ``"all_points"`` (Detectron2's: divide by the number of labelled points,
            ignored ones included) or ``"valid_points"`` (divide by the number of supervised ones).
        log_prefix: if given and an event storage is active, the point accuracy and the fraction
            of valid points are logged under ``{log_prefix}/...``.
        classes: optional (R,) int64 classes (see :func:`select_class_logits`).

    Returns:
        A scalar. With no valid point it is 0 with the graph kept (every logit gets gradient 0), so
        DDP's expectation that every parameter gets a gradient holds. No host-device
        synchronisation but the logging's one copy (``log_prefix``).
    """
    check_choice("MODEL.POINT_LOSS.NORMALIZATION", normalization, NORMALIZATIONS)
    if classes is not None:
        point_logits = select_class_logits(point_logits, classes)[:, 0]
    valid = point_labels >= 0
    if log_prefix:
        _log_point_stats(point_logits, point_labels, valid, log_prefix)
    # Unsupervised points stay in the sum with weight 0 instead of being selected out: the same
    # total (Detectron2's roi_mask_point_loss weights its ignored points the same way), a gradient
    # of exactly 0 at those points, and no boolean indexing, whose output size the host would have
    # to wait for on a GPU (twice: its backward indexes again). Their labels (-1, -2) are clamped
    # and their logits replaced by 0, so that nothing non-finite reaches the sum as 0 * inf.
    total = F.binary_cross_entropy_with_logits(
        torch.where(valid, point_logits, 0.0),
        point_labels.clamp(min=0.0),
        weight=valid.to(point_logits.dtype),
        reduction="sum",
    )
    count = valid.sum() if normalization == "valid_points" else (point_labels != PADDING_LABEL).sum()
    # No supervised point: total is 0 (with the graph, for DDP) and so is the loss.
    return total / count.clamp(min=1)


def _log_point_stats(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prefix: str) -> None:
    """Point accuracy and valid-point fraction into the event storage, read with one device-to-host
    copy (Detectron2's own loss statistics read theirs where they compute them, one by one)."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage outside a trainer: nothing to log to
        return
    correct = ((logits > 0) == (labels > 0.5)) & valid
    num_correct, num_valid, num_points = torch.stack(
        [correct.sum(), valid.sum(), (labels != PADDING_LABEL).sum()]
    ).tolist()
    storage.put_scalar(f"{prefix}/accuracy", num_correct / max(num_valid, 1))
    storage.put_scalar(f"{prefix}/valid_point_fraction", num_valid / max(num_points, 1))


def roi_grid_point_loss(
    mask_logits: torch.Tensor,
    instances: Sequence[Instances],
    log_prefix: str = "",
    point_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    normalization: str = "all_points",
) -> torch.Tensor:
    """Point BCE of an RoI-grid mask prediction at the labelled points of its proposals.

    Args:
        mask_logits: (R, C, M, M) or (R, 1, M, M) logits on an M x M grid aligned with each
            proposal box (Mask R-CNN's 28x28, PointRend's 7x7 coarse prediction); R = total number
            of proposals, in the order of ``instances``.
        instances: per image, the R_i foreground proposals with ``proposal_boxes``, ``gt_classes``,
            ``gt_point_coords`` (R_i, P_i, 2) image coordinates and ``gt_point_labels`` (R_i, P_i).
        log_prefix: storage prefix for point accuracy / valid fraction (see :func:`point_bce_loss`).
        point_targets: ``get_point_targets(instances)`` if the caller has it already.
        normalization: of the point BCE (see :func:`point_bce_loss`).

    Returns:
        Scalar loss; ``0 * mask_logits.sum()`` when there is no proposal or no valid point, so the
        graph is kept.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    point_coords, point_labels = point_targets if point_targets is not None else get_point_targets(instances)
    if point_labels.numel() == 0:
        return mask_logits.sum() * 0.0
    # Select the class channel before interpolating: one channel to sample instead of C.
    class_logits = select_class_logits(mask_logits, cat_gt_classes(instances))
    # Box-relative (u, v) are the normalized coordinates of a box-aligned grid (point_features doc).
    point_logits = point_sample(class_logits, point_coords.to(class_logits.dtype)).squeeze(1)
    return point_bce_loss(
        point_logits, point_labels.to(point_logits.device), normalization=normalization, log_prefix=log_prefix
    )
