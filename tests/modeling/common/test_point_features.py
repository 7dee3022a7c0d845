"""Shared point machinery: sampling, coordinate conversions, point selection."""

from __future__ import annotations

import pytest
import torch
from detectron2.structures import Boxes

from point_sup.modeling.common.point_features import (
    calculate_uncertainty,
    features_for_point_sampling,
    generate_regular_grid_point_coords,
    get_point_coords_wrt_box,
    get_point_coords_wrt_image,
    get_uncertain_point_coords_on_grid,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    point_sample_fine_grained_features,
)


@pytest.mark.parametrize("side", [7, 28])
def test_point_sample_is_exact_at_cell_centres(side: int) -> None:
    torch.manual_seed(0)
    grid_map = torch.randn(3, 5, side, side)
    coords = generate_regular_grid_point_coords(3, side, "cpu")
    assert coords.shape == (3, side * side, 2)
    sampled = point_sample(grid_map, coords)
    torch.testing.assert_close(sampled, grid_map.view(3, 5, -1), rtol=0, atol=1e-5)
    # The 4-D coordinate form returns the map itself.
    sampled_4d = point_sample(grid_map, coords.view(3, side, side, 2))
    torch.testing.assert_close(sampled_4d, grid_map, rtol=0, atol=1e-5)


def test_regular_grid_is_row_major() -> None:
    coords = generate_regular_grid_point_coords(1, 4, "cpu")[0]
    # flat index row * side + col: (row 1, col 2) -> index 6 at x = 2.5 / 4, y = 1.5 / 4
    torch.testing.assert_close(coords[6], torch.tensor([2.5 / 4, 1.5 / 4]))


def test_point_sample_between_centres_is_bilinear() -> None:
    grid_map = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # Halfway between all four centres (the map centre), and a quarter of the way from (0, 0).
    coords = torch.tensor([[[0.5, 0.5], [0.375, 0.25]]])
    sampled = point_sample(grid_map, coords)[0, 0]
    torch.testing.assert_close(sampled, torch.tensor([1.5, 0.25]))


def test_box_relative_round_trip_and_inside_test() -> None:
    torch.manual_seed(1)
    origin = torch.rand(6, 2) * 50
    boxes = torch.cat([origin, origin + 1 + torch.rand(6, 2) * 40], dim=1)
    rel = torch.rand(6, 9, 2) * 1.6 - 0.3
    image = get_point_coords_wrt_image(boxes, rel)
    torch.testing.assert_close(get_point_coords_wrt_box(boxes, image), rel, rtol=0, atol=1e-5)
    inside = (image[..., 0] >= boxes[:, None, 0]) & (image[..., 0] <= boxes[:, None, 2])
    inside &= (image[..., 1] >= boxes[:, None, 1]) & (image[..., 1] <= boxes[:, None, 3])
    rel_back = get_point_coords_wrt_box(boxes, image)
    assert torch.equal(((rel_back >= 0) & (rel_back <= 1)).all(dim=2), inside)
    # Box corners map to (0, 0) and (1, 1).
    corners = torch.stack([boxes[:, :2], boxes[:, 2:]], dim=1)
    torch.testing.assert_close(
        get_point_coords_wrt_box(boxes, corners), torch.tensor([[0.0, 0.0], [1.0, 1.0]]).expand(6, 2, 2)
    )


def test_degenerate_box_stays_finite() -> None:
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0]])
    rel = get_point_coords_wrt_box(boxes, torch.tensor([[[5.0, 6.0], [6.0, 6.0]]]))
    assert torch.isfinite(rel).all()


def _linear_map(stride: int, height: int, width: int, a: float, b: float, c: float) -> torch.Tensor:
    """(1, 1, H, W) map whose cell (row, col) holds a * x + b * y + c at the cell centre's image
    coordinates; bilinear interpolation reproduces a linear function exactly between centres."""
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
    return (a * xs[None, :] + b * ys[:, None] + c)[None, None]


