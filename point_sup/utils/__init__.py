"""Helpers of the training half: drawing points and predictions (:mod:`.visualizer`).

Atomic file output and process handling live in :mod:`point_sup_labels.file_io` and
:mod:`point_sup_labels.process`, which both halves use.
"""
