"""A miniature nuclei P10 Mask R-CNN that predicts masks: trained once per test process (about 20 s).

The nuclei P10 config shrunk by conftest's TINY_OVERRIDES (128-px images, narrow heads), trained
80 iterations from P10 points: enough that it finds nuclei with scores above 0.5 on the validation
tiles (its masks are coarse), so the prediction tests see real detections, not an empty output.
Needs the ``nuclei_datasets`` fixture (``nuclei_train_p10`` registered).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from detectron2.config import CfgNode

from point_sup.engine.experiment import load_config, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
P10_CONFIG = ROOT / "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml"
ITERS = 80


@dataclass(frozen=True)
class TrainedModel:
    """``config_file`` + ``overrides`` build the model whose trained weights are in ``weights``."""

    config_file: Path
    overrides: tuple
    weights: Path

    def cfg(self) -> CfgNode:
        """The full config, ``MODEL.WEIGHTS`` = the trained weights."""
        return load_config(str(self.config_file), [*self.overrides, "MODEL.WEIGHTS", str(self.weights)])

    def cli_overrides(self) -> list[str]:
        """The trailing ``KEY VALUE`` arguments of a tool, ``MODEL.WEIGHTS`` included."""
        return [str(v) for v in self.overrides] + ["MODEL.WEIGHTS", str(self.weights)]


_trained: dict[str, TrainedModel] = {}


def trained_p10_model(out_dir: Path, tiny_overrides: list) -> TrainedModel:
    """The trained miniature (trained into ``out_dir`` on the first call of the process)."""
    if "p10" not in _trained:
        train = [
            "OUTPUT_DIR", str(out_dir),
            "SOLVER.MAX_ITER", ITERS,
            "SOLVER.BASE_LR", 0.02,
            "SOLVER.STEPS", (),
            "SEED", 0,
        ]  # fmt: skip
        cfg = load_config(str(P10_CONFIG), [*tiny_overrides, *train])
        torch.manual_seed(0)
        # One thread: measured on the 2-core machines, 14 s with 2 threads and 20 s with one when
        # nothing else runs, but 53 s against 22 s while other processes compete for the cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_and_evaluate(cfg, eval_datasets=())
        finally:
            torch.set_num_threads(threads)
        _trained["p10"] = TrainedModel(P10_CONFIG, tuple(tiny_overrides), Path(out_dir) / "model_final.pth")
    return _trained["p10"]
