"""The flat modules of point_sup.modeling before its one-package-per-family layout stay importable for
one release: each warns, on import, with a DeprecationWarning naming its new path, and exposes the
same objects as that path; nothing in the repository imports them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import point_sup.modeling

ROOT = Path(__file__).resolve().parents[2]

# Old module -> (new module, the old module's public names, its ``__all__``).
MOVED = {
    "backbone": ("condinst.backbone", "build_fcos_resnet_fpn_backbone"),
    "boxinst_losses": (
        "condinst.boxinst",
        "color_similarity image_cells neighbour_offsets pairwise_loss projection_loss rgb_to_lab",
    ),
    "condinst_losses": (
        "condinst.losses",
        "box_cells_at_stride box_masks_at_stride dice_loss mask_cells_at_stride mask_logits_to_image "
        "point_logits_at_cells point_logits_bilinear",
    ),
    "conv_fc_head": ("common.conv_fc_head", "ConvFCHead"),
    "dynamic_mask_head": (
        "condinst.dynamic_mask_head",
        "DynamicMaskHeadLayout dynamic_mask_logits relative_coordinates upsample_logits",
    ),
    "implicit_point_head": (
        "implicit_point_rend.point_head",
        "POS_ENC_NUM_FREQUENCIES DynamicPointHead fourier_position_encoding",
    ),
    "mask_branch": ("condinst.mask_branch", "MaskBranch"),
    "mask_rcnn_point_sup": (
        "mask_rcnn.mask_head",
        "MaskRCNNConvUpsamplePointSupHead PointSupMaskRCNNConvUpsampleHead roi_grid_point_loss",
    ),
    "mixed_loss": (
        "common.mixed_loss",
        "MixedSplit combine_kind_losses drop_box_only kind_weights nonzero_rows split_by_supervision",
    ),
    "point_features": (
        "common.point_features",
        "box_chunks calculate_uncertainty features_for_point_sampling generate_regular_grid_point_coords "
        "get_point_coords_wrt_box get_point_coords_wrt_image get_uncertain_point_coords_on_grid "
        "get_uncertain_point_coords_with_randomness point_sample point_sample_fine_grained_features",
    ),
    "point_loss": (
        "common.point_loss",
        "IGNORE_LABEL MASK_POINT_LABELS NORMALIZATIONS PADDING_LABEL cat_gt_classes get_mask_point_labels "
        "get_point_targets ignore_points_outside_boxes mask_labels_at_points point_bce_loss "
        "roi_grid_point_loss select_class_logits",
    ),
    "point_rend_point_sup": ("point_rend", "PointSupPointHead PointSupPointRendMaskHead"),
    "subdivision": (
        "common.subdivision",
        "CPU_CHUNK_POINTS adaptive_subdivision chunked_point_logits skip_full_steps",
    ),
}
# Old modules whose path is now their family's package: the same names, no warning.
PACKAGES = {
    "condinst": "POINT_LOGITS SUPERVISIONS CondInstHead PairwiseOptions PointSupCondInst",
    "implicit_point_rend": (
        "LIGHT_VARIANT_OVERRIDES ImplicitPointRendPointSupHead PointSupImplicitPointRendMaskHead "
        "convert_from_detectron2_implicit_pointrend convert_to_detectron2_implicit_pointrend count_parameters"
    ),
}


def _import_fresh(name: str):
    """Import ``name`` as a first import would (its body runs, so it warns again)."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_moved_module_warns_with_its_new_path_and_exposes_the_same_objects(old):
    new, names = MOVED[old][0], MOVED[old][1].split()
    new_module = importlib.import_module(f"point_sup.modeling.{new}")
    with pytest.warns(
        DeprecationWarning, match=f"point_sup.modeling.{old} .*point_sup.modeling.{new}"
    ) as record:
        module = _import_fresh(f"point_sup.modeling.{old}")
    assert record[0].filename.endswith("importlib/__init__.py")  # the importer's line, not ours
    assert set(names) <= set(module.__all__)
    for name in names:
        assert getattr(module, name) is getattr(new_module, name), name


def test_the_removed_feature_helpers_give_the_feature_samplers_features():
    """``sample_named_features`` / ``roi_grid_features`` became :class:`FeatureSampler`'s methods;
    the old module keeps them as functions of the same arguments."""
    import torch
    from detectron2.structures import Boxes

    from point_sup.modeling.common.point_features import FeatureSampler

    with pytest.warns(DeprecationWarning):
        old = _import_fresh("point_sup.modeling.point_features")
    features = {"p2": torch.randn(1, 3, 8, 8), "p3": torch.randn(1, 5, 4, 4)}
    scales = {"p2": 0.25, "p3": 0.125}
    boxes = [Boxes(torch.tensor([[2.0, 3.0, 20.0, 25.0]]))]
    coords = torch.rand(1, 7, 2)
    sampler = FeatureSampler(("p2", "p3"), scales)
    assert torch.equal(
        old.sample_named_features(features, ["p2", "p3"], scales, boxes, coords),
        sampler.at_points(features, boxes, coords),
    )
    assert torch.equal(
        old.roi_grid_features(features, ["p2", "p3"], scales, boxes, 4), sampler.on_grid(features, boxes, 4)
    )


@pytest.mark.parametrize("old", sorted(PACKAGES))
def test_a_module_that_became_its_familys_package_keeps_its_names(old):
    package = importlib.import_module(f"point_sup.modeling.{old}")
    names = PACKAGES[old].split()
    assert set(names) <= set(package.__all__)
    assert all(hasattr(package, name) for name in names)


def test_the_moved_modules_register_nothing_again():
    """Re-importing an old module does not register a head twice (the registry would raise)."""
    for old in MOVED:
        with pytest.warns(DeprecationWarning):
            _import_fresh(f"point_sup.modeling.{old}")
    assert (
        point_sup.modeling.PointSupCondInst is _import_fresh("point_sup.modeling.condinst").PointSupCondInst
    )


def test_nothing_in_the_repository_imports_a_moved_module():
    """point_sup imports without a point_sup.modeling DeprecationWarning, and no module of the
    repository (package, tools, benchmarks, tests) names an old path in an import."""
    script = (
        "import warnings\n"
        "warnings.filterwarnings('error', message='point_sup.modeling', category=DeprecationWarning)\n"
        "import point_sup, point_sup.engine.pseudo_masks, point_sup.engine.given_boxes\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    old = "|".join(MOVED)
    pattern = re.compile(
        rf"(from|import) point_sup\.modeling\.({old})\b|from point_sup\.modeling import .*\b({old})\b"
    )
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("point_sup", "tools", "bench", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if path != Path(__file__).resolve() and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders
