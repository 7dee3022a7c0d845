"""The tools' console logger, without Detectron2: the same line format as ``detectron2.utils.logger``.

The P_N tools must start without importing torch or Detectron2, so they cannot use Detectron2's
``setup_logger``; this one writes the same ``[MM/DD HH:MM:SS name]: message`` lines to stderr
(warnings and errors marked as Detectron2 marks them), so a user sees one format across the tools.
Where Detectron2's logger is already set up for the same name, nothing is added.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logger"]


class _Formatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        text = super().formatMessage(record)
        if record.levelno >= logging.ERROR:
            return f"ERROR {text}" if record.levelno < logging.CRITICAL else f"CRITICAL {text}"
        if record.levelno == logging.WARNING:
            return f"WARNING {text}"
        return text


def setup_logger(name: str = "point_sup", level: int = logging.INFO) -> logging.Logger:
    """The logger ``name`` with one stderr handler (added once); messages do not propagate to root."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    if not any(getattr(h, "_point_sup_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S"))
        handler._point_sup_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
