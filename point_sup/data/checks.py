"""Start-up checks: misuse of point supervision fails before training, with a message that names the
dataset and the missing field, instead of deep inside a loss."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY

from point_sup_labels.point_fields import POINT_FIELDS

from ..config import (
    check_point_head_classes,
    condinst_supervision,
    is_condinst,
    is_mixed_supervision,
    model_num_classes,
    num_classes_key,
)
from .mixed_supervision import count_supervision

__all__ = ["check_point_supervision", "uses_point_head"]

logger = logging.getLogger(__name__)


def uses_point_head(cfg: CfgNode) -> bool:
    """Whether the mask head has a point head sized by ``MODEL.POINT_HEAD.NUM_CLASSES`` (PointRend,
    Implicit PointRend): Detectron2's ``POINT_HEAD_ON`` switch, or a property of the registered head
    class — point_sup's heads say so (``uses_point_head = True``, aliases included), and so do the
    heads of ``detectron2.projects.point_rend``. An unregistered name has none (it cannot be built)."""
    mask_head = cfg.MODEL.ROI_MASK_HEAD
    if mask_head.get("POINT_HEAD_ON", False):
        return True
    if mask_head.NAME not in ROI_MASK_HEAD_REGISTRY:
        return False
    head = ROI_MASK_HEAD_REGISTRY.get(mask_head.NAME)
    return bool(getattr(head, "uses_point_head", False)) or head.__module__.startswith(
        "detectron2.projects.point_rend."
    )


def _sample_annotations(dicts: Sequence[dict], num_samples: int) -> list[tuple[dict, dict, int]]:
    """(record, annotation, its index in the record) for the non-crowd annotations of the first annotated
    record and of up to ``num_samples`` records spread evenly over the dataset (deterministic)."""
    annotated = [
        i for i, r in enumerate(dicts) if any(a.get("iscrowd", 0) == 0 for a in r.get("annotations", []))
    ]
    if not annotated:
        return []
    picks = sorted(
        {annotated[0], *(annotated[int(j)] for j in np.linspace(0, len(annotated) - 1, num_samples))}
    )
    return [
        (dicts[i], a, k)
        for i in picks
        for k, a in enumerate(dicts[i]["annotations"])
        if a.get("iscrowd", 0) == 0
    ]


def check_point_supervision(
    cfg: CfgNode,
    dataset_names: str | Sequence[str] | None = None,
    *,
    dataset_dicts: Mapping[str, Sequence[dict]] | None = None,
    num_samples: int = 100,
) -> None:
    """Check that the config's supervision matches the training data; call before building the model.

    Raises ``ValueError`` when
      - ``INPUT.POINT_SUP`` is on but a sampled annotation of a dataset lacks ``point_coords`` or
        ``point_labels``;
      - a box-only config (CondInst with ``MODEL.BOXINST.ENABLED``) is given annotations with
        ``segmentation`` or points, which it would ignore;
      - ``INPUT.POINT_SUP`` is off, ``MODEL.MASK_ON`` is on and a sampled annotation lacks
        ``segmentation`` (a mask-supervised head given only points);
      - the mask head has a point head (PointRend, Implicit PointRend) and
        ``MODEL.POINT_HEAD.NUM_CLASSES != MODEL.ROI_HEADS.NUM_CLASSES``;
      - a dataset's number of ``thing_classes`` differs from ``MODEL.ROI_HEADS.NUM_CLASSES``
        (``MODEL.FCOS.NUM_CLASSES`` for CondInst);
      - a dataset has no annotated instance, or ``INPUT.SAMPLE_POINTS`` is negative;
      - ``INPUT.POINT_SUP`` is on and no object of a dataset has a labelled point (when some have
        none, a warning gives their share);
      - mixed supervision (``MODEL.MIXED_SUP.ENABLED``) without a mask head, with ``INPUT.POINT_SUP``,
        or on a dataset with neither a mask nor a labelled point on any object (box-only objects
        suffice for CondInst with ``MODEL.BOXINST.ENABLED``); the mix of every dataset (objects per
        kind) is logged.

    Args:
        cfg: a config with point_sup's keys (:func:`point_sup.add_point_sup_config`).
        dataset_names: datasets to check; default ``cfg.DATASETS.TRAIN``.
        dataset_dicts: already loaded dicts by dataset name (those not given are loaded from
            ``DatasetCatalog``, which also sets their class metadata).
        num_samples: records inspected per dataset besides the first annotated one.
    """
    if dataset_names is None:
        dataset_names = cfg.DATASETS.TRAIN
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    point_sup = bool(cfg.INPUT.POINT_SUP)
    classes_key = num_classes_key(cfg)
    num_classes = model_num_classes(cfg)
    box_only = is_condinst(cfg) and condinst_supervision(cfg) == "boxes"  # raises if both are on
    mixed = is_mixed_supervision(cfg)  # raises for its invalid settings
    if mixed and not (cfg.MODEL.MASK_ON or is_condinst(cfg)):
        raise ValueError("MODEL.MIXED_SUP.ENABLED trains a mask head: it needs MODEL.MASK_ON True")

    if cfg.INPUT.SAMPLE_POINTS < 0:
        raise ValueError(
            f"INPUT.SAMPLE_POINTS must be >= 0 (0 keeps all points), got {cfg.INPUT.SAMPLE_POINTS}"
        )
    if cfg.INPUT.SAMPLE_POINTS > 0 and not (point_sup or mixed):
        logger.warning("INPUT.SAMPLE_POINTS has no effect without INPUT.POINT_SUP or MODEL.MIXED_SUP")
    if cfg.MODEL.MASK_ON and not is_condinst(cfg) and uses_point_head(cfg):
        check_point_head_classes(cfg, cfg.MODEL.ROI_MASK_HEAD.NAME)

    for name in dataset_names:
        dicts = (
            dataset_dicts[name]
            if dataset_dicts is not None and name in dataset_dicts
            else DatasetCatalog.get(name)
        )
        meta = MetadataCatalog.get(name)
        thing_classes = getattr(meta, "thing_classes", None)
        if thing_classes is not None and len(thing_classes) != num_classes:
            raise ValueError(
                f"dataset '{name}' has {len(thing_classes)} thing_classes but {classes_key} is {num_classes}"
            )
        samples = _sample_annotations(dicts, num_samples)
        if not samples:
            raise ValueError(f"dataset '{name}' has no annotated instance to train from")
        if box_only:
            _check_box_only(name, samples)
            continue
        if mixed:
            box_losses = bool(cfg.MODEL.BOX_PRIOR.ENABLED) or (is_condinst(cfg) and cfg.MODEL.BOXINST.ENABLED)
            _check_mix(name, dicts, cfg.MODEL.MIXED_SUP.BOTH, box_losses)
            continue
        if point_sup:
            required, remedy = (
                POINT_FIELDS,
                (
                    "register its P_N annotation file with point_sup.register_coco_instances_with_points "
                    "(tools/prepare_point_annotations.py makes one from masks), or turn INPUT.POINT_SUP off"
                ),
            )
        elif cfg.MODEL.MASK_ON or is_condinst(cfg):  # CondInst always predicts masks
            required, remedy = (
                ("segmentation",),
                (
                    "it has only point annotations"
                    if getattr(meta, "point_supervision", False)
                    else "it has no masks"
                )
                + ": set INPUT.POINT_SUP True to train the mask head from points",
            )
        else:
            continue
        for record, anno, index in samples:
            for key in required:
                if key not in anno:
                    # Detectron2's own loaders drop annotation ids; then say where it is in the image.
                    which = f"id {anno['id']}" if "id" in anno else f"#{index}"
                    raise ValueError(
                        f"dataset '{name}': annotation {which} of image "
                        f"{record.get('file_name')} has no '{key}', which "
                        + ("INPUT.POINT_SUP" if point_sup else "the mask head (MODEL.MASK_ON)")
                        + f" needs; {remedy}"
                    )
        if point_sup:
            _check_labelled_points(name, dicts)


def _check_mix(name: str, dicts: Sequence[dict], both: str, box_losses: bool) -> None:
    """Log the mix of supervision of a dataset; ValueError if no object has what the config trains
    the masks from. Every annotation is counted (one pass over the dicts, no decoding)."""
    counts = count_supervision(dicts, both)
    logger.info(
        "dataset '%s', mixed supervision: %d objects with a mask, %d with points, %d box only "
        "(%d have both a mask and points: MODEL.MIXED_SUP.BOTH = %s)",
        name,
        counts["mask"],
        counts["points"],
        counts["box"],
        counts["mask and points"],
        both,
    )
    if counts["mask"] + counts["points"] == 0 and not box_losses:
        raise ValueError(
            f"dataset '{name}': none of its {counts['box']} objects has a mask ('segmentation') or "
            "labelled points ('point_coords'/'point_labels'), so MODEL.MIXED_SUP trains no mask; give "
            "some objects masks or points (tools/prepare_point_annotations.py, tools/annotate.py), or "
            "train with the box terms (MODEL.BOX_PRIOR.ENABLED, or CondInst's MODEL.BOXINST.ENABLED)"
        )


def _check_box_only(name: str, samples: Sequence[tuple[dict, dict, int]]) -> None:
    """ValueError if a box-only (BoxInst) config's training data carries masks or points, which it
    would silently ignore."""
    for record, anno, index in samples:
        for key in ("segmentation", *POINT_FIELDS):
            if key in anno:
                which = f"id {anno['id']}" if "id" in anno else f"#{index}"
                raise ValueError(
                    f"dataset '{name}': annotation {which} of image {record.get('file_name')} has "
                    f"'{key}', which MODEL.BOXINST.ENABLED (boxes only) would ignore; train on the "
                    f"box-only view '{name}_boxes' (point_sup.data.builtin.register_box_only_dataset), "
                    "or use a CondInst config that trains from it (masks: BOXINST.ENABLED False; points: "
                    "INPUT.POINT_SUP True)"
                )


def _check_labelled_points(name: str, dicts: Sequence[dict]) -> None:
    """ValueError if no non-crowd object of the dataset has a labelled point; a warning with the share
    of objects without one otherwise (the simulator gives zero-area boxes none, so a few are normal).
    Every annotation is counted, not a sample: an object without points contributes no mask loss."""
    total = without = 0
    for record in dicts:
        for anno in record.get("annotations", ()):
            if anno.get("iscrowd", 0) == 0:
                total += 1
                without += len(anno.get("point_labels", ())) == 0
    if total and without == total:
        raise ValueError(
            f"dataset '{name}': none of its {total} objects has a labelled point (every 'point_labels' "
            "is empty), so the mask head would learn nothing (loss_mask 0); make the P_N file with "
            "tools/prepare_point_annotations.py, or label points with tools/annotate.py"
        )
    if without:
        logger.warning(
            "dataset '%s': %d of %d objects (%.1f%%) have no labelled point and give no mask loss",
            name,
            without,
            total,
            100 * without / total,
        )
