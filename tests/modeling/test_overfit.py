"""Each point_sup head, trained from scratch on CPU for a few minutes from P10, learns the real nuclei image.

The training-image mask AP (pycocotools, through Detectron2's COCOEvaluator) of a model trained a
few hundred small steps must be far above that of the same model untrained: evidence that the
whole path (simulated P10 points, loader, mapper, head, point loss, inference) learns masks, not
only that its pieces are individually correct.
"""

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from point_sup.engine import PointSupTrainer
from point_sup.engine.experiment import load_config, train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]
# The heads trained from points; the mask-supervised Mask R-CNN is Detectron2's head and loss, unchanged.
HEADS = {
    "mask_rcnn_P10": "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml",
    "point_rend_P10": "configs/nuclei/point_rend_R_18_FPN_P10.yaml",
    "implicit_point_rend_P10": "configs/nuclei/implicit_point_rend_R_18_FPN_P10.yaml",
}
ITERS = 80


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEADS))
def test_head_learns_nuclei(name, nuclei_datasets, tmp_path):
    cfg = load_config(
        str(ROOT / HEADS[name]),
        [
            "OUTPUT_DIR", str(tmp_path),
            "SOLVER.MAX_ITER", ITERS,
            "SOLVER.STEPS", (int(0.8 * ITERS),),
            "SOLVER.WARMUP_ITERS", 20,
            "SOLVER.BASE_LR", 0.02,
            "INPUT.MIN_SIZE_TRAIN", (192,),
            "INPUT.MIN_SIZE_TEST", 192,
            "SEED", 0,
        ],
    )  # fmt: skip
    train = "nuclei_train"  # evaluated on the training images, with their masks
    torch.manual_seed(0)
    frozen = cfg.clone()
    frozen.DATASETS.TEST = (train,)
    frozen.freeze()
    untrained = PointSupTrainer.test(frozen, build_model(frozen).eval())["segm"]["AP"]
    _, results = train_and_evaluate(cfg, eval_datasets=(train,))
    trained = results[train]["segm"]["AP"]
    print(f"{name}: training-image mask AP untrained {untrained:.2f} -> trained {trained:.2f}")
    assert untrained < 2.0
    assert trained > 15.0, f"{name}: mask AP {trained:.1f} after {ITERS} iterations"
