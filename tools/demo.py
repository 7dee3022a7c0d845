#!/usr/bin/env python
"""point_sup's main job, offline on real data: masks vs 10 points per object, end to end.

    python tools/demo.py [--output output/demo] [--iters 200] [--seed 0]      (make demo runs this)

1. builds a small real dataset: the 2018 Data Science Bowl nuclei image shipped in the stardist
   wheel, split into a training region and a held-out validation region (point_sup.data.nuclei);
2. simulates P10 annotations from the training masks with point_sup's simulator;
3. trains the same Mask R-CNN (ResNet-18-FPN with GroupNorm, from scratch, CPU) twice: with full
   masks (M) and with P10 points only (the point loss of PointSupMaskRCNNConvUpsampleHead);
4. evaluates mask AP on the held-out region (COCO metric: faster-coco-eval or pycocotools), saves a
   picture of the points and the predicted masks, and prints a table beside the paper's COCO numbers
   (Table 1a).

The console shows one line per stage, a progress bar per training and the table; Detectron2's,
point_sup's and the libraries' messages and warnings go to <output>/log.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

# Console: stage lines, progress bars and the table only; everything else goes to the log file. Python
# warnings raised while Detectron2 and torch import below are held here until that file is open.
_IMPORT_WARNINGS = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
if __name__ == "__main__":
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(_IMPORT_WARNINGS)
    logging.getLogger("py.warnings").propagate = False

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.engine import DefaultPredictor, HookBase  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from point_sup.data import register_nuclei  # noqa: E402
from point_sup.engine.experiment import load_config, train_and_evaluate  # noqa: E402
from point_sup.utils.visualizer import draw_points, draw_predictions  # noqa: E402
from point_sup_labels.file_io import atomic_open  # noqa: E402
from point_sup_labels.time_model import annotation_time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = (
    ("M", "configs/nuclei/mask_rcnn_R_18_FPN_M.yaml"),
    ("P10", "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml"),
)
SUPERVISION = {"M": "masks (M)", "P10": "10 points per object (P10)"}
PAPER_COCO = {"M": 37.2, "P10": 36.1}  # Table 1a, Mask R-CNN R50-FPN 3x, COCO val2017 mask AP
PICTURE_SCALE = 3  # the 128x256 validation tile, enlarged (nearest-neighbour) before drawing
PANEL_GAP = 4  # white columns between the two panels, in picture pixels
# Loggers whose records go to the log file only (not propagated to the root logger): "py.warnings"
# receives Python warnings (logging.captureWarnings), "pycocotools" what COCO evaluation prints.
LOGGERS = ("detectron2", "point_sup", "fvcore", "iopath", "torch", "py.warnings", "pycocotools")

logger = logging.getLogger("point_sup.demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="output/demo", help="directory for models, picture and log")
    parser.add_argument("--iters", type=int, default=200, help="training iterations per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point simulation and of training")
    return parser.parse_args(argv)


class _ConsoleErrorFormatter(logging.Formatter):
    """One line per logged error on the console; its traceback is in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        brief = logging.makeLogRecord(record.__dict__)
        brief.exc_info = brief.exc_text = brief.stack_info = None
        return super().format(brief)


