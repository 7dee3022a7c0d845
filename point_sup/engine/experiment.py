"""One experiment in one call: config file + overrides -> trained model -> evaluation results.

Used by ``tools/demo.py`` and the miniature replication in ``bench/``, so both train and evaluate
exactly as ``tools/train_net.py`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from ..config import add_point_sup_config
from .trainer import PointSupTrainer

__all__ = ["ConfigError", "checked_config", "load_config", "train_and_evaluate"]

logger = logging.getLogger(__name__)


def load_config(config_file: str, overrides: Sequence = ()) -> CfgNode:
    """Detectron2 defaults + point_sup keys + ``config_file`` + ``overrides`` (a KEY, VALUE list)."""
    cfg = get_cfg()
    add_point_sup_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(overrides))
    return cfg


class ConfigError(ValueError):
    """A config file or override that cannot be read; the message names the file or the overrides."""


def checked_config(config_file: str, overrides: Sequence = ()) -> CfgNode:
    """:func:`load_config`, with every way it can fail (no file, a missing ``_BASE_``, invalid YAML,
    an unknown key, a bad value, an odd override list) turned into one :class:`ConfigError`. The
    command-line tools call it once before Detectron2's ``launch``, so that a mistake is one line,
    not a traceback from every process."""
    import yaml

    if not config_file:
        raise ConfigError("--config-file is required")
    cfg = add_point_sup_config(get_cfg())
    where = f"config file {config_file!r}"
    try:
        try:
            cfg.merge_from_file(config_file)
        except AssertionError as e:  # Detectron2's "Config file ... does not exist!", also of a _BASE_
            raise ConfigError(f"{where}: {e}") from None
        except FileNotFoundError as e:
            raise ConfigError(f"{where}: cannot read {e.filename or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"{where} (or a _BASE_ file it names): {e.args[0] if e.args else e}") from None
        where = "the command-line overrides"
        cfg.merge_from_list(list(overrides))
    except ConfigError:
        raise
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"{where}: {e.args[0] if e.args else e}") from None
    return cfg


def train_and_evaluate(
    cfg: CfgNode, eval_datasets: Sequence[str] | None = None, hooks: Sequence[HookBase] = ()
) -> tuple[torch.nn.Module, dict]:
    """Train ``cfg`` from scratch (or ``MODEL.WEIGHTS``), then evaluate on ``eval_datasets``.

    Args:
        cfg: a full config; it is frozen here.
        eval_datasets: datasets to evaluate on (default ``cfg.DATASETS.TEST``).
        hooks: extra Detectron2 hooks (e.g. a progress display), run after the trainer's own;
            new instances per call, since a hook belongs to one trainer.

    Returns:
        The trained model and ``{dataset_name: results}`` (Detectron2's evaluator output, e.g.
        ``results["nuclei_val"]["segm"]["AP"]``).
    """
    if eval_datasets is None:
        eval_datasets = cfg.DATASETS.TEST
    cfg = cfg.clone()
    # Evaluated once, below: the trainer's own end-of-training evaluation would repeat it.
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    # What default_setup does in tools/train_net.py: SEED >= 0 makes initialisation and data order
    # reproducible (Detectron2's trainer does not seed by itself).
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    trainer = PointSupTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks(list(hooks))
    trainer.train()
    model = trainer.model
    results = {}
    for name in eval_datasets:
        single = cfg.clone()
        single.defrost()
        single.DATASETS.TEST = (name,)
        single.freeze()
        results[name] = PointSupTrainer.test(single, model)
    return model, results
