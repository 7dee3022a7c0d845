"""What the command-line tools share in their argparse set-up, without torch or Detectron2.

The P_N tools (``tools/prepare_point_annotations.py``, ``tools/select_annotation_budget.py``, ...)
must start without importing torch, so their shared pieces live here rather than in
:mod:`point_sup.engine.cli` (the training tools' ``--register`` and process flags):

* :class:`OneLineErrorParser`: an ``ArgumentParser`` whose errors are one line naming the argument;
* :func:`seed`: ``--seed`` values, the 64-bit keys of the samplers;
* :func:`number_type`: a ``type=`` for numbers in a range, with one-line messages.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["OneLineErrorParser", "number_type", "seed"]


class OneLineErrorParser(argparse.ArgumentParser):
    """Errors are one line (no usage block): the message names the argument at fault."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def seed(text: str) -> int:
    """An integer in [0, 2**64): the samplers' random streams are keyed by 64-bit seeds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {text}")
    return value


def number_type(
    accept: Callable[[float], bool], requirement: str, finite: bool = False
) -> Callable[[str], float]:
    """A ``type=`` for argparse: the float of the text if ``accept`` holds for it.

    Args:
        accept: the range test, e.g. ``lambda v: 0 <= v <= 1`` (NaN fails any comparison, so a
            range test refuses it by itself).
        requirement: what ``accept`` asks, for the message "must be {requirement}, got {text}",
            e.g. "in [0, 1]".
        finite: refuse "inf" and "nan" first, with "not a finite number: {text!r}".
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if finite and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = f"number {requirement}"  # argparse names the type by it in some messages
    return parse
