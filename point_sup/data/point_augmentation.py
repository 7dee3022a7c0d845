"""Paper §3.2, point-based augmentation: each iteration trains an instance on a random subset of its
labelled points (half of P10's: ``INPUT.SAMPLE_POINTS: 5``), a different one every time it is seen.

The mapper (:class:`point_sup.data.dataset_mapper.PointSupDatasetMapper`) calls
:func:`subsample_points` after the geometric transforms, so points that left the image (ignored)
are never among those kept.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["subsample_points"]


def subsample_points(
    point_labels: np.ndarray, num_points: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """Point-based augmentation (paper §3.2): indices of ``num_points`` labelled points of one instance.

    Chosen uniformly without replacement among the points whose label is not ignore (all of them if
    there are fewer), returned in their original order.

    Args:
        point_labels: (P,) labels; negative = ignore.
        num_points: how many to keep; must be > 0.
        generator: torch generator to draw from; None uses torch's default generator, which PyTorch's
            DataLoader seeds differently in every worker (and Detectron2's ``seed_all_rng`` /
            ``worker_init_reset_seed`` seed from ``cfg.SEED``), so draws differ per call and per worker
            and repeat under the same seed.

    Returns:
        (K,) int64 indices into the P points, K = min(num_points, number of valid points).
    """
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    valid = np.flatnonzero(np.asarray(point_labels) >= 0)
    if len(valid) <= num_points:
        return valid.astype(np.int64)
    order = torch.randperm(len(valid), generator=generator).numpy()
    return np.sort(valid[order[:num_points]]).astype(np.int64)
