"""CondInst's dynamic mask head (point_sup.modeling.condinst.dynamic_mask_head) against explicit convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from point_sup.modeling.condinst.dynamic_mask_head import (
    DynamicMaskHeadLayout,
    dynamic_mask_logits,
    relative_coordinates,
)


# ------------------------------------------------------------------------------------------------
# The dynamic mask head
def test_layout_has_condinsts_169_parameters_in_its_order():
    layout = DynamicMaskHeadLayout(in_channels=8, channels=8, num_layers=3, rel_coords=True)
    assert layout.layer_shapes == [(8, 10), (8, 8), (1, 8)]
    assert layout.num_params == 169
    params = torch.arange(169, dtype=torch.float32)[None]
    (w1, b1), (w2, b2), (w3, b3) = layout.split(params)
    # weights of all layers first (row-major (out, in)), then all biases
    assert w1[0, 0, 0] == 0 and w1[0, 0, 1] == 1 and w1[0, 1, 0] == 10
    assert w2[0, 0, 0] == 80 and w3[0, 0, 0] == 144 and w3[0, 0, 7] == 151
    assert b1[0, 0] == 152 and b2[0, 0] == 160 and b3[0, 0] == 168
    with pytest.raises(ValueError, match="169"):
        layout.split(torch.zeros(2, 168))


def test_dynamic_head_equals_a_loop_of_convolutions_with_the_generated_weights():
    torch.manual_seed(0)
    layout = DynamicMaskHeadLayout(in_channels=4, channels=5, num_layers=3, rel_coords=True)
    features = torch.randn(2, 4, 6, 7)
    image_index = torch.tensor([1, 0, 1])
    params = torch.randn(3, layout.num_params)
    locations = torch.tensor([[10.0, 4.0], [0.0, 30.0], [55.5, 47.0]])
    soi = torch.tensor([64.0, 128.0, 64.0])
    stride = 8
    rel = relative_coordinates(locations, soi, (6, 7), stride)
    out = dynamic_mask_logits(features, image_index, params, layout, rel)
    assert out.shape == (3, 1, 6, 7)
    shapes = layout.layer_shapes
    for r in range(3):
        # relative coordinates written out cell by cell
        coords = torch.zeros(2, 6, 7)
        for y in range(6):
            for x in range(7):
                coords[0, y, x] = (locations[r, 0] - (x + 0.5) * stride) / soi[r]
                coords[1, y, x] = (locations[r, 1] - (y + 0.5) * stride) / soi[r]
        torch.testing.assert_close(rel[r], coords)
        x = torch.cat([features[image_index[r]], coords])[None]
        offset = 0
        weights = []
        for o, i in shapes:
            weights.append(params[r, offset : offset + o * i].reshape(o, i, 1, 1))
            offset += o * i
        for k, (o, _) in enumerate(shapes):
            bias = params[r, offset : offset + o]
            offset += o
            x = F.conv2d(x, weights[k], bias)
            if k < len(shapes) - 1:
                x = F.relu(x)
        torch.testing.assert_close(out[r], x[0], rtol=1e-5, atol=1e-5)


def test_dynamic_head_without_relative_coordinates():
    layout = DynamicMaskHeadLayout(in_channels=3, channels=2, num_layers=1, rel_coords=False)
    assert layout.num_params == 3 + 1
    features = torch.randn(1, 3, 2, 2)
    params = torch.tensor([[1.0, -2.0, 0.5, 0.25]])
    out = dynamic_mask_logits(features, torch.tensor([0]), params, layout)
    expected = features[0, 0] - 2 * features[0, 1] + 0.5 * features[0, 2] + 0.25
    torch.testing.assert_close(out[0, 0], expected)
    with pytest.raises(ValueError, match="rel_coords"):
        dynamic_mask_logits(features, torch.tensor([0]), params, layout, torch.zeros(1, 2, 2, 2))


def test_relative_coordinates_of_float16_locations_are_computed_in_float32():
    """Locations cast to float16 (under autocast) keep whole pixels beyond 1024; the offsets to the
    cell centres are computed in float32 from those values, as from float32 locations."""
    locations = torch.tensor([[1300.0, 700.0], [1025.0, 3.0]])
    soi = torch.tensor([64.0, 512.0])
    got = relative_coordinates(locations.half(), soi.half(), (200, 336), 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, relative_coordinates(locations, soi, (200, 336), 4), rtol=0, atol=0)
    # cell (r, c) centre ((c + 0.5) * 4, (r + 0.5) * 4): cell (0, 336 - 1) of the first instance
    assert got[0, 0, 0, 335].item() == (1300.0 - 1342.0) / 64.0
