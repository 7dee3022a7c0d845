"""point_sup.Predictor and point_sup.draw_predictions on the real nuclei tiles with a trained miniature."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from miniature_model import trained_p10_model
from PIL import Image

from point_sup import Predictor, UnreadableImageError, draw_predictions, model_zoo
from point_sup.engine.experiment import load_config
from point_sup.utils.visualizer import OBJECT_COLOR, draw_points

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def p10(nuclei_datasets, tmp_path_factory):
    return trained_p10_model(tmp_path_factory.mktemp("p10_model"), TINY_OVERRIDES)


@pytest.fixture(scope="module")
def predictor(p10):
    return Predictor(p10.cfg(), p10.weights)


@pytest.fixture(scope="module")
def val_image(nuclei_datasets) -> Path:
    return Path(nuclei_datasets["image_root"]) / "val_0.png"


def _same(a, b) -> None:
    assert len(a) == len(b)
    for field in ("scores", "pred_classes", "pred_masks"):
        assert torch.equal(a.get(field), b.get(field)), field
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_a_path_or_an_array_gives_the_image_instances_on_the_cpu(predictor, val_image):
    instances = predictor(val_image)
    width, height = Image.open(val_image).size
    assert instances.image_size == (height, width)
    # Detectron2's own DefaultPredictor on the same config and weights gives the same instances
    # (how confident the miniature is depends on the Detectron2 build it was trained with).
    reference = DefaultPredictor(predictor.cfg)(utils.read_image(str(val_image), format="BGR"))
    assert len(instances) >= 1
    _same(instances, reference["instances"].to("cpu"))
    assert instances.pred_masks.shape == (len(instances), height, width)
    assert instances.pred_masks.dtype == torch.bool and instances.scores.device.type == "cpu"
    assert predictor.input_format == "BGR"
    bgr = utils.read_image(str(val_image), format="BGR")
    _same(instances, predictor(bgr))
    _same(instances, predictor(str(val_image)))


def test_an_rgb_model_takes_rgb_arrays(p10, predictor, val_image):
    """INPUT.FORMAT RGB: arrays are RGB, and a path is still read right (the same input to the model)."""
    cfg = p10.cfg()
    cfg.INPUT.FORMAT = "RGB"
    rgb_model = Predictor(cfg, p10.weights)
    rgb = utils.read_image(str(val_image), format="RGB")
    _same(rgb_model(val_image), rgb_model(rgb))
    _same(rgb_model(rgb), predictor(np.ascontiguousarray(rgb[:, :, ::-1])))


def test_the_config_is_copied_and_its_dataset_metadata_kept(p10, predictor):
    cfg = p10.cfg()
    Predictor(cfg, p10.weights)
    assert not cfg.is_frozen() and str(p10.weights) == cfg.MODEL.WEIGHTS
    assert predictor.cfg.is_frozen() and str(p10.weights) == predictor.cfg.MODEL.WEIGHTS
    assert predictor.metadata is MetadataCatalog.get("nuclei_val")  # the config's test set
    assert predictor.model.training is False


def test_a_shipped_config_by_name(nuclei_datasets, tmp_path, val_image):
    name = "nuclei/mask_rcnn_R_18_FPN_P10.yaml"
    torch.manual_seed(0)
    model = build_model(model_zoo.get_config(name, device="cpu"))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("seeded")
    predictor = Predictor(name, tmp_path / "seeded.pth")
    assert model_zoo.default_device() == predictor.cfg.MODEL.DEVICE
    assert len(predictor(val_image)) >= 0  # an untrained model: any number of instances
    # A YAML file's path works as well.
    from_file = Predictor(str(ROOT / "configs" / name), tmp_path / "seeded.pth")
    assert from_file.cfg == predictor.cfg


def test_bad_input_is_one_clear_error(p10, predictor, tmp_path, val_image):
    missing = tmp_path / "nothing.pth"
    with pytest.raises(FileNotFoundError, match=f"model weights {missing} do not exist"):
        Predictor(p10.cfg(), missing)
    cfg = p10.cfg()
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(ValueError, match="no model weights"):
        Predictor(cfg)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read model weights {garbage}"):
        Predictor(p10.cfg(), garbage)
    # The full-size nuclei config's model: the miniature's weights have other shapes.
    with pytest.raises(ValueError, match="do not fit the config's model .*of shape .* where the model has"):
        Predictor(model_zoo.get_config("nuclei/mask_rcnn_R_18_FPN_P10.yaml", device="cpu"), p10.weights)
    # Another model family of the same size: whole heads are missing.
    condinst = load_config(str(ROOT / "configs/nuclei/condinst_R_18_FPN_P10.yaml"), TINY_OVERRIDES)
    with pytest.raises(
        ValueError, match=r"do not fit the config's model \(backbone.top_block.p6.weight missing"
    ):
        Predictor(condinst, p10.weights)
    with pytest.raises(model_zoo.UnknownConfigError, match="closest: nuclei/mask_rcnn_R_18_FPN_P10.yaml"):
        Predictor("nuclei/mask_rcnn_R18_FPN_P10.yaml", p10.weights)

    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(val_image).read_bytes()[:200])  # a truncated PNG
    for path, reason in [
        (broken, "cannot read image .*broken.png: "),
        (tmp_path / "none.png", "none.png: it does not exist"),
        (tmp_path, "it is a folder"),
    ]:
        with pytest.raises(UnreadableImageError, match=reason):
            predictor(path)
    for array in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)):
        with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image in BGR order"):
            predictor(array)


def test_draw_predictions_from_a_path_with_points(predictor, val_image, nuclei_datasets):
    instances = predictor(val_image)
    rgb = utils.read_image(str(val_image), format="RGB")
    picture = draw_predictions(val_image, instances)
    assert picture.dtype == np.uint8 and picture.shape == rgb.shape
    assert np.array_equal(picture, draw_predictions(rgb, instances))
    drawn = instances[instances.scores >= 0.5].pred_masks.any(dim=0).numpy()
    changed = (picture != rgb).any(axis=2)
    assert changed[drawn].mean() > 0.9 and not changed[~drawn].any()  # one class: no labels

    # Figure 1's points on top, where P_N annotations are given (only the points, not their boxes).
    record = next(r for r in DatasetCatalog.get("nuclei_val_p10") if r["file_name"].endswith("val_0.png"))
    with_points = draw_predictions(val_image, instances, points=record["annotations"], scale=2)
    without = draw_predictions(val_image, instances, scale=2)
    assert (with_points != without).any()
    # The points are drawn on top as draw_points draws them: its red point pixels are red here too.
    points_only = draw_points(rgb, record["annotations"], scale=2)
    red = (points_only == np.array(OBJECT_COLOR) * 255).all(axis=2)
    assert red.any() and (with_points[red] == points_only[red]).all()
