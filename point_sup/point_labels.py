"""The label values of points in training tensors (``gt_point_labels``, the point loss's targets).

One place for both sides of the contract: the dataset mapper writes these values
(:mod:`point_sup.data.dataset_mapper`) and the model reads them (:mod:`point_sup.modeling.common.point_loss`,
CondInst's point loss), so neither imports the other.

A label is a float: ``OBJECT_LABEL`` (1) or ``BACKGROUND_LABEL`` (0) for a supervised point (soft
labels in between for points sampled on ground-truth masks), or one of the two negative values below.
They are told apart because the point loss's default normalisation (Detectron2's, paper §3.2) counts
ignored points in its mean and padding not.
"""

from __future__ import annotations

__all__ = ["BACKGROUND_LABEL", "IGNORE_LABEL", "OBJECT_LABEL", "PADDING_LABEL"]

OBJECT_LABEL = 1.0  # the point lies on the object
BACKGROUND_LABEL = 0.0  # the point lies on the background
IGNORE_LABEL = -1.0  # a labelled point that is not supervised: it left the image (or its proposal box)
PADDING_LABEL = -2.0  # not a point: fills up instances with fewer points than the most of their image
