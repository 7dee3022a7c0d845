"""The configs that ship with point_sup, by name: the paper's recipes and the nuclei miniatures.

    from point_sup import model_zoo

    model_zoo.get_config_file("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml")  # absolute path of the YAML
    cfg = model_zoo.get_config("nuclei/mask_rcnn_R_18_FPN_P10.yaml", overrides=["SOLVER.MAX_ITER", 100])

A name is a path relative to the repository's ``configs/`` folder (``list_configs()`` gives them
all; a leading ``configs/`` is accepted too). The folder is installed with the package as
``point_sup/model_zoo_configs`` (``setup.py`` maps that package onto ``configs/``), so a plain
``pip install`` finds the files; the layout is the same, so ``_BASE_`` paths such as
``../Base-RCNN-FPN.yaml`` resolve in the installed copy as in the repository. From a source
checkout (an editable install) the repository's ``configs/`` itself is used.

``MODEL.DEVICE``: the shipped configs were written for a GPU (the COCO recipes) or for a CPU (the
nuclei miniatures); :func:`get_config` picks the machine's device instead, as Detectron2's tools
do: ``"cuda"`` where ``torch.cuda.is_available()``, else ``"cpu"``. A ``MODEL.DEVICE`` among the
``overrides`` wins over that choice, and an explicit ``device=`` argument wins over both.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch
from detectron2.config import CfgNode

from .engine.experiment import checked_config

__all__ = [
    "UnknownConfigError",
    "config_from_file",
    "configs_dir",
    "default_device",
    "get_config",
    "get_config_file",
    "list_configs",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
# Where setup.py installs configs/ (the package point_sup.model_zoo_configs).
INSTALLED_CONFIGS = _PACKAGE_DIR / "model_zoo_configs"
# The repository's configs/, beside the package in a source checkout or an editable install.
CHECKOUT_CONFIGS = _PACKAGE_DIR.parent / "configs"


class UnknownConfigError(KeyError):
    """A config name that is not shipped; the message lists the closest shipped names."""

    def __str__(self) -> str:  # KeyError's own str() would quote the whole message
        return str(self.args[0])


def configs_dir() -> Path:
    """The folder holding the shipped configs: the installed copy, else the checkout's ``configs/``."""
    for folder in (INSTALLED_CONFIGS, CHECKOUT_CONFIGS):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"point_sup's configs are missing: neither {INSTALLED_CONFIGS} nor {CHECKOUT_CONFIGS} exists "
        "(a broken installation: reinstall point_sup)"
    )


def list_configs() -> list[str]:
    """Every shipped config name (``"COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"``, ...), sorted."""
    root = configs_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def get_config_file(name: str) -> str:
    """The absolute path of the shipped config ``name``.

    Args:
        name: a path relative to ``configs/``, with ``/`` separators, e.g.
            ``"COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"``; ``"configs/COCO/..."`` is accepted too.

    Raises:
        UnknownConfigError: no such shipped config (the message lists the closest names).
    """
    relative = PurePosixPath(str(name).replace(os.sep, "/"))
    if relative.parts[:1] == ("configs",):
        relative = PurePosixPath(*relative.parts[1:])
    known = list_configs()
    if relative.as_posix() in known:  # also refuses "..", absolute paths and folders
        return str(configs_dir() / relative)
    close = difflib.get_close_matches(relative.as_posix(), known, n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownConfigError(
        f"no config named {name!r} ships with point_sup{hint} (point_sup.model_zoo.list_configs() lists "
        f"all {len(known)})"
    )


def default_device() -> str:
    """``"cuda"`` where PyTorch sees a GPU, else ``"cpu"`` (Detectron2's tools' choice)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def config_from_file(config_file: str, overrides: Sequence = (), device: str | None = None) -> CfgNode:
    """Detectron2's defaults + point_sup's keys + ``config_file`` + ``overrides``, on a chosen device.

    Args:
        config_file: any YAML config file (its ``_BASE_`` files relative to it).
        overrides: a flat ``[KEY, VALUE, KEY, VALUE, ...]`` list, as after ``tools/train_net.py``'s
            flags; values may be Python objects or their text.
        device: ``MODEL.DEVICE`` ("cpu", "cuda", "cuda:1", ...); None: :func:`default_device`,
            unless ``overrides`` set ``MODEL.DEVICE``.

    Returns:
        A new, unfrozen CfgNode.

    Raises:
        point_sup.engine.experiment.ConfigError (a ValueError): the file or an override cannot be
        read; the message names it.
    """
    # The chosen device goes first, so that a MODEL.DEVICE among the overrides replaces it.
    cfg = checked_config(config_file, ["MODEL.DEVICE", default_device(), *overrides])
    if device is not None:
        cfg.MODEL.DEVICE = device
    return cfg


def get_config(name: str, overrides: Sequence = (), device: str | None = None) -> CfgNode:
    """The full config of the shipped config ``name`` (see :func:`config_from_file`).

    Args:
        name: as :func:`get_config_file` takes it.
        overrides: ``[KEY, VALUE, ...]``, e.g. ``["SOLVER.IMS_PER_BATCH", 8]``.
        device: ``MODEL.DEVICE``; None: "cuda" if there is a GPU, else "cpu" (an override of
            ``MODEL.DEVICE`` wins over that choice; this argument wins over both).

    Returns:
        A new, unfrozen CfgNode.
    """
    return config_from_file(get_config_file(name), overrides, device)
