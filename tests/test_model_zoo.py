"""point_sup.model_zoo: the shipped configs by name, with the device chosen as Detectron2's tools do."""

from pathlib import Path

import pytest
import torch

from point_sup import model_zoo
from point_sup.engine.experiment import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_of_the_repository_is_shipped_and_loads():
    names = model_zoo.list_configs()
    assert names == sorted(
        p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")
    )
    for name in names:
        path = Path(model_zoo.get_config_file(name))
        assert path.is_absolute() and path.is_file()
        cfg = model_zoo.get_config(name, device="cpu")  # _BASE_ files resolve from the shipped folder
        assert cfg.MODEL.DEVICE == "cpu"


def test_config_file_by_name():
    path = model_zoo.get_config_file("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml")
    assert Path(path) == model_zoo.configs_dir() / "COCO" / "mask_rcnn_R_50_FPN_3x_P10.yaml"
    # The repository's path works too (README commands name configs/...).
    assert model_zoo.get_config_file("configs/COCO/mask_rcnn_R_50_FPN_3x_P10.yaml") == path


@pytest.mark.parametrize(
    "name, close",
    [
        ("COCO/mask_rcnn_R50_FPN_3x_P10.yaml", "COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"),
        ("nuclei/mask_rcnn_R_18_FPN_P10", "nuclei/mask_rcnn_R_18_FPN_P10.yaml"),
        ("../setup.py", None),
        ("COCO", None),
        (str(ROOT / "configs/COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"), None),  # names, not paths
    ],
)
def test_unknown_names_are_one_clear_error_with_close_names(name, close):
    with pytest.raises(model_zoo.UnknownConfigError) as e:
        model_zoo.get_config_file(name)
    message = str(e.value)
    assert "\n" not in message and repr(name) in message and "list_configs()" in message
    if close is not None:
        assert f"closest: {close}" in message


def test_overrides_and_defaults():
    cfg = model_zoo.get_config("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml", overrides=["SOLVER.IMS_PER_BATCH", 8])
    assert cfg.SOLVER.IMS_PER_BATCH == 8
    assert cfg.MODEL.ROI_MASK_HEAD.NAME == "PointSupMaskRCNNConvUpsampleHead" and cfg.INPUT.POINT_SUP
    assert cfg.MODEL.MIXED_SUP.ENABLED is False  # point_sup's keys are there
    assert not cfg.is_frozen()
    cfg.SOLVER.IMS_PER_BATCH = 2  # a new config per call: changing one leaves the next as shipped
    assert model_zoo.get_config("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml").SOLVER.IMS_PER_BATCH == 16
    with pytest.raises(ConfigError, match="SOLVER.NO_SUCH_KEY"):
        model_zoo.get_config("COCO/mask_rcnn_R_50_FPN_3x_P10.yaml", overrides=["SOLVER.NO_SUCH_KEY", 1])


@pytest.mark.parametrize("cuda", [False, True])
def test_device_precedence(monkeypatch, cuda):
    """None: the machine's device, whatever the file says (the nuclei configs say cpu); an override
    of MODEL.DEVICE wins over that; the device argument wins over both."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    name = "nuclei/mask_rcnn_R_18_FPN_P10.yaml"
    machine = "cuda" if cuda else "cpu"
    assert model_zoo.default_device() == machine
    chosen = model_zoo.get_config(name).MODEL.DEVICE
    assert chosen == machine
    assert model_zoo.get_config(name, ["MODEL.DEVICE", "cuda:1"]).MODEL.DEVICE == "cuda:1"
    assert model_zoo.get_config(name, ["MODEL.DEVICE", "cuda:1"], device="cpu").MODEL.DEVICE == "cpu"
