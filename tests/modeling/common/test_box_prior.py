"""The box prior on RoIs (point_sup.modeling.common.box_prior) against independent dense computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from point_sup import add_point_sup_config
from point_sup.data.mixed_supervision import Supervision
from point_sup.modeling.common.box_prior import (
    BoxPriorOptions,
    box_prior_selection,
    roi_box_masks,
    roi_box_prior_losses,
    roi_color_similarity,
    roi_colors,
    roi_grid_points,
)
from point_sup.modeling.common.box_terms import PairwiseOptions, rgb_to_lab


def test_grid_points_are_the_cell_centres_row_major():
    points = roi_grid_points(4, 2)
    assert points.shape == (2, 16, 2)
    # cell (i, j) = (1, 2) is index 6: u = 2.5 / 4, v = 1.5 / 4
    torch.testing.assert_close(points[1, 6], torch.tensor([2.5 / 4, 1.5 / 4]))


def test_box_masks_mark_the_cells_whose_centre_lies_in_the_gt_box():
    proposals = torch.tensor([[10.0, 20.0, 50.0, 44.0], [0.0, 0.0, 17.0, 9.0], [5.0, 5.0, 30.0, 30.0]])
    gt = torch.tensor([[18.0, 15.0, 40.0, 38.0], [3.0, 2.0, 17.0, 9.0], [40.0, 40.0, 50.0, 50.0]])
    grid = 7
    got = roi_box_masks(proposals, gt, grid)
    for r in range(3):
        x0, y0, x1, y1 = proposals[r].tolist()
        for i in range(grid):
            for j in range(grid):
                cx = x0 + (j + 0.5) * (x1 - x0) / grid
                cy = y0 + (i + 0.5) * (y1 - y0) / grid
                gx0, gy0, gx1, gy1 = gt[r].tolist()
                inside = gx0 <= cx <= gx1 and gy0 <= cy <= gy1
                assert got[r, i, j].item() == float(inside), (r, i, j)
    assert got[2].sum() == 0  # a gt box beyond the proposal: no cell


def test_roi_colours_are_the_mean_of_each_cells_pixels():
    """Boxes on pixel borders with 2x2-pixel cells: each cell's colour is the mean of its 4 pixels."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 30, 40), generator=g).float()
    grid = 5
    boxes = [
        torch.tensor([[4.0, 6.0, 14.0, 16.0]]),
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 20.0, 40.0, 30.0]]),
    ]
    got = roi_colors(rgb, boxes, grid)
    assert got.shape == (3, 3, grid, grid)
    image = rgb.numpy()
    rows = [(0, boxes[0][0]), (1, boxes[1][0]), (1, boxes[1][1])]
    for r, (n, box) in enumerate(rows):
        x0, y0 = int(box[0]), int(box[1])
        for i in range(grid):
            for j in range(grid):
                block = image[n, :, y0 + 2 * i : y0 + 2 * i + 2, x0 + 2 * j : x0 + 2 * j + 2]
                np.testing.assert_allclose(
                    got[r, :, i, j].numpy(), block.mean(axis=(1, 2)), rtol=0, atol=1e-4
                )


def _similarity_by_loops(colors: torch.Tensor, offsets) -> torch.Tensor:
    lab = rgb_to_lab(colors / 255.0)
    num, _, height, width = lab.shape
    out = torch.zeros(num, len(offsets), height, width)
    for r in range(num):
        for k, (dy, dx) in enumerate(offsets):
            for y in range(height):
                for x in range(width):
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        dist = torch.linalg.vector_norm(lab[r, :, y, x] - lab[r, :, y + dy, x + dx])
                        out[r, k, y, x] = math.exp(-dist.item() / 2)
    return out


def _dense_prior(logits, box_masks, similarity, offsets, thresh, selected):
    """The projection and pairwise terms by plain loops over instances, cells and neighbours."""
    num, height, width = logits.shape
    probs = torch.sigmoid(logits.double())
    prj, rows = 0.0, [r for r in range(num) if selected is None or selected[r]]
    for r in rows:
        for axis in (0, 1):
            p, t = probs[r].amax(dim=axis), box_masks[r].double().amax(dim=axis)
            prj += float(1 - 2 * (p * t).sum() / ((p * p).sum() + (t * t).sum() + 1e-5))
    prj /= max(len(rows), 1)
    total, count = 0.0, 0
    for r in rows:
        for k, (dy, dx) in enumerate(offsets):
            for y in range(height):
                for x in range(width):
                    if box_masks[r, y, x] == 0 or similarity[r, k, y, x] < thresh:
                        continue
                    pi, pj = probs[r, y, x].item(), probs[r, y + dy, x + dx].item()
                    total += -math.log(pi * pj + (1 - pi) * (1 - pj))
                    count += 1
    return prj, total / max(count, 1)


