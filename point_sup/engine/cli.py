"""What the command-line tools that run a model share (``tools/train_net.py``,
``tools/generate_pseudo_masks.py``, ``tools/predict.py``): the ``--register NAME JSON IMAGE_ROOT``
option and the registration it asks for, the process flags of a multi-process run, the trained
model's checks and the same-file test that keeps outputs off inputs.

The torch-free P_N tools share theirs through :mod:`point_sup_labels.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterable

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.datasets import register_coco_instances_with_points

__all__ = [
    "add_config_argument",
    "add_launch_arguments",
    "add_register_argument",
    "launch_error",
    "load_config",
    "register_datasets",
    "same_file",
    "weights_error",
]


def add_register_argument(parser: argparse.ArgumentParser) -> None:
    """``--register NAME JSON IMAGE_ROOT`` (repeatable): a COCO-format file of the user's own."""
    parser.add_argument(
        "--register",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset (P_N points and/or masks) under NAME; repeatable",
    )


def register_datasets(registrations: Iterable[tuple[str, str, str]] | None) -> None:
    """Register each ``(name, json_file, image_root)`` of ``--register`` (P_N points and/or masks),
    replacing an earlier registration of the name (a tool's ``main`` may run twice in one process:
    tests, notebooks). Call it in every process of a multi-process run."""
    for name, json_file, image_root in registrations or []:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances_with_points(name, {}, json_file, image_root)


def add_launch_arguments(parser: argparse.ArgumentParser, rank0_role: str) -> None:
    """``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``: Detectron2's ``launch``.

    Args:
        rank0_role: what machine 0 does besides its share, for the help ("writes the output").
    """
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help=f"rank of this machine (0 {rank0_role})")
    parser.add_argument(
        "--dist-url",
        default=None,
        help="initialization URL of the process group, tcp://HOST:PORT of machine 0 (required with "
        "--num-machines > 1; one machine: a free local port)",
    )


def launch_error(args: argparse.Namespace) -> str | None:
    """Why the flags of :func:`add_launch_arguments` cannot start a run, or None."""
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        return "--num-gpus and --num-machines must be at least 1, and 0 <= --machine-rank < --num-machines"
    if args.num_machines > 1 and not args.dist_url:
        return "--dist-url tcp://HOST:PORT (machine 0's address) is required with --num-machines > 1"
    return None


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config-file`` of a tool that runs a trained model, and its trailing ``KEY VALUE`` overrides."""
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="the model's config: a YAML file or the name of a shipped config",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")


def load_config(config_file: str, opts: list[str]) -> CfgNode:
    """The config of ``--config-file`` (a file, else a shipped config's name) with the overrides.

    Raises:
        point_sup.engine.experiment.ConfigError: an unreadable file or a bad override (named).
    """
    from .. import model_zoo  # model_zoo imports this package's experiment module

    if not os.path.exists(config_file):
        with contextlib.suppress(model_zoo.UnknownConfigError):  # else config_from_file names the file
            config_file = model_zoo.get_config_file(config_file)
    return model_zoo.config_from_file(config_file, opts)


def weights_error(cfg: CfgNode, model: str = "trained model") -> str | None:
    """Why ``cfg.MODEL.WEIGHTS`` cannot be the ``model`` to run, or None (URLs are left to the
    checkpointer, which fetches them)."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        return f"MODEL.WEIGHTS is empty: give the {model} (MODEL.WEIGHTS path/to/model_final.pth)"
    if "://" not in weights and not os.path.isfile(weights):
        return f"MODEL.WEIGHTS {weights} does not exist"
    return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file, also through a symbolic or hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist
        return False
