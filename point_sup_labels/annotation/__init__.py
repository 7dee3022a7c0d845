"""The P_N point annotation tool (paper §3.1): label points on your own images in a browser.

One concept per module:

* :mod:`.tasks` — which objects and points are asked (the simulator's points for the same seed;
  ``[x, y]`` integer pixel indices, see :mod:`point_sup_labels.sampling`), shard by shard;
* :mod:`.events` — the recorded actions (answer, flag, undo) and the rules of their values;
* :mod:`.journal` — ``OUTPUT.journal``: append-only, locked, fsynced, validated on replay, a torn
  last line recovered;
* :mod:`.answers` — the state the events build (labels, times, flags, undo history, progress);
* :mod:`.session` — :class:`AnnotationStore`, the facade: versioned, serialized changes
  (:class:`ConflictError` for stale ones);
* :mod:`.view` — what the browser page is sent;
* :mod:`.output` — the training file ``OUTPUT``; :mod:`.merge` — joining annotators' files;
* :mod:`.server` — the local web server (standard library) and its page in ``static/``;
* :mod:`.report` — measured seconds per point and object, and agreement with ground-truth masks.

The command line is ``tools/annotate.py``.
"""

from .events import MAX_SECONDS_PER_ANSWER
from .journal import OutputInUseError, journal_path
from .merge import merge_outputs
from .report import AnnotationReport, build_report
from .server import AnnotationServer, is_loopback, resolve_image_paths
from .session import AnnotationStore, ConflictError
from .tasks import plan_tasks

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
