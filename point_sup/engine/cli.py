"""What the command-line tools (``tools/train_net.py``, ``tools/generate_pseudo_masks.py``) share:
the ``--register NAME JSON IMAGE_ROOT`` option and the registration it asks for."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.datasets import register_coco_instances_with_points

__all__ = ["add_register_argument", "register_datasets"]


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
