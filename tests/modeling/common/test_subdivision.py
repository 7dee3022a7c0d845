"""The adaptive-subdivision loop's chunked point evaluation (point_sup.modeling.common.subdivision)."""

from __future__ import annotations

import torch
from detectron2.structures import Boxes

from point_sup.modeling.common import subdivision
from point_sup.modeling.common.point_features import box_chunks


def _boxes(counts: list[int]) -> list[Boxes]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * 50
        out.append(Boxes(torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], dim=1)))
    return out


def test_box_chunks_cover_every_box_once_in_image_order() -> None:
    boxes = _boxes([5, 0, 3])
    everything = Boxes.cat(boxes).tensor
    chunks = box_chunks(boxes, 2)
    # Per image 2 + 2 + 1, nothing for the empty one, 2 + 1: no chunk spans two images.
    assert [(rows.start, rows.stop) for _, rows in chunks] == [(0, 2), (2, 4), (4, 5), (5, 7), (7, 8)]
    for per_image, rows in chunks:
        assert len(per_image) == 3
        assert sum(len(b) > 0 for b in per_image) == 1
        assert torch.equal(Boxes.cat(per_image).tensor, everything[rows])
    # No limit, or a limit above R: the boxes themselves, one chunk.
    for limit in (None, 8, 100):
        ((per_image, rows),) = box_chunks(boxes, limit)
        assert per_image == boxes and (rows.start, rows.stop) == (0, 8)


def test_chunked_point_logits_equal_one_evaluation(monkeypatch) -> None:
    """Chunked on CPU, the logits are the one-call logits: each chunk gets its own boxes, rows and
    points, and the chunks are put back in the boxes' order."""
    boxes = _boxes([4, 3])
    everything = Boxes.cat(boxes).tensor
    coords = torch.rand(7, 6, 2, generator=torch.Generator().manual_seed(1))
    scale = torch.arange(1.0, 8.0)
    calls = []

    def chunk_logits(chunk_boxes: list[Boxes], rows: slice, chunk_coords: torch.Tensor) -> torch.Tensor:
        calls.append(rows)
        # A row's logits depend on its own box, parameter (scale) and points.
        box = Boxes.cat(chunk_boxes).tensor
        assert torch.equal(box, everything[rows]) and torch.equal(chunk_coords, coords[rows])
        return (chunk_coords.sum(-1) * scale[rows, None] + box[:, :1]).unsqueeze(1)

    expected = chunk_logits(boxes, slice(0, 7), coords)
    monkeypatch.setattr(subdivision, "CPU_CHUNK_POINTS", 12)  # 12 // 6 = 2 boxes per chunk
    calls.clear()
    out = subdivision.chunked_point_logits(chunk_logits, boxes, coords)
    assert [(r.start, r.stop) for r in calls] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert out.shape == (7, 1, 6)
    assert torch.equal(out, expected)
    monkeypatch.setattr(subdivision, "CPU_CHUNK_POINTS", 10**6)
    calls.clear()
    assert torch.equal(subdivision.chunked_point_logits(chunk_logits, boxes, coords), expected)
    assert len(calls) == 1
