"""PointSupROIHeads and the box prior in the three R-CNN mask heads, trained as a whole model."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks
from detectron2.utils.events import EventStorage

from point_sup.data.mixed_supervision import Supervision
from point_sup.modeling.common.box_prior import roi_colors
from tests.modeling.conftest import make_point_sup_inputs, tiny_rcnn_cfg

HEADS = {
    "mask_rcnn": ("PointSupMaskRCNNConvUpsampleHead", False),
    "point_rend": ("PointSupPointRendMaskHead", True),
    "implicit": ("PointSupImplicitPointRendMaskHead", True),
}


def _cfg(name: str, prior: bool = True, mixed: bool = False):
    head, own_pooling = HEADS[name]
    cfg = tiny_rcnn_cfg(head, own_pooling=own_pooling)
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = name == "point_rend"
    cfg.INPUT.POINT_SUP = not mixed
    cfg.MODEL.MIXED_SUP.ENABLED = mixed
    cfg.MODEL.ROI_HEADS.NAME = "PointSupROIHeads"
    cfg.MODEL.BOX_PRIOR.ENABLED = prior
    cfg.MODEL.BOX_PRIOR.GRID_SIZE = 6
    cfg.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS = 0
    return cfg


def _model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model


def _smooth_inputs(num_instances: tuple[int, ...]) -> list[dict]:
    """The conftest's inputs on smooth images (a bright rectangle per object on a flat background):
    neighbouring RoI cells of random noise are never similar enough for the pairwise term."""
    inputs = make_point_sup_inputs(num_instances)
    for x in inputs:
        image = torch.full((3, 128, 128), 60, dtype=torch.uint8)
        image[2] = 90
        for x0, y0, x1, y1 in x["instances"].gt_boxes.tensor.int().tolist():
            image[:, y0 + 5 : y1 - 5, x0 + 5 : x1 - 5] = torch.tensor([200, 180, 40], dtype=torch.uint8)[
                :, None, None
            ]
        x["image"] = image
    return inputs


def _losses(model, inputs):
    torch.manual_seed(1)
    with EventStorage(0):
        return model(inputs)


def test_without_the_prior_the_losses_are_standard_roi_heads_exactly():
    cfg = _cfg("mask_rcnn", prior=False)
    ours = _model(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    standard = _model(cfg)
    standard.load_state_dict(ours.state_dict())
    inputs = make_point_sup_inputs((3, 2))
    a, b = _losses(ours, inputs), _losses(standard, inputs)
    assert set(a) == set(b) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("name", list(HEADS))
def test_the_prior_trains_every_head_and_empty_batches_keep_every_parameter_in_the_graph(name):
    model = _model(_cfg(name))
    seen = []
    model.roi_heads.mask_head.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    inputs = _smooth_inputs((3, 2))
    losses = _losses(model, inputs)
    assert {"loss_prj", "loss_pairwise"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_prj"] > 0 and losses["loss_pairwise"] > 0
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    # The colours handed to the head: each cell's mean RGB of the (unresized 128x128, BGR) input.
    grid = model.roi_heads.mask_head.box_prior_grid_size
    assert grid == (28 if name == "mask_rcnn" else 6)
    for inst, image in zip(seen[0], inputs, strict=True):
        rgb = image["image"].flip(0).float()[None]
        expected = roi_colors(rgb, [inst.proposal_boxes.tensor], grid)
        torch.testing.assert_close(inst.proposal_colors, expected, rtol=0, atol=1e-3)
    model.zero_grad()
    losses = _losses(model, make_point_sup_inputs((0, 0)))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", list(HEADS))
def test_mixed_box_only_objects_get_the_prior_and_mask_objects_do_not(name):
    """All objects box-only: the prior is the whole mask loss; all mask-supervised: no prior at all."""
    model = _model(_cfg(name, mixed=True))
    for kind, has_prior in ((Supervision.BOX, True), (Supervision.MASK, False)):
        inputs = _smooth_inputs((3, 2))
        for x in inputs:
            inst = x["instances"]
            inst.gt_supervision = torch.full((len(inst),), int(kind))
            masks = torch.zeros(len(inst), 128, 128, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.int().tolist()):
                masks[i, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        losses = _losses(model, inputs)
        assert (losses["loss_prj"] > 0) == has_prior, (kind, losses)
        assert (losses["loss_pairwise"] > 0) == has_prior, (kind, losses)
        assert all(torch.isfinite(v) for v in losses.values())


def test_a_mask_head_without_the_prior_is_a_clear_error():
    cfg = _cfg("mask_rcnn")
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    with pytest.raises(ValueError, match="mask head with the box prior"):
        build_model(cfg)