def test_fine_grained_features_against_hand_computed_maps() -> None:
    # Images of 64x96 (H x W); level strides 4 and 8; maps of images 0 and 2 differ, image 1 has no box.
    level_a = torch.cat([_linear_map(4, 16, 24, 1.0, 2.0, 0.0), _linear_map(4, 16, 24, -1.0, 0.5, 3.0)], 0)
    level_b = torch.cat(
        [
            torch.cat([_linear_map(8, 8, 12, 0.5, 0.0, 1.0), _linear_map(8, 8, 12, 0.0, 1.0, 0.0)], 1),
            torch.cat([_linear_map(8, 8, 12, 2.0, 0.0, 0.0), _linear_map(8, 8, 12, 0.0, -1.0, 5.0)], 1),
        ],
        0,
    )
    assert level_a.shape == (2, 1, 16, 24) and level_b.shape == (2, 2, 8, 12)
    boxes = [
        Boxes(torch.tensor([[10.0, 8.0, 60.0, 50.0], [20.0, 12.0, 80.0, 56.0]])),
        Boxes(torch.zeros(0, 4)),
        Boxes(torch.tensor([[8.5, 9.0, 85.0, 55.0]])),
    ]
    level_a = torch.cat([level_a[:1], level_a[:1] * 0, level_a[1:]])  # 3 images; the 2nd is unused
    level_b = torch.cat([level_b[:1], level_b[:1] * 0, level_b[1:]])
    torch.manual_seed(2)
    rel = torch.rand(3, 11, 2)
    features, image_coords = point_sample_fine_grained_features(
        [level_a, level_b], [1 / 4, 1 / 8], boxes, rel
    )
    assert features.shape == (3, 3, 11)
    cat_boxes = torch.cat([b.tensor for b in boxes])
    torch.testing.assert_close(image_coords, get_point_coords_wrt_image(cat_boxes, rel))
    x, y = image_coords[..., 0], image_coords[..., 1]
    expected = torch.cat(
        [
            torch.stack([x + 2 * y, 0.5 * x + 1.0, y], dim=1)[:2],
            torch.stack([-x + 0.5 * y + 3.0, 2 * x, -y + 5.0], dim=1)[2:],
        ]
    )
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-4)


def _former_fine_grained_features(features_list, feature_scales, boxes, point_coords) -> torch.Tensor:
    """point_sample_fine_grained_features before issue 23: each map's (W, H) as a tensor."""
    image_coords = get_point_coords_wrt_image(Boxes.cat(boxes).tensor, point_coords)
    out = []
    for idx, coords in enumerate(torch.split(image_coords, [len(b) for b in boxes])):
        if coords.numel() == 0:
            continue
        per_level = []
        for features, scale in zip(features_list, feature_scales, strict=True):
            size = torch.tensor(features.shape[-1:-3:-1], device=coords.device, dtype=coords.dtype)
            sampled = point_sample(features[idx : idx + 1], (coords * scale / size).reshape(1, -1, 2))
            per_level.append(sampled.squeeze(0).view(features.shape[1], coords.shape[0], coords.shape[1]))
        out.append(torch.cat(per_level, dim=0).transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fine_grained_features_equal_the_former_division_by_a_size_tensor(dtype) -> None:
    """Map coordinates are divided by the Python ints W and H (no tensor copied to the device per
    map): bit for bit the former division by a (W, H) tensor of the coordinates' dtype."""
    g = torch.Generator().manual_seed(5)
    maps = [
        torch.randn(2, 3, 25, 33, generator=g, dtype=dtype),
        torch.randn(2, 2, 13, 17, generator=g, dtype=dtype),
    ]
    origin = torch.rand(5, 2, generator=g, dtype=dtype) * 60
    boxes = torch.cat([origin, origin + 5 + torch.rand(5, 2, generator=g, dtype=dtype) * 60], dim=1)
    boxes = [Boxes(boxes[:3]), Boxes(boxes[3:])]
    rel = torch.rand(5, 9, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    features, _ = point_sample_fine_grained_features(maps, [1 / 4, 1 / 8], boxes, rel)
    assert torch.equal(features, _former_fine_grained_features(maps, [1 / 4, 1 / 8], boxes, rel))


def test_fine_grained_features_without_boxes() -> None:
    features, coords = point_sample_fine_grained_features(
        [torch.zeros(2, 4, 8, 8)],
        [0.25],
        [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))],
        torch.zeros(0, 5, 2),
    )
    assert features.shape == (0, 4, 5) and coords.shape == (0, 5, 2)


