"""Helpers of the training half: drawing points and predictions (:mod:`.visualizer`), reading the
user's image files with one clear error for a file that is not a readable image (:mod:`.images`).

Atomic file output and process handling live in :mod:`point_sup_labels.file_io` and
:mod:`point_sup_labels.process`, which both halves use.
"""
