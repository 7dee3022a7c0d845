"""Stop signals: a SIGTERM becomes a clean exit, also when it lands inside a ``__del__``."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = r"""
import os, signal, sys
from point_sup_labels.process import exit_on_termination, raise_if_stop_requested

class Finalized:
    def __del__(self):  # the signal arrives while the interpreter runs a finalizer
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at one of these bytecodes
            pass

with exit_on_termination():
    Finalized()  # dropped at once: its __del__ swallows the handler's SystemExit
    print("went on", flush=True)
    raise_if_stop_requested()
    print("not reached", flush=True)
"""


def test_a_stop_signal_inside_a_finalizer_exits_143_without_a_traceback():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout == "went on\n"
    assert proc.stderr == ""  # no "Exception ignored in ... Traceback"


def test_other_unraisable_exceptions_are_still_reported():
    script = (
        "from point_sup_labels.process import exit_on_termination\n"
        "class Bad:\n"
        "    def __del__(self):\n"
        "        raise ValueError('from a finalizer')\n"
        "with exit_on_termination():\n"
        "    Bad()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "ValueError: from a finalizer" in proc.stderr
