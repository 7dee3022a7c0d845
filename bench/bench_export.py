#!/usr/bin/env python
"""Inference speed and peak memory on the CPU: eager PyTorch vs the exported TorchScript file vs the
exported ONNX file run by ONNX Runtime, every head, in one run.

    python bench/bench_export.py                          # 6 heads, shorter side 256, 1 thread
    python bench/bench_export.py --heads mask_rcnn condinst --min-size 512 --max-size 853 --images 12

Every head is the whole R50-FPN model of a shipped COCO config (80 classes) with random weights from
one seed (no pretrained weights exist here), its frozen BatchNorm layers given the statistics of one
pass over the images (bench/bench_inference.py's ``calibrate_frozen_batchnorm``: left as the
identity, the random backbone's activations explode and the detections are degenerate). The images
are the real nuclei tiles (``--image-dir``, default datasets/nuclei/images: 192 x 256 and 128 x 256,
sizes taking turns), resized as Detectron2's ``DefaultPredictor`` resizes (``INPUT.MIN_SIZE_TEST
--min-size``, ``INPUT.MAX_SIZE_TEST --max-size``): two input sizes and different numbers of
detections per image, so the exported graphs must be dynamic in both. The same thresholds for every
head and runtime (the exported files carry them): ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` and
``MODEL.FCOS.INFERENCE_TH_TEST`` ``--score-thresh`` (0.05, Detectron2's default), the configs' NMS,
``TEST.DETECTIONS_PER_IMAGE 100``: up to 100 detections per image, fewer on some (the mean is
printed). A threshold of 0 would give every image 100, but sends all 80,000 class-box pairs of the
ROI heads to NMS, which a trace runs as one NMS over all classes (torchvision's choice under
tracing: seconds per image) instead of one per class.

Per head, one process builds the model, saves it as a checkpoint and exports it with
:func:`point_sup.export.export_model` (tracing, TorchScript and ONNX opset 17; the export's own check
against eager on the first image included in its time). Then each runtime runs in its own fresh
process, so that its peak memory (``ru_maxrss``: the process's resident-set high-water mark, imports
and weights included) is its own:

* ``eager``: :class:`point_sup.Predictor` on the checkpoint (the baseline, measured in this run);
* ``torchscript``: :class:`point_sup.export.ExportedModel` on the ``.ts`` file (``torch.jit.load``);
* ``onnx``: :class:`point_sup.export.ExportedModel` on the ``.onnx`` file (ONNX Runtime's CPU provider).

Each process loads its model (``load s``: building the model and loading the checkpoint, or loading
the file), runs ``--warmup`` images, then ``--images`` timed images (cycling through the tiles), one
image per call, from the BGR array to the ``Instances`` at the image's size (resize, network, mask
pasting). Reported: images/s over the timed calls, peak RSS, both as ratios to eager of the same head,
detections per image, and whether the outputs agree with eager: the same number of detections on
every image, each eager box matched to the nearest exported box of its class (in any order: ONNX
Runtime may order near-equal scores differently) within :data:`BOX_TOLERANCE`, and the fraction of
mask pixels that differ. A head or runtime that fails is one line with its error, and the exit code
is then 1.

Threads: ``--threads`` (default 1) for torch and ONNX Runtime alike. On the shared 2-core machine,
two threads per process stall at every parallel operation whenever another process holds a core:
PointRend's eager mask branch measured 2.5 s per image with one thread and 7-13 s with two while
another job ran. ``--threads 0`` keeps each library's default (one thread per physical core).

Last, unless ``--no-predict``: ``tools/predict.py`` over the image folder, timed as whole commands
(start-up, loading, prediction, pictures and a COCO results file) with the checkpoint vs the ``.ts``
vs the ``.onnx`` of ``--predict-head``, which is how a user meets the exported files. These run as a
user runs them, with the libraries' default threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "configs" / "COCO"
PREDICT = ROOT / "tools" / "predict.py"
# key -> (name in the tables, config)
HEADS: dict[str, tuple[str, Path]] = {
    "mask_rcnn": ("Mask R-CNN P10", COCO / "mask_rcnn_R_50_FPN_3x_P10.yaml"),
    "point_rend": ("PointRend P10", COCO / "point_rend_R_50_FPN_3x_P10_point_aug.yaml"),
    "implicit": ("Implicit PointRend", COCO / "implicit_point_rend_R_50_FPN_3x_P10_point_aug.yaml"),
    "implicit_small": (
        "Implicit PR small",
        COCO / "implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml",
    ),
    "condinst": ("CondInst P10", COCO / "condinst_R_50_FPN_3x_P10_point_aug.yaml"),
    "boxinst": ("BoxInst B", COCO / "boxinst_R_50_FPN_3x_B.yaml"),
}
RUNTIMES = ("eager", "torchscript", "onnx")
FILES = {"eager": "model.pth", "torchscript": "model.ts", "onnx": "model.onnx"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
BOX_TOLERANCE = 1e-2  # pixels: ONNX Runtime's float rounding moves boxes by about 2e-3


def overrides(args: argparse.Namespace) -> list:
    """The config overrides of every head and runtime (the exported files carry them inside)."""
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", args.min_size,
        "INPUT.MAX_SIZE_TEST", args.max_size,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", args.score_thresh,
        "MODEL.FCOS.INFERENCE_TH_TEST", args.score_thresh,
        "TEST.DETECTIONS_PER_IMAGE", args.detections,
    ]  # fmt: skip


def head_config(head: str, args: argparse.Namespace):
    from point_sup.engine.experiment import load_config

    cfg = load_config(str(HEADS[head][1]), overrides(args))
    cfg.freeze()
    return cfg


def image_paths(image_dir: Path) -> list[Path]:
    return sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def read_images(image_dir: Path) -> list:
    """The BGR images of ``image_dir``, their sizes taking turns (nuclei: 192 x 256, 128 x 256, ...),
    so that the first calls, the warm-up, see every input size."""
    import cv2

    groups: dict[tuple, list] = {}
    for path in image_paths(image_dir):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        groups.setdefault(image.shape, []).append(image)
    queues = list(groups.values())
    images = []
    while any(queues):
        images += [q.pop(0) for q in queues if q]
    return images


def set_threads(threads: int, onnx: bool = False) -> None:
    """``threads`` threads for torch and, with ``onnx``, for every ONNX Runtime session made from
    now on (0: each library's default, one per physical core)."""
    import torch

    if not threads:
        return
    torch.set_num_threads(threads)
    if not onnx:
        return
    import onnxruntime

    make_options = onnxruntime.SessionOptions

    def options():
        made = make_options()
        made.intra_op_num_threads = threads
        made.inter_op_num_threads = threads
        return made

    # ExportedModel makes its session from onnxruntime.SessionOptions(): the same, with the threads set.
    onnxruntime.SessionOptions = options


def quiet() -> None:
    import warnings

    for name in ("detectron2", "fvcore", "point_sup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------------------------
# Workers (each in its own process)


def prepare_head(head: str, args: argparse.Namespace) -> dict:
    """Build ``head``'s seeded random model, calibrate its frozen BatchNorm on the images, save it as
    ``work/head/model.pth`` and export ``model.ts`` and ``model.onnx``; seconds and MiB of each."""
    import torch

    import point_sup  # noqa: F401  (applies point_sup.compat before detectron2 is used)

    # isort: split
    from bench_inference import calibrate_frozen_batchnorm
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import transforms as T
    from detectron2.modeling import build_model

    from point_sup.export import ExportError, ExportOptions, export_model

    quiet()
    set_threads(args.threads, onnx=True)
    cfg = head_config(head, args)
    out = Path(args.work) / head
    out.mkdir(parents=True, exist_ok=True)
    images = read_images(Path(args.image_dir))
    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    resize = T.ResizeShortestEdge([args.min_size] * 2, args.max_size)
    inputs = [
        {"image": torch.as_tensor(resize.get_transform(im).apply_image(im).transpose(2, 0, 1).copy())}
        for im in images
    ]
    calibrate_frozen_batchnorm(model, inputs)
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    result: dict = {"params": sum(p.numel() for p in model.parameters())}
    for runtime in RUNTIMES[1:]:
        path = out / FILES[runtime]
        start = time.perf_counter()
        try:
            export_model(model, cfg, images[0], ExportOptions(runtime, "tracing"), path, HEADS[head][1].name)
        except ExportError as e:
            result[runtime] = {"error": str(e)}
            continue
        result[runtime] = {"export_s": time.perf_counter() - start, "mib": path.stat().st_size / 2**20}
    return result


def run_runtime(head: str, runtime: str, args: argparse.Namespace) -> dict:
    """Load ``head``'s model in ``runtime``, run ``args.warmup`` then ``args.images`` timed images;
    the measurements, and every image's outputs in ``work/head/runtime.npz``."""
    import numpy as np

    import point_sup
    from point_sup.export import ExportedModel

    quiet()
    set_threads(args.threads, onnx=runtime == "onnx")
    path = Path(args.work) / head / FILES[runtime]
    cfg = head_config(head, args)
    start = time.perf_counter()
    model = point_sup.Predictor(cfg, path) if runtime == "eager" else ExportedModel(path)
    load_s = time.perf_counter() - start
    images = read_images(Path(args.image_dir))
    times, outputs = [], {}
    for i in range(args.warmup + args.images):
        k = i % len(images)
        t0 = time.perf_counter()
        instances = model(images[k])
        elapsed = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(elapsed)
        if k not in outputs:
            outputs[k] = instances
    arrays = {}
    for k, inst in outputs.items():
        arrays[f"boxes{k}"] = inst.pred_boxes.tensor.numpy()
        arrays[f"scores{k}"] = inst.scores.numpy()
        arrays[f"classes{k}"] = inst.pred_classes.numpy()
        arrays[f"masks{k}"] = inst.pred_masks.numpy().astype(bool)
    np.savez_compressed(Path(args.work) / head / f"{runtime}.npz", **arrays)
    return {
        "load_s": load_s,
        "images_per_s": len(times) / sum(times),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "detections": [len(outputs[k]) for k in sorted(outputs)],
    }


# ----------------------------------------------------------------------------------------------
# The driver


def run_worker(what: str, argv: list[str]) -> dict:
    """``this script --worker WHAT *argv`` in a fresh process: the dict of its ``RESULT`` line."""
    cmd = [sys.executable, __file__, "--worker", what, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": error_line(proc.stderr) or f"exit code {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT ") :])


def error_line(stderr: str) -> str:
    """The exception's own line of a worker's traceback (its last line naming an error), shortened."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|Fail)\b.*:", ln)]
    line = (errors or lines or [""])[-1]
    return line.replace("onnxruntime.capi.onnxruntime_pybind11_state.", "")[:400]


def agreement(work: Path, head: str, runtime: str, num_images: int) -> dict:
    """How ``runtime``'s outputs compare with eager's: per image, the same number of detections;
    each eager box matched to the nearest exported box of its class (any order: near-equal scores
    may sort differently); the largest matched box distance and the fraction of differing mask
    pixels over the matched pairs."""
    import numpy as np

    a = np.load(work / head / "eager.npz")
    b = np.load(work / head / f"{runtime}.npz")
    counts, box, wrong, pixels = [], 0.0, 0, 0
    for k in range(num_images):
        if f"boxes{k}" not in a or f"boxes{k}" not in b:
            continue
        na, nb = len(a[f"boxes{k}"]), len(b[f"boxes{k}"])
        counts.append((na, nb))
        if na != nb or na == 0:
            continue
        ba, bb = a[f"boxes{k}"].astype(np.float64), b[f"boxes{k}"].astype(np.float64)
        distance = np.abs(ba[:, None, :] - bb[None, :, :]).max(-1)
        distance[a[f"classes{k}"][:, None] != b[f"classes{k}"][None, :]] = np.inf
        match = distance.argmin(1)
        box = max(box, float(distance[np.arange(na), match].max()))
        ma, mb = a[f"masks{k}"], b[f"masks{k}"][match]
        wrong += int((ma != mb).sum())
        pixels += ma.size
    same_counts = all(na == nb for na, nb in counts)
    return {
        "same_counts": same_counts,
        "counts": counts,
        "box": box,
        "mask_pct": 100 * wrong / max(pixels, 1),
        "ok": same_counts and box <= BOX_TOLERANCE,
    }


def time_predict(args: argparse.Namespace, work: Path) -> list[tuple[str, float, int | str]]:
    """``tools/predict.py`` over the image folder with the checkpoint, the .ts and the .onnx of
    ``args.predict_head``: (weights, wall seconds, detections in its COCO results or an error)."""
    head = args.predict_head
    rows = []
    for runtime in RUNTIMES:
        weights = work / head / FILES[runtime]
        if not weights.exists():
            rows.append((weights.name, 0.0, "no file (export failed)"))
            continue
        out = work / "predict" / runtime
        cmd = [
            sys.executable, str(PREDICT),
            "--config-file", str(HEADS[head][1]),
            "--input", str(args.image_dir),
            "--output", str(out),
            "--coco-json", str(out / "results.json"),
            *[str(v) for v in overrides(args)[2:]],
            "MODEL.WEIGHTS", str(weights),
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
            rows.append((weights.name, wall, f"failed: {lines[-1][:300]}"))
            continue
        rows.append((weights.name, wall, len(json.loads((out / "results.json").read_text()))))
    return rows


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--min-size", type=int, default=256, help="INPUT.MIN_SIZE_TEST (default 256)")
    parser.add_argument("--max-size", type=int, default=427, help="INPUT.MAX_SIZE_TEST (default 427)")
    parser.add_argument("--images", type=int, default=4, help="timed images per runtime (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed images first (default 2)")
    parser.add_argument("--detections", type=int, default=100, help="TEST.DETECTIONS_PER_IMAGE")
    parser.add_argument(
        "--score-thresh", type=float, default=0.05, help="score threshold of every head (default 0.05)"
    )
    parser.add_argument("--image-dir", default=str(ROOT / "datasets" / "nuclei" / "images"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of torch and of ONNX Runtime (default 1; 0: each library's default)",
    )
    parser.add_argument("--predict-head", default="mask_rcnn", choices=list(HEADS))
    parser.add_argument("--no-predict", action="store_true", help="skip timing tools/predict.py")
    parser.add_argument("--work", help="folder for the checkpoints and exported files (default: temporary)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        kind, head, *runtime = args.worker.split(":")
        result = prepare_head(head, args) if kind == "prepare" else run_runtime(head, runtime[0], args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="point_sup_bench_export_"))
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.image_dir).is_dir() or not image_paths(Path(args.image_dir)):
        from point_sup.data.nuclei import build_nuclei_coco

        log(f"no images in {args.image_dir}: building the nuclei tiles under {work / 'nuclei'}")
        build_nuclei_coco(work / "nuclei")
        args.image_dir = str(work / "nuclei" / "images")
    num_images = len(image_paths(Path(args.image_dir)))
    argv = [
        "--min-size", str(args.min_size), "--max-size", str(args.max_size),
        "--images", str(args.images), "--warmup", str(args.warmup),
        "--detections", str(args.detections), "--score-thresh", str(args.score_thresh),
        "--image-dir", str(args.image_dir), "--seed", str(args.seed), "--work", str(work),
        "--threads", str(args.threads),
    ]  # fmt: skip
    heads = list(dict.fromkeys(args.heads))
    steps = len(heads) * (1 + len(RUNTIMES))
    step = 0
    prepared: dict[str, dict] = {}
    results: dict[str, dict[str, dict]] = {}
    try:
        for head in heads:
            step += 1
            t0 = time.perf_counter()
            prepared[head] = run_worker(f"prepare:{head}", argv)
            log(f"({step}/{steps}) {head}: built and exported ({time.perf_counter() - t0:.0f} s)")
            if "error" in prepared[head]:
                log(prepared[head]["error"])
                step += len(RUNTIMES)
                continue
            results[head] = {}
            for runtime in RUNTIMES:
                step += 1
                if "error" in prepared[head].get(runtime, {}):
                    results[head][runtime] = {"error": "export failed: " + prepared[head][runtime]["error"]}
                    log(f"({step}/{steps}) {head} {runtime}: {results[head][runtime]['error']}")
                    continue
                r = run_worker(f"run:{head}:{runtime}", argv)
                results[head][runtime] = r
                if "error" in r:
                    log(f"({step}/{steps}) {head} {runtime}: {r['error']}")
                else:
                    log(
                        f"({step}/{steps}) {head} {runtime}: {r['images_per_s']:.3f} images/s, "
                        f"peak {r['peak_mib']:.0f} MiB, load {r['load_s']:.1f} s"
                    )
        predict_rows = None
        if not args.no_predict and args.predict_head in results:
            log(f"timing tools/predict.py with {args.predict_head}'s checkpoint, .ts and .onnx")
            predict_rows = time_predict(args, work)
        problems = print_report(args, heads, prepared, results, work, num_images, predict_rows)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench_export.py: {time.perf_counter() - start:.0f} s in all")
    if problems:
        sys.exit(1)


def print_report(args, heads, prepared, results, work, num_images, predict_rows) -> list[str]:
    """Print the tables; the (head, runtime)s that failed or disagree with eager."""
    threads = f"{args.threads} thread(s)" if args.threads else "each library's default threads"
    print(
        f"\nexport, CPU, {num_images} nuclei tiles ({args.image_dir}) at shorter side {args.min_size} "
        f"(max {args.max_size}), at most {args.detections} detections per image (score threshold "
        f"{args.score_thresh}); {args.images} timed images per runtime after {args.warmup} warm-up, "
        f"one image per call, each runtime in its own process, {threads}"
    )
    print("(x eager: over eager's figure of the same head in this run; images/s above 1 is faster)")
    print(
        f"{'head':<20}{'runtime':<13}{'load s':>8}{'images/s':>10}{'x eager':>9}{'peak MiB':>10}"
        f"{'x eager':>9}{'dets/img':>10}  same outputs as eager"
    )
    problems = []
    for head in heads:
        name = HEADS[head][0]
        if head not in results:
            print(f"{name:<20}{prepared[head]['error'][:200]}")
            continue
        eager = results[head].get("eager", {})
        for runtime in RUNTIMES:
            r = results[head][runtime]
            label = name if runtime == "eager" else ""
            if "error" in r:
                print(f"{label:<20}{runtime:<13}{r['error'][:300]}")
                problems.append(f"{head} {runtime}")
                continue
            speed = memory = "-"
            if "images_per_s" in eager:
                speed = f"{r['images_per_s'] / eager['images_per_s']:.2f}"
                memory = f"{r['peak_mib'] / eager['peak_mib']:.2f}"
            dets = sum(r["detections"]) / len(r["detections"])
            same = "(baseline)"
            if runtime != "eager" and "images_per_s" in eager:
                a = agreement(work, head, runtime, num_images)
                same = (
                    f"{'yes' if a['ok'] else 'NO'}: "
                    f"{'same counts' if a['same_counts'] else 'counts ' + str(a['counts'])}, "
                    f"box {a['box']:.1g} px, mask pixels {a['mask_pct']:.3f} %"
                )
                if not a["ok"]:
                    problems.append(f"{head} {runtime}")
            print(
                f"{label:<20}{runtime:<13}{r['load_s']:>8.1f}{r['images_per_s']:>10.3f}{speed:>9}"
                f"{r['peak_mib']:>10.0f}{memory:>9}{dets:>10.1f}  {same}"
            )
    print("\nexport (point_sup.export.export_model, tracing; includes its check against eager):")
    print(f"{'head':<20}{'params':>13}{'TorchScript s':>15}{'MiB':>7}{'ONNX s':>9}{'MiB':>7}")
    for head in heads:
        p = prepared[head]
        if "error" in p:
            continue
        cells = ""
        for runtime, width in (("torchscript", 15), ("onnx", 9)):
            if "error" in p[runtime]:
                cells += f"{'failed':>{width}}{'-':>7}"
            else:
                cells += f"{p[runtime]['export_s']:>{width}.1f}{p[runtime]['mib']:>7.0f}"
        print(f"{HEADS[head][0]:<20}{p['params']:>13,}{cells}")
    if predict_rows is not None:
        print(
            f"\ntools/predict.py over the {num_images} images of {args.image_dir}, "
            f"{HEADS[args.predict_head][0]}, whole command (start-up, loading, prediction, pictures, "
            "COCO results):"
        )
        print(f"{'MODEL.WEIGHTS':<15}{'wall s':>8}{'x checkpoint':>14}  detections")
        base = predict_rows[0][1] if isinstance(predict_rows[0][2], int) else None
        for weights, wall, dets in predict_rows:
            ratio = f"{wall / base:.2f}" if base and isinstance(dets, int) else "-"
            print(f"{weights:<15}{wall:>8.1f}{ratio:>14}  {dets}")
            if not isinstance(dets, int) or dets != predict_rows[0][2]:
                problems.append(f"predict.py {weights}")
    if problems:
        print(f"\ndisagreeing or failed: {', '.join(problems)}")
    return problems


if __name__ == "__main__":
    main()
