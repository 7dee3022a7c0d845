"""The point-aware dataset mapper: Detectron2's ``DatasetMapper`` that also carries P_N points.

Coordinates: dataset dicts carry ``point_coords`` in Detectron2's continuous image coordinates (pixel
index ``i`` covers ``[i, i + 1)``; the loader of :mod:`point_sup.data.datasets` stores a labelled pixel
as its centre ``i + 0.5``). Every Detectron2 transform maps continuous coordinates with
``apply_coords`` consistently with how it moves pixels (horizontal flip ``x -> W - x``, resize
``x -> x * new_w / w``, crop ``x -> x - x0``, pad, rotation about the continuous centre, ...), so the
pixel that contains a transformed point, ``floor(x'), floor(y')``, is the transformed pixel that the
label was read from. Points that leave the image (crop, rotation) become ignore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from point_sup_labels.point_fields import POINT_FIELDS

from ..config import is_mixed_supervision
from ..point_labels import IGNORE_LABEL, PADDING_LABEL
from .mixed_supervision import Supervision, annotation_supervision
from .point_augmentation import subsample_points

# IGNORE_LABEL and PADDING_LABEL stay importable from here for existing code; point_sup.point_labels
# defines them (the model reads them from there too).
__all__ = [
    "IGNORE_LABEL",
    "PADDING_LABEL",
    "PointSupDatasetMapper",
    "empty_point_instances",
    "pad_point_annotations",
    "transform_point_annotations",
]

logger = logging.getLogger(__name__)

# The mask of an object without one in an image whose other objects have masks (mixed supervision):
# Instances need one mask per object, and gt_supervision says it is never read. A zero-area triangle
# is accepted by PolygonMasks and by the bit-mask rasterizer alike.
_NO_MASK = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def transform_point_annotations(
    point_coords: np.ndarray | Sequence,
    point_labels: np.ndarray | Sequence,
    transforms: T.Transform | Sequence[T.Transform],
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Apply geometric transforms to one instance's points.

    Args:
        point_coords: (P, 2) absolute (x, y) in the original image's continuous coordinates (a labelled
            pixel index ``i`` is stored as its centre ``i + 0.5``).
        point_labels: (P,) 1 = object, 0 = background, -1 = ignore.
        transforms: the transforms applied to the image (a ``TransformList`` or a sequence).
        image_size: (height, width) of the transformed image.

    Returns:
        coords: (P, 2) float32, the points in the transformed image's continuous coordinates.
        labels: (P,) float32, the input labels, with -1 (ignore) for points outside
            ``[0, width) x [0, height)`` of the transformed image.
    """
    if not isinstance(transforms, T.TransformList):
        transforms = T.TransformList(list(transforms) if isinstance(transforms, Sequence) else [transforms])
    coords = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(point_labels, dtype=np.float32).reshape(-1).copy()
    if len(coords) != len(labels):
        raise ValueError(f"{len(coords)} point coordinates but {len(labels)} labels")
    if len(coords) == 0:
        return np.zeros((0, 2), dtype=np.float32), labels
    # float64 while transforming: the pixel-centre values (i + 0.5) must not drift across a pixel
    # boundary through a chain of transforms. apply_coords may work in place, hence the copy.
    coords = transforms.apply_coords(coords.copy())
    height, width = image_size
    inside = (coords[:, 0] >= 0) & (coords[:, 0] < width) & (coords[:, 1] >= 0) & (coords[:, 1] < height)
    labels[~inside] = IGNORE_LABEL
    return coords.astype(np.float32), labels


