"""The trainer behind ``tools/train_net.py``: Detectron2's DefaultTrainer with point_sup's pieces.

Nothing of Detectron2 is patched at run time. The training data are loaded once (the start-up
checks need them, and COCO takes ~30 s to load) and handed to ``build_detection_train_loader`` as
``dataset=``, prepared as Detectron2's ``get_detection_dataset_dicts`` prepares them
(:func:`train_dataset_dicts`); the loader then builds ``DATALOADER.SAMPLER_TRAIN`` (e.g. LVIS's
RepeatFactorTrainingSampler) from those dicts as it would from its own. The model is wrapped for
multi-process training by point_sup's :func:`~point_sup.engine.distributed.create_ddp_model`
(valid for CPU models too) in :meth:`PointSupTrainer.__init__`, which is DefaultTrainer's
construction with that one call changed.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.checks import check_point_supervision
from ..data.dataset_mapper import PointSupDatasetMapper
from ..evaluation import build_evaluator
from .distributed import create_ddp_model
from .test_time_augmentation import build_tta_model

__all__ = ["PointSupTrainer", "train_dataset_dicts"]

logger = logging.getLogger(__name__)


def train_dataset_dicts(cfg, loaded: Mapping[str, Sequence[dict]]) -> list[dict]:
    """The training dicts of ``cfg.DATASETS.TRAIN`` from already loaded ones, prepared as
    Detectron2's ``get_detection_dataset_dicts`` does for ``build_detection_train_loader``:
    precomputed proposals (``MODEL.LOAD_PROPOSALS``), concatenation in order, images without a
    non-crowd instance dropped (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), images with too few
    keypoints dropped (keypoint models), the metadata consistency check and the class histogram.

    Args:
        cfg: the training config.
        loaded: ``DatasetCatalog.get(name)`` for every name of ``cfg.DATASETS.TRAIN``.
    """
    names = list(cfg.DATASETS.TRAIN)
    per_name = [loaded[name] for name in names]
    for name, dicts in zip(names, per_name, strict=True):
        if not len(dicts):
            raise ValueError(f"Dataset '{name}' is empty!")
    if cfg.MODEL.LOAD_PROPOSALS:
        proposal_files = cfg.DATASETS.PROPOSAL_FILES_TRAIN
        if len(proposal_files) != len(names):
            raise ValueError("DATASETS.PROPOSAL_FILES_TRAIN needs one file per DATASETS.TRAIN name")
        per_name = [load_proposals_into_dataset(d, f) for d, f in zip(per_name, proposal_files, strict=True)]
    dicts = list(itertools.chain.from_iterable(per_name))
    if "annotations" in dicts[0]:
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            dicts = filter_images_with_only_crowd_annotations(dicts)
        if cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE > 0:
            dicts = filter_images_with_few_keypoints(
                dicts, cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            )
        thing_classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
        if thing_classes is not None:
            check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(dicts, thing_classes)
    if not dicts:
        raise ValueError(f"No valid data found in {','.join(names)}.")
    return dicts


class PointSupTrainer(DefaultTrainer):
    """DefaultTrainer that

    * checks, before training starts, that the training datasets carry the supervision the
      config asks for (points for ``INPUT.POINT_SUP``, masks otherwise) and that class counts agree;
    * loads training data through :class:`~point_sup.data.dataset_mapper.PointSupDatasetMapper`;
    * evaluates with :func:`point_sup.evaluation.build_evaluator` (faster-coco-eval's C++ COCOeval,
      else pycocotools, when detectron2 has no C++ extension; point-level metrics for point-only
      validation sets);
    * wraps CPU models for multi-process (gloo) training without ``device_ids``, and broadcasts
      rank 0's buffers so that every replica is identical (:mod:`point_sup.engine.distributed`);
    * evaluates with test-time augmentation (:meth:`test_with_TTA`, ``TEST.AUG.ENABLED``).
    """

    def __init__(self, cfg):
        """DefaultTrainer's construction, in its order, with point_sup's ``create_ddp_model``."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        """Checks the training data against the config (clear errors), then Detectron2's loader."""
        loaded = {name: DatasetCatalog.get(name) for name in cfg.DATASETS.TRAIN}
        check_point_supervision(cfg, dataset_dicts=loaded)
        return build_detection_train_loader(
            cfg, mapper=PointSupDatasetMapper(cfg, is_train=True), dataset=train_dataset_dicts(cfg, loaded)
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=PointSupDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model) -> OrderedDict:  # noqa: N802 (Detectron2's tools call this name)
        """Evaluate ``model`` on ``cfg.DATASETS.TEST`` with test-time augmentation (``TEST.AUG``).

        Returns:
            Detectron2's results with ``_TTA`` appended to each task (``segm_TTA``, ``bbox_TTA``);
            the evaluators write under ``OUTPUT_DIR/inference_TTA``.
        """
        tta_model = build_tta_model(cfg, model)
        logger.info("Running inference with test-time augmentation ...")
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((f"{task}_TTA", value) for task, value in results.items())
