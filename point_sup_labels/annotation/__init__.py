"""The P_N point annotation tool (paper §3.1): label points on your own images in a browser.

* :mod:`.store` — the crash-safe answer journal, resume, the training output and merging;
* :mod:`.server` — the local web server (standard library) and its page in ``static/``;
* :mod:`.report` — measured seconds per point and object, and agreement with ground-truth masks.

The command line is ``tools/annotate.py``.
"""

from .report import AnnotationReport, build_report
from .server import AnnotationServer, is_loopback, resolve_image_paths
from .store import (
    MAX_SECONDS_PER_ANSWER,
    AnnotationStore,
    ConflictError,
    OutputInUseError,
    journal_path,
    merge_outputs,
    plan_tasks,
)

__all__ = [
    "MAX_SECONDS_PER_ANSWER",
    "AnnotationReport",
    "AnnotationServer",
    "AnnotationStore",
    "ConflictError",
    "OutputInUseError",
    "build_report",
    "is_loopback",
    "journal_path",
    "merge_outputs",
    "plan_tasks",
    "resolve_image_paths",
]