def _instances(grid: int, seed: int = 0) -> list[Instances]:
    """Two images with 2 and 1 foreground proposals, their gt boxes and cell colours (a bright
    square on a dark background, so that the colour threshold selects some pairs and not others)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, proposals, gt in (
        (
            2,
            [[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 40.0, 28.0]],
            [[4.0, 6.0, 24.0, 30.0], [8.0, 4.0, 30.0, 20.0]],
        ),
        (1, [[2.0, 2.0, 20.0, 26.0]], [[5.0, 3.0, 19.0, 20.0]]),
    ):
        inst = Instances((48, 48))
        inst.proposal_boxes = Boxes(torch.tensor(proposals))
        inst.gt_boxes = Boxes(torch.tensor(gt))
        inst.gt_classes = torch.zeros(n, dtype=torch.int64)
        colors = torch.full((n, 3, grid, grid), 20.0) + torch.rand(n, 3, grid, grid, generator=g) * 10
        colors[:, :, 1:4, 1:5] = 220.0
        inst.proposal_colors = colors
        out.append(inst)
    return out


@pytest.mark.parametrize("selected", [None, [True, False, True]], ids=["all", "selected"])
def test_losses_equal_the_dense_computation_weighted_and_warmed_up(selected):
    grid = 6
    instances = _instances(grid)
    logits = (torch.randn(3, grid, grid, generator=torch.Generator().manual_seed(3)) * 2).requires_grad_()
    options = BoxPriorOptions(True, 0.5, 2.0, grid, PairwiseOptions(3, 1, 0.3, 100))
    sel = None if selected is None else torch.tensor(selected)
    with EventStorage(25):  # a quarter of the warm-up
        got = roi_box_prior_losses(logits, instances, options, sel)
    proposals = torch.cat([i.proposal_boxes.tensor for i in instances])
    gts = torch.cat([i.gt_boxes.tensor for i in instances])
    box_masks = roi_box_masks(proposals, gts, grid)
    similarity = _similarity_by_loops(torch.cat([i.proposal_colors for i in instances]), options.offsets)
    torch.testing.assert_close(
        roi_color_similarity(torch.cat([i.proposal_colors for i in instances]), options.offsets), similarity
    )
    assert 0 < (similarity >= 0.3).float().mean() < 1  # the threshold matters here
    prj, pairwise = _dense_prior(logits.detach(), box_masks, similarity, options.offsets, 0.3, selected)
    assert got["loss_prj"].item() == pytest.approx(0.5 * prj, rel=1e-5)
    assert got["loss_pairwise"].item() == pytest.approx(2.0 * 0.25 * pairwise, rel=1e-5)
    (got["loss_prj"] + got["loss_pairwise"]).backward()
    touched = logits.grad.abs().flatten(1).sum(dim=1) > 0
    expected = torch.ones(3, dtype=torch.bool) if sel is None else sel
    assert torch.equal(touched, expected)  # gradients reach only the selected instances


def test_no_roi_gives_zero_losses_that_keep_the_graph():
    logits = torch.zeros(0, 5, 5, requires_grad=True)
    got = roi_box_prior_losses(logits, [Instances((8, 8))], BoxPriorOptions(enabled=True))
    assert all(v.item() == 0 and v.requires_grad for v in got.values())


def test_proposals_without_colours_name_the_roi_heads_to_use():
    instances = _instances(4)
    del instances[0]._fields["proposal_colors"]
    with pytest.raises(ValueError, match="PointSupROIHeads"):
        roi_box_prior_losses(torch.zeros(3, 4, 4), instances, BoxPriorOptions(enabled=True))


def test_mixed_selection_is_the_point_and_box_only_objects():
    a, b = Instances((8, 8)), Instances((8, 8))
    a.gt_supervision = torch.tensor([int(Supervision.MASK), int(Supervision.POINTS), int(Supervision.BOX)])
    b.gt_supervision = torch.tensor([int(Supervision.POINTS)])
    assert box_prior_selection([a, b], mixed_sup=False) is None
    assert box_prior_selection([a, b], mixed_sup=True).tolist() == [False, True, True, True]


def _cfg(*opts):
    cfg = add_point_sup_config(get_cfg())
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize(
    "opts, match",
    [
        ([], "INPUT.POINT_SUP or MODEL.MIXED_SUP.ENABLED"),
        (["INPUT.POINT_SUP", True], "MODEL.ROI_HEADS.NAME: PointSupROIHeads"),
        (
            [
                "INPUT.POINT_SUP",
                True,
                "MODEL.ROI_HEADS.NAME",
                "PointSupROIHeads",
                "MODEL.BOX_PRIOR.PAIRWISE_WEIGHT",
                -1.0,
            ],
            "PAIRWISE_WEIGHT",
        ),
        (
            [
                "INPUT.POINT_SUP",
                True,
                "MODEL.ROI_HEADS.NAME",
                "PointSupROIHeads",
                "MODEL.BOX_PRIOR.GRID_SIZE",
                1,
            ],
            "GRID_SIZE",
        ),
    ],
)
def test_settings_the_prior_does_not_take_are_errors_naming_the_keys(opts, match):
    cfg = _cfg("MODEL.BOX_PRIOR.ENABLED", True, *opts)
    with pytest.raises(ValueError, match=match):
        BoxPriorOptions.from_config(cfg)


def test_off_by_default_and_read_from_the_config():
    assert not BoxPriorOptions.from_config(_cfg()).enabled
    cfg = _cfg(
        "MODEL.BOX_PRIOR.ENABLED",
        True,
        "INPUT.POINT_SUP",
        True,
        "MODEL.ROI_HEADS.NAME",
        "PointSupROIHeads",
        "MODEL.BOX_PRIOR.PROJECTION_WEIGHT",
        0.5,
        "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS",
        7,
    )
    options = BoxPriorOptions.from_config(cfg)
    assert options == BoxPriorOptions(True, 0.5, 1.0, 14, PairwiseOptions(3, 2, 0.3, 7))
