"""tools/predict.py on the real nuclei tiles with a trained miniature: pictures, COCO results, bad input."""

import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES
from detectron2.data import detection_utils as utils
from miniature_model import trained_p10_model
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from point_sup import Predictor

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_NAME = "nuclei/mask_rcnn_R_18_FPN_P10.yaml"


def _tool():
    spec = importlib.util.spec_from_file_location("tools_predict", ROOT / "tools" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


predict = _tool()


@pytest.fixture(scope="module")
def p10(nuclei_datasets, tmp_path_factory):
    return trained_p10_model(tmp_path_factory.mktemp("p10_model"), TINY_OVERRIDES)


@pytest.fixture
def images(nuclei_datasets, tmp_path) -> Path:
    """A folder of the six nuclei tiles (train_0..3, val_0..1), apart from the dataset's own."""
    folder = tmp_path / "images"
    shutil.copytree(nuclei_datasets["image_root"], folder)
    return folder


@pytest.fixture
def messages():
    """The tool's log lines (its logger does not propagate to the root, so caplog would miss them)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(f"{record.levelname} {record.getMessage()}")
    log = logging.getLogger("point_sup.predict")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


def _run(p10, *flags: str, config: str | None = None) -> int:
    config = config or str(p10.config_file)
    return predict.main(["--config-file", config, *flags, *p10.cli_overrides()])


def test_a_folder_in_pictures_and_coco_results_out(p10, images, nuclei_datasets, tmp_path, messages):
    out = tmp_path / "out"
    results = tmp_path / "results.json"
    val_json = nuclei_datasets["val"]
    code = _run(
        p10,
        "--input", str(images),
        "--output", str(out),
        "--coco-json", str(results),
        "--coco-images", str(val_json),
        "--score-threshold", "0.5",
        config=SHIPPED_NAME,  # a shipped config's name, as from a pip install
    )  # fmt: skip
    # The train tiles are not in the validation COCO file: named, skipped, exit code 1.
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["val_0.png", "val_1.png"]
    not_listed = [m for m in messages if m.startswith("ERROR") and "is not listed in --coco-images" in m]
    assert len(not_listed) == 4 and all("train_" in m for m in not_listed)

    predictor = Predictor(p10.cfg())
    coco = COCO(str(val_json))
    detections = coco.loadRes(str(results))  # pycocotools reads them against the images' COCO file
    for name in ("val_0.png", "val_1.png"):
        rgb = utils.read_image(str(images / name), format="RGB")
        instances = predictor(images / name)
        picture = np.asarray(Image.open(out / name))
        assert picture.shape == rgb.shape and picture.dtype == np.uint8
        # Masks drawn where the detections scoring 0.5 or more are, nothing else (one class: no labels).
        drawn = instances[instances.scores >= 0.5].pred_masks.any(dim=0).numpy()
        assert drawn.sum() > 100
        changed = (picture != rgb).any(axis=2)
        assert changed[drawn].mean() > 0.9 and not changed[~drawn].any()

        image_id = next(i["id"] for i in coco.dataset["images"] if i["file_name"] == name)
        anns = detections.loadAnns(detections.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(instances)  # every detection, whatever the picture's threshold
        best = max(anns, key=lambda a: a["score"])
        assert best["file_name"] == str(images / name) and best["category_id"] == 1
        mask = mask_util.decode(best["segmentation"])
        assert mask.shape == rgb.shape[:2]
        k = int(instances.scores.argmax())
        assert np.array_equal(mask.astype(bool), instances.pred_masks[k].numpy())
        x0, y0, x1, y1 = instances.pred_boxes.tensor[k].tolist()
        assert best["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)
    evaluation = COCOeval(coco, detections, "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[1] > 0  # AP50: the miniature finds nuclei


def test_files_globs_and_a_corrupt_image(p10, images, tmp_path, messages):
    """A corrupt image and a path that does not exist are named; the others are written; exit 1."""
    (images / "broken.png").write_bytes((images / "val_0.png").read_bytes()[:300])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "val_0.png", other / "val_0.png")  # a second val_0: the picture val_0_2.png
    out = tmp_path / "out"
    results = tmp_path / "results.json"
    code = _run(
        p10,
        "--output", str(out),
        "--coco-json", str(results),
        # Last, so that the overrides follow its paths directly: the first config key ends them.
        "--input", str(images / "train_*.png"), str(images / "broken.png"), str(other / "val_0.png"),
        str(images / "val_0.png"), str(images / "train_0.png"), str(tmp_path / "missing.png"),
    )  # fmt: skip
    assert code == 1
    names = sorted(p.name for p in out.iterdir())
    assert names == ["train_0.png", "train_1.png", "train_2.png", "train_3.png", "val_0.png", "val_0_2.png"]
    errors = [m for m in messages if m.startswith("ERROR")]
    assert any("cannot read image" in m and "broken.png" in m for m in errors)
    assert any(f"--input {tmp_path / 'missing.png'} does not exist" in m for m in errors)
    assert any("2 of the inputs failed" in m for m in errors)
    # Without --coco-images: images numbered in input order (train_0 once, broken.png 5, with no
    # detection), classes by the ids of the config's test set.
    listed = json.loads(results.read_text())
    order = {r["image_id"]: r["file_name"] for r in listed}
    assert sorted(order) == [1, 2, 3, 4, 6, 7]
    assert order[1] == str(images / "train_0.png") and order[6] == str(other / "val_0.png")
    assert {r["category_id"] for r in listed} == {1}
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "file_name": f, "height": 1, "width": 1} for i, f in order.items()],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [],
    }
    gt.createIndex()
    assert len(gt.loadRes(str(results)).getAnnIds()) == len(listed)


def test_outputs_never_touch_inputs(p10, images, tmp_path, capsys):
    """Exit code 2 and one error line, before anything is written."""
    before = sorted(images.iterdir())
    into = ["--input", str(images), "--output", str(tmp_path / "out")]
    cases = {
        "holds input images": ["--input", str(images), "--output", str(images)],
        "--coco-json .* is an input image": [*into, "--coco-json", str(images / "val_0.png")],
        "--coco-images gives the ids of --coco-json": [*into, "--coco-images", str(images / "x.json")],
        "no image to predict: --input .*nothing.png does not exist": [
            "--input", str(tmp_path / "nothing.png"), "--output", str(tmp_path / "out"),
        ],
    }  # fmt: skip
    for message, flags in cases.items():
        with pytest.raises(SystemExit) as e:
            _run(p10, *flags)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("predict.py: error: ")
        assert re.search(message, err), err
    assert sorted(images.iterdir()) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["MODEL.WEIGHTS", ""], "MODEL.WEIGHTS is empty"),
        (["MODEL.WEIGHTS", "/no/such/model.pth"], "MODEL.WEIGHTS /no/such/model.pth does not exist"),
        (["SOLVER.NO_SUCH_KEY", "1"], "SOLVER.NO_SUCH_KEY"),
        (["MODEL.ROI_HEADS.NUM_CLASSES", "3"], "do not fit the config's model"),
    ],
)
def test_config_and_weights_errors_are_one_line(p10, images, tmp_path, capsys, args, message):
    argv = ["--config-file", str(p10.config_file), "--input", str(images), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        predict.main([*argv, *p10.cli_overrides(), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_overrides_end_the_input_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MODEL.FILE").write_text("")  # an existing path stays an input, whatever its name
    inputs = ["a.png", "MODEL.FILE", "IMG_0001.JPG", "b/", "MODEL.WEIGHTS", "m.pth", "SEED", "1"]
    assert predict.split_overrides(inputs, ["X.Y", "2"]) == (
        ["a.png", "MODEL.FILE", "IMG_0001.JPG", "b/"],
        ["MODEL.WEIGHTS", "m.pth", "SEED", "1", "X.Y", "2"],
    )
    assert predict.split_overrides(["a.png", "SEED", "3"], []) == (["a.png"], ["SEED", "3"])


def test_help():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/predict.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for flag in ("--config-file", "--input", "--output", "--coco-json", "--coco-images", "--score-threshold"):
        assert flag in proc.stdout
