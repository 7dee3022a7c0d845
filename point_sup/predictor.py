"""Predictions of a trained model on your own images: :class:`Predictor`.

    from point_sup import Predictor, draw_predictions

    predictor = Predictor("nuclei/mask_rcnn_R_18_FPN_P10.yaml", "output/demo/P10/model_final.pth")
    instances = predictor("image.png")            # or an (H, W, 3) uint8 array in INPUT.FORMAT
    picture = draw_predictions("image.png", instances)

Detectron2's ``DefaultPredictor`` runs underneath (the config's test-time resize, one image per
call, ``torch.no_grad``); this class adds what a user of one's own images needs: a config by name,
file paths as input, weights checked against the model (a checkpoint of another config is an error,
not a model that silently predicts from random layers), and the result on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from . import model_zoo
from .utils.images import UnreadableImageError, bgr_image

__all__ = ["Predictor", "UnreadableImageError"]

logger = logging.getLogger(__name__)

# DefaultPredictor takes BGR and converts to the model's INPUT.FORMAT itself; it accepts no other.
_FORMATS = ("BGR", "RGB")


# Where Detectron2's and fvcore's checkpointers log "Loading from ..." / "No checkpoint found".
_CHECKPOINT_LOGGERS = ("detectron2.checkpoint.detection_checkpoint", "fvcore.common.checkpoint")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...], up_to: int) -> Iterator[None]:
    """Drops the records of level ``up_to`` and lower of the loggers ``names`` inside the block."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno > up_to

    loggers = [logging.getLogger(name) for name in names]
    for log in loggers:
        log.addFilter(keep)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(keep)


def test_metadata(cfg: CfgNode) -> Metadata | None:
    """The Detectron2 metadata of ``cfg.DATASETS.TEST[0]`` where that dataset is registered, else None."""
    registered = [name for name in cfg.DATASETS.TEST[:1] if name in MetadataCatalog.list()]
    return MetadataCatalog.get(registered[0]) if registered else None


class _CheckingCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer that keeps what did not match (fvcore only logs it)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


class Predictor:
    """One trained model, called on one image at a time; returns that image's ``Instances`` on the CPU.

    Args:
        config: a CfgNode (e.g. from :func:`point_sup.model_zoo.get_config`); or a string: a YAML
            file where one exists at that path, else the name of a shipped config
            (``"nuclei/mask_rcnn_R_18_FPN_P10.yaml"``); from a string, ``MODEL.DEVICE`` is "cuda"
            where there is a GPU, else "cpu". A CfgNode is copied; the caller's is left as it is.
        weights: the trained model file (Detectron2's ``model_final.pth``, or any path or URL
            Detectron2's checkpointer reads); None: the config's ``MODEL.WEIGHTS``.

    Attributes:
        cfg: the frozen config in use (``MODEL.WEIGHTS`` = the weights).
        model: the Detectron2 model, in eval mode, on ``cfg.MODEL.DEVICE``.
        input_format: ``cfg.INPUT.FORMAT`` ("BGR" for every shipped config): the channel order of
            an array given to :meth:`__call__`.
        metadata: the Detectron2 metadata of ``cfg.DATASETS.TEST[0]`` where that dataset is
            registered (class names for :func:`point_sup.draw_predictions`), else None.

    Raises:
        FileNotFoundError: no weights file at ``weights``.
        ValueError: no weights given; an INPUT.FORMAT other than BGR/RGB; weights whose parameters
            are missing or have other shapes than the config's model (the message names some).
        point_sup.model_zoo.UnknownConfigError: ``config`` is neither a file nor a shipped config's name.
        point_sup.engine.experiment.ConfigError (a ValueError): the YAML file cannot be read.
    """

    def __init__(self, config: CfgNode | str, weights: str | os.PathLike | None = None):
        if isinstance(config, str):
            load = model_zoo.config_from_file if os.path.isfile(config) else model_zoo.get_config
            cfg = load(config)
        else:
            cfg = config.clone()
        cfg.defrost()
        weights = os.fspath(weights) if weights is not None else cfg.MODEL.WEIGHTS
        if not weights:
            raise ValueError("no model weights: pass the trained model file (or set MODEL.WEIGHTS)")
        if "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(f"model weights {weights} do not exist")
        if cfg.INPUT.FORMAT not in _FORMATS:
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: the predictor takes {'/'.join(_FORMATS)}")
        # DefaultPredictor builds the model; the weights are loaded below, where what did not fit
        # can be seen (DefaultPredictor's own loading only logs it).
        cfg.MODEL.WEIGHTS = ""
        with _quiet(_CHECKPOINT_LOGGERS, logging.INFO):  # its "Loading from  ..." of no file would mislead
            self._predictor = DefaultPredictor(cfg)
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        self.cfg = cfg
        self.model = self._predictor.model
        self.input_format: str = cfg.INPUT.FORMAT
        self.metadata = test_metadata(cfg)
        self._load(weights)

    def _load(self, weights: str) -> None:
        checkpointer = _CheckingCheckpointer(self.model)
        try:
            # fvcore's warnings list every key that did not fit; the error below names a few instead.
            with _quiet(("fvcore.common.checkpoint",), logging.WARNING):
                checkpointer.load(weights)
        except Exception as e:  # torch.load's and pickle's errors for a file that is no checkpoint vary
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise ValueError(f"cannot read model weights {weights}: {reason}") from None
        incompatible = checkpointer.incompatible
        if incompatible is None:  # fvcore returns nothing for an empty checkpoint
            raise ValueError(f"model weights {weights} hold no model")
        problems = [
            f"{key} of shape {tuple(theirs)} where the model has {tuple(ours)}"
            for key, theirs, ours in incompatible.incorrect_shapes
        ]
        # A parameter of another shape is not loaded, so it is among the missing ones too.
        other_shape = {key for key, _, _ in incompatible.incorrect_shapes}
        problems += [f"{key} missing" for key in incompatible.missing_keys if key not in other_shape]
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise ValueError(
                f"model weights {weights} do not fit the config's model ({shown}): a checkpoint of "
                "another config?"
            )
        if incompatible.unexpected_keys:
            logger.warning(
                "model weights %s hold %d parameters the model does not use (e.g. %s)",
                weights,
                len(incompatible.unexpected_keys),
                incompatible.unexpected_keys[0],
            )

    def __call__(self, image: str | os.PathLike | np.ndarray) -> Instances:
        """Predictions for one image.

        Args:
            image: an image file path, or an (H, W, 3) uint8 array in ``self.input_format``'s
                channel order (BGR for every shipped config, as ``cv2.imread`` gives).

        Returns:
            ``Instances`` of image size (H, W), on the CPU: ``pred_boxes`` (XYXY, pixels),
            ``scores``, ``pred_classes`` (contiguous class indices) and ``pred_masks`` ((N, H, W)
            bool) for mask models.

        Raises:
            point_sup.UnreadableImageError: the file is missing or not a readable image.
            ValueError: an array of another shape or dtype.
        """
        bgr = bgr_image(image, self.input_format)
        return self._predictor(bgr)["instances"].to("cpu")
