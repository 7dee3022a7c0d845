"""point_sup.utils.host_syncs: the counter counts what makes a CUDA host wait, and nothing else."""

from __future__ import annotations

import torch

from point_sup.utils.host_syncs import SyncCounter, count_host_syncs


def _count(fn) -> dict:
    counter = SyncCounter("cpu")
    with counter:
        fn()
    return dict(counter.kinds)


def test_counter_counts_each_kind_once() -> None:
    x = torch.randn(6, 3, requires_grad=True)
    mask = x.detach()[:, 0] > 0
    assert _count(lambda: x[mask].sum().backward()) == {"bool index": 1, "bool index_put": 1}
    assert _count(lambda: x.sum().item()) == {"item": 1}
    assert _count(lambda: bool(mask.any())) == {"item": 1}
    assert _count(lambda: torch.where(mask)) == {"nonzero": 1}
    assert _count(lambda: mask.tolist()) == {"to host": 1}
    # .cpu() is the copy; the .item() of the host copy is free (Detectron2's loss logging).
    assert _count(lambda: x.detach().sum().cpu().item()) == {"to host": 1}
    assert _count(lambda: torch.unique(mask)) == {"unique": 1}
    counts = torch.tensor([1, 2])
    assert _count(lambda: torch.repeat_interleave(counts)) == {"repeat_interleave": 1}
    assert _count(lambda: torch.tensor([1.0, 2.0], device="cpu")) == {"H2D": 1}


def test_counter_leaves_sync_free_ops_alone() -> None:
    x = torch.randn(6, 3)
    mask = x[:, 0] > 0
    counts = torch.tensor([1, 2])

    def sync_free() -> None:
        y = x.clone()
        y[mask] = 1.0  # masked_fill_ on CUDA
        torch.tensor(3).item()  # a Python literal stays on the host
        torch.nonzero_static(mask, size=2)
        torch.repeat_interleave(counts, counts, output_size=3)
        x[torch.tensor([0, 2])].sum()
        torch.where(mask[:, None], x, 0.0)
        torch.argsort(mask.to(torch.uint8), stable=True)

    assert _count(sync_free) == {}


def test_count_host_syncs_leaves_host_to_device_copies_out() -> None:
    x = torch.randn(4)
    with count_host_syncs() as syncs:
        torch.tensor([1.0], device="cpu")
        x.sum().item()
    assert syncs == {"item": 1}
