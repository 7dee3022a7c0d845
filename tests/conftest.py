"""Shared test set-up: point_sup is imported first, as every entry point does."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import point_sup  # noqa: F401  (applies point_sup.compat before detectron2 is used)
