"""`import point_sup` registers every component into Detectron2's registries and catalogs."""

import subprocess
import sys
import textwrap

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY

import point_sup
from point_sup.data import POINT_SUP_DATASET_PAIRS

HEADS = ("PointSupMaskRCNNConvUpsampleHead", "PointSupPointRendMaskHead", "PointSupImplicitPointRendMaskHead")


def test_heads_registered():
    for name in HEADS:
        assert name in ROI_MASK_HEAD_REGISTRY, name
    # no collision with detectron2.projects.point_rend's names
    assert not {"PointRendMaskHead", "ImplicitPointRendMaskHead"} & set(HEADS)


def test_condinst_and_its_backbone_registered():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    assert "PointSupCondInst" in META_ARCH_REGISTRY and "CondInst" not in META_ARCH_REGISTRY  # AdelaiDet's
    assert "build_fcos_resnet_fpn_backbone" in BACKBONE_REGISTRY
    cfg = point_sup.add_point_sup_config(get_cfg())
    # CondInst / BoxInst defaults: the CondInst and BoxInst papers'
    assert cfg.MODEL.CONDINST.MASK_OUT_STRIDE == 4 and cfg.MODEL.CONDINST.MASK_HEAD.NUM_LAYERS == 3
    assert cfg.MODEL.CONDINST.MASK_HEAD.CHANNELS == 8 and cfg.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS == 8
    assert (cfg.MODEL.BOXINST.PAIRWISE.SIZE, cfg.MODEL.BOXINST.PAIRWISE.DILATION) == (3, 2)
    assert cfg.MODEL.BOXINST.PAIRWISE.COLOR_THRESH == 0.3 and cfg.MODEL.BOXINST.ENABLED is False


def test_box_only_views_registered_lazily():
    for name in ("coco_2017_train", "voc_2012_train_instance", "cityscapes_fine_instance_seg_train"):
        assert name + "_boxes" in DatasetCatalog.list()
        assert MetadataCatalog.get(name + "_boxes").box_only_of == name


def test_builtin_datasets_registered_lazily():
    for train, val in POINT_SUP_DATASET_PAIRS.items():
        assert train in DatasetCatalog.list()
        assert MetadataCatalog.get(train).paired_val_dataset == val
    assert {"voc_2012_train_instance", "voc_2012_val_instance"} <= set(DatasetCatalog.list())


def test_config_keys():
    cfg = point_sup.add_point_sup_config(get_cfg())
    assert cfg.INPUT.POINT_SUP is False and cfg.INPUT.SAMPLE_POINTS == 0
    assert cfg.MODEL.IMPLICIT_POINTREND.PARAMS_L2_REGULARIZER == 1e-5
    assert (cfg.MODEL.POINT_HEAD.NUM_FC, cfg.MODEL.POINT_HEAD.FC_DIM) == (3, 256)  # paper §4.3
    assert cfg.MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS == 28 * 28
    # Idempotent, and compatible with PointRend's own add_pointrend_config (same key names).
    cfg.INPUT.SAMPLE_POINTS = 5
    point_sup.add_point_sup_config(cfg)
    assert cfg.INPUT.SAMPLE_POINTS == 5
    from detectron2.projects.point_rend import add_pointrend_config

    add_pointrend_config(cfg)
    point_sup.add_point_sup_config(cfg)
    assert cfg.MODEL.IMPLICIT_POINTREND.POS_ENC_ENABLED is True


def test_fresh_process_registration():
    """In a new interpreter, nothing of point_sup is registered until `import point_sup`."""
    code = textwrap.dedent(
        """
        from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
        from detectron2.data import DatasetCatalog
        def state():
            head = "PointSupMaskRCNNConvUpsampleHead" in ROI_MASK_HEAD_REGISTRY
            return head, "coco_2017_train_p10" in DatasetCatalog
        before = state()
        import point_sup, importlib
        importlib.reload(point_sup.data.builtin)  # registering twice is harmless
        print(before, state())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "(False, False) (True, True)"