@contextlib.contextmanager
def log_to_file(log_file: Path):
    """Sends the named :data:`LOGGERS` (and the root logger) to ``log_file``, not to the console.

    Logged errors also show as one line on stderr. Python warnings are captured into the log. The
    loggers' previous handlers, levels and propagation are restored on exit.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    to_file.setFormatter(
        logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    )
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setLevel(logging.ERROR)
    to_console.setFormatter(_ConsoleErrorFormatter(f"%(levelname)s %(name)s: %(message)s (see {log_file})"))
    saved = {}
    for name in (*LOGGERS, None):
        log = logging.getLogger(name)
        saved[name] = (log.handlers[:], log.level, log.propagate)
        log.handlers = [to_file, to_console]
        if name is not None:
            log.propagate = False
            if name != "torch":  # torch keeps its own level (warnings and up)
                log.setLevel(logging.DEBUG)  # as Detectron2's setup_logger does
    logging.captureWarnings(True)
    _IMPORT_WARNINGS.setTarget(to_file)
    _IMPORT_WARNINGS.flush()
    _IMPORT_WARNINGS.setTarget(None)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for name, (handlers, level, propagate) in saved.items():
            log = logging.getLogger(name)
            log.handlers, log.propagate = handlers, propagate
            log.setLevel(level)
        to_file.close()


class _LogWriter(io.TextIOBase):
    """A text stream that logs each line written to it (for libraries that print, e.g. pycocotools)."""

    def __init__(self, log: logging.Logger):
        self._log, self._pending = log, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            if line.strip():
                self._log.info(line)
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self._log.info(self._pending)
        self._pending = ""


@contextlib.contextmanager
def prints_to_log():
    """What libraries ``print`` inside the block goes to the "pycocotools" logger (hence the log file)."""
    writer = _LogWriter(logging.getLogger("pycocotools"))
    try:
        with contextlib.redirect_stdout(writer):
            yield
    finally:
        writer.flush()


class TrainingProgress(HookBase):
    """A tqdm bar over the training iterations, on stderr, with the latest total loss."""

    def __init__(self, desc: str):
        self._desc, self._bar = desc, None

    def before_train(self):
        total = self.trainer.max_iter - self.trainer.start_iter
        self._bar = tqdm(total=total, desc=self._desc, unit="it", file=sys.stderr, dynamic_ncols=True)

    def after_step(self):
        latest = self.trainer.storage.latest().get("total_loss")
        if latest is not None:
            self._bar.set_postfix_str(f"loss {latest[0]:.3f}", refresh=False)
        self._bar.update(1)
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._close()  # before the evaluation that follows in another hook's after_train

    def after_train(self):
        self._close()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def say(message: str) -> None:
    """A line for the console (stdout), also in the log."""
    print(message, flush=True)
    logger.info(message)


def save_picture(path: Path, predictor: DefaultPredictor) -> None:
    """Validation tile: its P10 points (object red, background blue) | the P10 model's predicted masks."""
    record = DatasetCatalog.get("nuclei_val_p10")[0]
    meta = MetadataCatalog.get("nuclei_val_p10")
    image = utils.read_image(record["file_name"], format="RGB")
    instances = predictor(np.ascontiguousarray(image[:, :, ::-1]))["instances"]
    left = draw_points(image, record["annotations"], meta, scale=PICTURE_SCALE)
    right = draw_predictions(image, instances, meta, score_threshold=0.5, scale=PICTURE_SCALE)
    gap = np.full((left.shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(f, format="PNG")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output)
    log_file = out / "log.txt"
    with log_to_file(log_file):
        try:
            return run(args, out, log_file)
        except Exception:
            logger.exception("the demo failed")  # the traceback: in the log, and on stderr as it propagates
            raise


def run(args: argparse.Namespace, out: Path, log_file: Path) -> dict:
    say(f"point_sup demo: Detectron2's and point_sup's messages go to {log_file}")
    torch.manual_seed(args.seed)
    t0 = time.time()
    say("[1/4] building the nuclei dataset and simulating P10 annotations")
    with prints_to_log():
        # Under $DETECTRON2_DATASETS/nuclei, so tools/train_net.py finds the nuclei sets afterwards too.
        register_nuclei(Path(os.getenv("DETECTRON2_DATASETS", "datasets")) / "nuclei", seed=args.seed)
    num_train = sum(len(r["annotations"]) for r in DatasetCatalog.get("nuclei_train"))

    results, predictors = {}, {}
    for step, (label, config) in enumerate(RUNS, start=2):
        say(
            f"[{step}/4] training Mask R-CNN with {SUPERVISION[label]}: {args.iters} iterations on CPU, "
            "then evaluation on the held-out region"
        )
        cfg = load_config(
            str(ROOT / config),
            [
                "OUTPUT_DIR", str(out / label),
                "SOLVER.MAX_ITER", args.iters,
                "SOLVER.STEPS", (int(0.8 * args.iters),),
                "SEED", args.seed,
            ],
        )  # fmt: skip
        with prints_to_log():
            progress = TrainingProgress(f"{label} training")
            model, res = train_and_evaluate(cfg, eval_datasets=("nuclei_val",), hooks=[progress])
            results[label] = res["nuclei_val"]["segm"]
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.WEIGHTS = str(out / label / "model_final.pth")
            predictors[label] = DefaultPredictor(cfg)
            del model

    say("[4/4] drawing the P10 points and the P10 model's predictions")
    picture = out / "points_and_predictions.png"
    with prints_to_log():
        save_picture(picture, predictors["P10"])

    times = annotation_time(num_train, 10)
    seconds = {"M": times.polygon_mask_seconds, "P10": times.point_annotation_seconds}
    lines = [
        "",
        f"point_sup demo: Mask R-CNN R18-FPN from scratch on DSB2018 nuclei ({num_train} training objects), "
        f"{args.iters} iterations, seed {args.seed}",
        f"{'supervision':<12}{'annotation time':>18}{'mask AP':>10}{'AP50':>8}{'AP / AP(M)':>12}"
        f"{'paper (COCO)':>16}",
    ]
    for label, _ in RUNS:
        ap, ap50 = results[label]["AP"], results[label]["AP50"]
        ratio = ap / results["M"]["AP"] if results["M"]["AP"] > 0 else float("nan")
        paper = PAPER_COCO[label]
        lines.append(
            f"{label:<12}{seconds[label] / 60:>14.1f} min{ap:>10.1f}{ap50:>8.1f}{ratio:>11.0%}"
            f"{paper:>10.1f} ({paper / PAPER_COCO['M']:.0%})"
        )
    lines += [
        f"P10 is {times.speedup:.1f}x faster to annotate than polygon masks (paper's time model).",
        f"picture: {picture}    total time: {(time.time() - t0) / 60:.1f} min",
        f"log: {log_file}",
    ]
    print("\n".join(lines), flush=True)
    logger.info("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