def pad_point_annotations(
    coords: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-instance points of different counts into padded tensors.

    Args:
        coords: R arrays of shape (P_r, 2).
        labels: R arrays of shape (P_r,).

    Returns:
        gt_point_coords: (R, P, 2) float32, P = max P_r (0 if R = 0); padding coordinates are 0.
        gt_point_labels: (R, P) float32, padding is ``PADDING_LABEL`` (-2).
    """
    num = len(coords)
    max_points = max((len(c) for c in coords), default=0)
    out_coords = torch.zeros((num, max_points, 2), dtype=torch.float32)
    out_labels = torch.full((num, max_points), PADDING_LABEL, dtype=torch.float32)
    for i, (c, lab) in enumerate(zip(coords, labels, strict=True)):
        out_coords[i, : len(c)] = torch.as_tensor(np.asarray(c, dtype=np.float32).reshape(-1, 2))
        out_labels[i, : len(lab)] = torch.as_tensor(np.asarray(lab, dtype=np.float32))
    return out_coords, out_labels


def empty_point_instances(image_size: tuple[int, int], mixed: bool = False) -> Instances:
    """Instances with no objects and every training field: boxes (0, 4), classes (0,), points (0, 0, 2),
    and with ``mixed`` ``gt_supervision`` (0,)."""
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.zeros((0, 4), dtype=torch.float32))
    instances.gt_classes = torch.zeros((0,), dtype=torch.int64)
    instances.gt_point_coords = torch.zeros((0, 0, 2), dtype=torch.float32)
    instances.gt_point_labels = torch.zeros((0, 0), dtype=torch.float32)
    if mixed:
        instances.gt_supervision = torch.zeros((0,), dtype=torch.int64)
    return instances


class PointSupDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` plus P_N points (``INPUT.POINT_SUP``) and point-based
    augmentation (``INPUT.SAMPLE_POINTS``).

    With point supervision, training outputs' ``instances`` carry, besides ``gt_boxes`` and
    ``gt_classes``:

    ``gt_point_coords``
        (R, P, 2) float32, absolute (x, y) in the transformed image's continuous coordinates;
    ``gt_point_labels``
        (R, P) float32: 1 = object, 0 = background, -1 = ignore (``IGNORE_LABEL``: points that left
        the image through crop or rotation), -2 = padding (``PADDING_LABEL``: to P = the most points of
        an instance of this image).

    Every geometric augmentation of Detectron2 applies, crop included (``INPUT.CROP``; boxes are
    clipped, and recomputed from masks only where the image has masks). Instances may have different
    numbers of points; images without annotations give empty instances with R = P = 0. With
    ``INPUT.SAMPLE_POINTS = k > 0``, every call keeps k points per instance drawn uniformly without
    replacement among its points still inside the image (:func:`subsample_points`). Masks, when every
    annotation of an image has one and ``MODEL.MASK_ON``, are kept as ``gt_masks`` too.

    With mixed supervision (``MODEL.MIXED_SUP.ENABLED``, point_sup.data.mixed_supervision) each
    object keeps what its annotation carries, and the instances also have ``gt_supervision`` (R,)
    int64 (a :class:`~point_sup.data.mixed_supervision.Supervision`): ``gt_masks`` (when any object
    of the image is mask-supervised; other objects get an empty placeholder mask) and the point
    fields (mask- and box-supervised objects have padding only) go through the same transforms;
    point-based augmentation subsamples the point-supervised objects; boxes are recomputed from the
    masks (after a crop) and empty masks dropped (as Detectron2 does) for mask-supervised objects only.

    Without either it is Detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        point_supervision: bool = False,
        sample_points: int = 0,
        mixed_supervision: bool = False,
        mixed_both: str = "mask",
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as for Detectron2's ``DatasetMapper``.
            point_supervision: produce ``gt_point_coords`` / ``gt_point_labels`` from the
                annotations' ``point_coords`` / ``point_labels``.
            sample_points: point-based augmentation; 0 keeps all points.
            mixed_supervision: per-object supervision (``MODEL.MIXED_SUP.ENABLED``); exclusive with
                ``point_supervision``.
            mixed_both: ``MODEL.MIXED_SUP.BOTH``.
        """
        if sample_points < 0:
            raise ValueError(f"INPUT.SAMPLE_POINTS must be >= 0, got {sample_points}")
        if mixed_supervision and point_supervision:
            raise ValueError("MODEL.MIXED_SUP.ENABLED and INPUT.POINT_SUP are exclusive")
        super().__init__(is_train, **kwargs)
        self.point_supervision = point_supervision
        self.sample_points = sample_points
        self.mixed_supervision = mixed_supervision
        self.mixed_both = mixed_both
        if point_supervision:
            logger.info(
                "[PointSupDatasetMapper] point supervision, "
                + (f"{sample_points} points per instance per iteration" if sample_points else "all points")
            )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        ret["point_supervision"] = bool(cfg.INPUT.POINT_SUP)
        ret["sample_points"] = int(cfg.INPUT.SAMPLE_POINTS)
        ret["mixed_supervision"] = is_mixed_supervision(cfg)
        ret["mixed_both"] = cfg.MODEL.MIXED_SUP.BOTH
        return ret

    def __call__(self, dataset_dict: dict) -> dict:
        """Map one dataset dict (Detectron2 format, points as in :mod:`point_sup.data.datasets`)."""
        result = super().__call__(dataset_dict)
        carries_points = self.point_supervision or self.mixed_supervision
        if self.is_train and carries_points and "instances" not in result:
            # A record without "annotations" still trains (as background only); without the field the
            # model could not tell a negative image from an inference input.
            result["instances"] = empty_point_instances(
                tuple(result["image"].shape[-2:]), mixed=self.mixed_supervision
            )
        return result

    def _transform_annotations(self, dataset_dict: dict, transforms: T.TransformList, image_shape) -> None:
        if self.mixed_supervision:
            self._transform_mixed_annotations(dataset_dict, transforms, image_shape)
            return
        if not self.point_supervision:
            super()._transform_annotations(dataset_dict, transforms, image_shape)
            return
        image_shape = tuple(int(s) for s in image_shape)
        annos = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        # Masks mix badly with images whose annotations lack them (annotations_to_instances would
        # read the first annotation only), and point supervision does not need them.
        keep_masks = self.use_instance_mask and all("segmentation" in a for a in annos)
        points = []
        for index, anno in enumerate(annos):
            missing = [key for key in POINT_FIELDS if key not in anno]
            if missing:
                which = f"id {anno['id']}" if "id" in anno else f"#{index} (of the non-crowd ones)"
                raise ValueError(
                    f"INPUT.POINT_SUP is on but annotation {which} of image "
                    f"{dataset_dict.get('file_name')} (image id {dataset_dict.get('image_id')}) has no "
                    f"'{missing[0]}': register point-annotated data with "
                    "point_sup.register_coco_instances_with_points"
                )
            points.append((anno.pop("point_coords"), anno.pop("point_labels")))
            if not keep_masks:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        instances = self._instances_with_points(annos, points, [True] * len(points), transforms, image_shape)
        if self.recompute_boxes and instances.has("gt_masks"):
            # As Detectron2 does after a crop: the clipped box may no longer be tight around the mask.
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _instances_with_points(
        self,
        annos: list[dict],
        points: list[tuple],
        subsample: list[bool],
        transforms: T.TransformList,
        image_shape: tuple[int, int],
    ) -> Instances:
        """Detectron2's instances of the annotations (boxes, classes, masks where kept) plus their
        points, each through ``transforms``; point-based augmentation on the objects ``subsample``
        marks. ``points``: per annotation ``(point_coords, point_labels)`` as in the dataset dicts."""
        annos = [
            utils.transform_instance_annotations(
                anno, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for anno in annos
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        coords, labels = [], []
        for (point_coords, point_labels), sample in zip(points, subsample, strict=True):
            c, lab = transform_point_annotations(point_coords, point_labels, transforms, image_shape)
            if self.sample_points and sample:
                keep = subsample_points(lab, self.sample_points)
                c, lab = c[keep], lab[keep]
            coords.append(c)
            labels.append(lab)
        instances.gt_point_coords, instances.gt_point_labels = pad_point_annotations(coords, labels)
        return instances

    def _transform_mixed_annotations(
        self, dataset_dict: dict, transforms: T.TransformList, image_shape
    ) -> None:
        """The mixed-supervision counterpart of :meth:`_transform_annotations` (see the class doc)."""
        image_shape = tuple(int(s) for s in image_shape)
        annos = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        kinds = [annotation_supervision(a, self.mixed_both) for a in annos]
        any_mask = self.use_instance_mask and Supervision.MASK in kinds
        points = []
        for anno, kind in zip(annos, kinds, strict=True):
            coords, labels = anno.pop("point_coords", None), anno.pop("point_labels", None)
            points.append((coords, labels) if kind == Supervision.POINTS else (np.zeros((0, 2)), []))
            if not any_mask:
                anno.pop("segmentation", None)
            elif kind != Supervision.MASK:
                anno["segmentation"] = _NO_MASK
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        subsample = [kind == Supervision.POINTS for kind in kinds]
        instances = self._instances_with_points(annos, points, subsample, transforms, image_shape)
        instances.gt_supervision = torch.tensor([int(k) for k in kinds], dtype=torch.int64)
        keep = utils.filter_empty_instances(instances, by_mask=False, return_mask=True)[1]
        if any_mask:
            is_mask = instances.gt_supervision == Supervision.MASK
            if self.recompute_boxes:
                # As Detectron2 does after a crop, for the objects whose mask is the truth.
                boxes = instances.gt_boxes.tensor.clone()
                boxes[is_mask] = instances.gt_masks[is_mask].get_bounding_boxes().tensor
                instances.gt_boxes = Boxes(boxes)
                keep = utils.filter_empty_instances(instances, by_mask=False, return_mask=True)[1]
            keep &= ~is_mask | instances.gt_masks.nonempty()
        dataset_dict["instances"] = instances[keep]