def test_fine_grained_features_of_boxes_without_points_keep_their_rows() -> None:
    """Boxes with P = 0 points (a batch without labelled points) get (R_i, C, 0) rows, so that the
    rows match the boxes: the Implicit PointRend head concatenates them with the positional
    encoding of the same R boxes. The maps stay in the graph (a zero gradient)."""
    maps = torch.randn(2, 4, 8, 8, requires_grad=True)
    boxes = [
        Boxes(torch.tensor([[1.0, 1.0, 20.0, 20.0]] * 3)),
        Boxes(torch.tensor([[2.0, 3.0, 9.0, 9.0]] * 2)),
    ]
    features, coords = point_sample_fine_grained_features([maps], [0.25], boxes, torch.zeros(5, 0, 2))
    assert features.shape == (5, 4, 0) and coords.shape == (5, 0, 2)
    features.sum().backward()
    assert torch.equal(maps.grad, torch.zeros_like(maps))
    # An image without boxes next to one with boxes but no points.
    boxes[0] = Boxes(torch.zeros(0, 4))
    features, _ = point_sample_fine_grained_features([maps], [0.25], boxes, torch.zeros(2, 0, 2))
    assert features.shape == (2, 4, 0)


def test_uncertain_points_on_grid() -> None:
    # H=2, W=3: the two cells with logits closest to 0 are (row 1, col 0) and (row 0, col 2).
    logits = torch.tensor([[[[5.0, -4.0, 0.5], [0.1, 3.0, -2.0]]]])
    indices, coords = get_uncertain_point_coords_on_grid(calculate_uncertainty(logits), 2)
    assert indices.tolist() == [[3, 2]]
    torch.testing.assert_close(coords, torch.tensor([[[0.5 / 3, 1.5 / 2], [2.5 / 3, 0.5 / 2]]]))
    # Asking for more points than cells returns every cell.
    indices, _ = get_uncertain_point_coords_on_grid(calculate_uncertainty(logits), 100)
    assert sorted(indices[0].tolist()) == list(range(6))


def test_uncertain_points_with_randomness_prefer_uncertain_regions() -> None:
    torch.manual_seed(3)
    logits = torch.full((4, 2, 7, 7), 10.0)
    logits[:, :, :, :3] = 0.0  # columns 0-2 (u < 2.5 / 7) are maximally uncertain
    num_points = 196
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, 3, 0.75)
    assert coords.shape == (4, num_points, 2)
    assert ((coords >= 0) & (coords <= 1)).all()
    num_uncertain = int(0.75 * num_points)
    assert (coords[:, :num_uncertain, 0] < 2.5 / 7 + 1e-6).all()
    # The random remainder is spread over the whole box.
    assert (coords[:, num_uncertain:, 0] > 0.5).any()


def test_features_prepared_for_point_sampling_sample_the_same_values() -> None:
    """The channels-last copy made for the subdivision's many samplings changes speed, not values."""
    g = torch.Generator().manual_seed(0)
    features = {"p2": torch.randn(2, 8, 20, 24, generator=g), "p3": torch.randn(2, 8, 10, 12, generator=g)}
    prepared = features_for_point_sampling(features, ["p2"])
    assert list(prepared) == ["p2"]
    assert prepared["p2"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(prepared["p2"], features["p2"], rtol=0, atol=0)
    coords = torch.rand(2, 50, 2, generator=g) * 1.2 - 0.1  # some points outside the map
    assert torch.equal(point_sample(prepared["p2"], coords), point_sample(features["p2"], coords))
