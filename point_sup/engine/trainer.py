"""The trainer behind ``tools/train_net.py``: Detectron2's DefaultTrainer with point_sup's pieces."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from unittest import mock

from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults

from ..data.checks import check_point_supervision
from ..data.dataset_mapper import PointSupDatasetMapper
from ..evaluation import build_evaluator
from .distributed import create_ddp_model

__all__ = ["PointSupTrainer"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _serve_loaded(loaded: Mapping[str, list]) -> Iterator[None]:
    """Let ``DatasetCatalog.get`` return already loaded dicts (COCO takes ~30 s to load twice)."""
    original = DatasetCatalog.get

    def get(name: str):
        return loaded[name] if name in loaded else original(name)

    with mock.patch.object(DatasetCatalog, "get", get):
        yield


class PointSupTrainer(DefaultTrainer):
    """DefaultTrainer that

    * checks, before training starts, that the training datasets carry the supervision the
      config asks for (points for ``INPUT.POINT_SUP``, masks otherwise) and that class counts agree;
    * loads training data through :class:`~point_sup.data.dataset_mapper.PointSupDatasetMapper`;
    * evaluates with :func:`point_sup.evaluation.build_evaluator` (pycocotools when detectron2 has
      no C++ extension; point-level metrics for point-only validation sets);
    * wraps CPU models for multi-process (gloo) training without ``device_ids``.
    """

    def __init__(self, cfg):
        with mock.patch.object(d2_defaults, "create_ddp_model", create_ddp_model):
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        """Checks the training data against the config (clear errors), then Detectron2's loader."""
        loaded = {name: DatasetCatalog.get(name) for name in cfg.DATASETS.TRAIN}
        check_point_supervision(cfg, dataset_dicts=loaded)
        with _serve_loaded(loaded):
            return build_detection_train_loader(cfg, mapper=PointSupDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=PointSupDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)
