#!/usr/bin/env python
"""Throughput and memory of the P_N simulator against the per-annotation ``annToMask`` approach.

    python bench/bench_point_simulation.py                      # 100k instances, 2 workers
    python bench/bench_point_simulation.py --num-instances 20000 --workers 2

Builds a synthetic COCO-like instances file (COCO image sizes, about 7 objects per image, COCO's
small/medium/large area mix, star-shaped polygons with 6 to 160 vertices depending on size, 10 %
multi-part objects, 1 % crowd objects as uncompressed RLE), then times, in the same run:

* baseline: what Detectron2's PointSup script does: ``json.load``, for every annotation
  ``COCO.annToMask`` (full-image rasterization) and reading the sampled pixels, ``json.dump``;
* point_sup: what ``tools/prepare_point_annotations.py`` does: with ``--workers`` > 1, the file
  parsed, checked, labelled and serialized in shards by the workers (:class:`ShardedSimulation`);
  with 1, :func:`load_coco_instances` + :func:`simulate_point_annotations`; then the output file
  written.

Both produce the same kind of file (P10 without masks); labels are cross-checked at the sampled
points of point_sup's output. Peak memory of point_sup (proportional set size of the process and
its workers, sampled every 10 ms) is compared with the memory taken by the loaded input. CPU time
(point_sup's main process plus its workers) is printed too: unlike the wall-clock ratio, it hardly
depends on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COCO_SIZES = [(480, 640), (427, 640), (640, 480), (640, 427), (424, 640), (512, 640), (640, 640), (360, 640)]


def star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, k: int) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = radius * rng.uniform(0.55, 1.0, k)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def build_dataset(num_instances: int, seed: int = 0) -> dict:
    """A COCO-like dict with ``num_instances`` annotations (see the module docstring)."""
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    images, anns = [], []
    ann_id = 1
    while ann_id <= num_instances:
        h, w = COCO_SIZES[rng.integers(len(COCO_SIZES))]
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w})
        for _ in range(min(rng.integers(1, 14), num_instances - ann_id + 1)):
            # COCO: ~41 % small (< 32^2), 34 % medium, 25 % large.
            area = float(np.exp(rng.uniform(np.log(30), np.log(32**2)))) if rng.random() < 0.41 else (
                float(np.exp(rng.uniform(np.log(32**2), np.log(96**2)))) if rng.random() < 0.58
                else float(np.exp(rng.uniform(np.log(96**2), np.log(0.6 * h * w))))
            )  # fmt: skip
            radius = np.sqrt(area / np.pi) * 1.3
            cx, cy = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)  # some cross the border
            crowd = rng.random() < 0.01
            if crowd:
                yy, xx = np.mgrid[0:h, 0:w]
                m = ((xx - cx) ** 2 / 2 + (yy - cy) ** 2 < (2 * radius) ** 2).astype(np.uint8)
                if not m.any():
                    m[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))] = 1
                rle = mask_util.encode(np.asfortranarray(m))
                counts = mask_util.decode(rle)  # uncompressed form, as COCO stores crowds
                flat = counts.ravel(order="F")
                change = np.flatnonzero(np.diff(flat)) + 1
                bounds = np.concatenate([[0], change, [flat.size]])
                runs = np.diff(bounds).tolist()
                if flat[0] == 1:
                    runs = [0, *runs]
                segm = {"counts": runs, "size": [h, w]}
                ys, xs = np.nonzero(m)
                bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
            else:
                parts = []
                for _ in range(2 if rng.random() < 0.1 else 1):
                    k = int(np.clip(np.sqrt(area) / 2, 6, 160))
                    pc = (cx + rng.uniform(-radius, radius), cy) if parts else (cx, cy)
                    poly = star_polygon(rng, pc[0], pc[1], radius, k)
                    poly = np.clip(poly, 0, [w, h]).round(2)  # COCO polygons lie in the image
                    parts.append(poly)
                allp = np.concatenate(parts)
                x0, y0 = allp.min(axis=0)
                x1, y1 = allp.max(axis=0)
                bbox = [
                    round(float(x0), 2),
                    round(float(y0), 2),
                    round(float(x1 - x0), 2),
                    round(float(y1 - y0), 2),
                ]
                segm = [p.ravel().tolist() for p in parts]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 81)),
                    "segmentation": segm,
                    "area": round(area, 2),
                    "bbox": bbox,
                    "iscrowd": int(crowd),
                }
            )
            ann_id += 1
    cats = [{"id": i, "name": f"class_{i}", "supercategory": "thing"} for i in range(1, 81)]
    return {
        "info": {"description": "synthetic COCO-like"},
        "images": images,
        "annotations": anns,
        "categories": cats,
    }


_BASELINE = r"""
import gc, json, resource, sys, time
import numpy as np
from pycocotools.coco import COCO

src, dst, num_points = sys.argv[1], sys.argv[2], int(sys.argv[3])
gc.disable()  # the same treatment as point_sup's tool gets, so that the comparison is fair
t0 = time.perf_counter()
c0 = time.process_time()
with open(src) as f:
    data = json.load(f)
coco = COCO()
coco.dataset = data
coco.createIndex()
rng = np.random.default_rng(0)
for ann in data["annotations"]:
    mask = coco.annToMask(ann)
    x, y, w, h = ann["bbox"]
    pts = np.floor(rng.random((num_points, 2)) * [w, h] + [x, y]).astype(int)
    pts = np.clip(pts, 0, [mask.shape[1] - 1, mask.shape[0] - 1])
    ann["point_coords"] = pts.tolist()
    ann["point_labels"] = mask[pts[:, 1], pts[:, 0]].tolist()
    ann.pop("segmentation")
with open(dst, "w") as f:
    json.dump(data, f)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}))
"""


def run_baseline(src: Path, dst: Path, num_points: int) -> tuple[float, float, float]:
    """Detectron2 PointSup's approach (annToMask per annotation) as a user runs such a script: a
    whole ``python`` command. Returns the command's wall seconds, and the script's own wall and CPU
    seconds from reading to writing (start-up and imports excluded)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE, str(src), str(dst), str(num_points)],
        check=True,
        capture_output=True,
        text=True,
    )
    command = time.perf_counter() - t0
    inside = json.loads(out.stdout.strip().splitlines()[-1])
    return command, inside["seconds"], inside["cpu"]


TOOL = Path(__file__).resolve().parents[1] / "tools" / "prepare_point_annotations.py"


def run_tool(src: Path, dst: Path, workers: int, num_points: int) -> float:
    """``tools/prepare_point_annotations.py SRC DST`` as a user runs it; wall seconds of the command."""
    args = [sys.executable, str(TOOL), str(src), str(dst), "--workers", str(workers)]
    t0 = time.perf_counter()
    subprocess.run([*args, "--num-points", str(num_points), "--no-progress"], check=True, capture_output=True)
    return time.perf_counter() - t0


def tool_start_up(repeats: int = 5) -> float:
    """Fastest wall seconds of ``tools/prepare_point_annotations.py --help`` (start-up and imports)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(TOOL), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times)


_MEASURE = r"""
import os, sys, threading, time, json, resource
import numpy as np
src, dst, workers, num_points = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from point_sup_labels.coco_format import load_coco_instances, read_json
from point_sup_labels.point_file import dumps_point_annotations
from point_sup_labels.simulate import simulate_point_annotations
from point_sup_labels.sharded import ShardedSimulation, ShardWorkers
from point_sup_labels.file_io import StagedFiles, atomic_write_bytes

def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

def tree_pss():
    me = os.getpid()
    total = pss(me)
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            total += sum(pss(int(c)) for c in f.read().split())
    except OSError:
        pass
    return total

import gc
gc.disable()  # as tools/prepare_point_annotations.py does
mode = sys.argv[5]
t_start = time.perf_counter()
# Workers are forked before loading, as the tool does; the memory baseline is taken after the fork
# (a fork shares the interpreter's pages, and reading parent and child PSS across it would count
# them twice).
shards = ShardWorkers(workers) if workers > 1 and mode != "load" else None
t_pool = time.perf_counter() - t_start  # counted in the timing; the settling sleep is not
time.sleep(0.2)
base = tree_pss()
if mode == "load":
    data = read_json(src)
    print(json.dumps({"base": base, "loaded": tree_pss()}))
    sys.exit(0)
peak = [0]
stop = False
def sample():
    while not stop:
        peak[0] = max(peak[0], tree_pss())
        time.sleep(0.01)
th = threading.Thread(target=sample, daemon=True)
if mode == "mem":  # sampling /proc costs CPU: timings come from a separate run without it
    th.start()
t0 = time.perf_counter() - t_pool
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
if shards is not None:  # what tools/prepare_point_annotations.py does with --workers > 1
    sim = ShardedSimulation(src, shards)
    t_load = time.perf_counter() - t0
    sim.simulate(num_points=num_points, seed=0, drop_segmentation=True)
    t_sim = time.perf_counter() - t0 - t_load
    with StagedFiles() as staged:
        staged.write_with(dst, lambda tmp, fd: sim.write(0, tmp, fd))
else:
    inst = load_coco_instances(src)
    t_load = time.perf_counter() - t0
    samples, stats = simulate_point_annotations(inst, num_points=num_points, seed=0, drop_segmentation=True)
    t_sim = time.perf_counter() - t0 - t_load
    atomic_write_bytes(dst, dumps_point_annotations(inst, samples[0]))
total = time.perf_counter() - t0
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
if shards is not None:
    shards.close()  # reaped: their CPU time is in RUSAGE_CHILDREN
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_main = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
cpu_workers = kids.ru_utime + kids.ru_stime
stop = True
if mode == "mem":
    th.join()
peak[0] = max(peak[0], tree_pss())
print(json.dumps({"base": base, "peak": peak[0], "load": t_load, "simulate": t_sim, "total": total,
                  "cpu_main": cpu_main, "cpu_workers": cpu_workers}))
"""


def run_point_sup(src: Path, dst: Path, workers: int, num_points: int, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(src), str(dst), str(workers), str(num_points), mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_labels(src: Path, out: Path, max_checks: int = 3000) -> int:
    """Compare point_sup's labels with annToMask at its sampled points; returns the number checked."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = json.loads(src.read_text())
    coco.createIndex()
    result = json.loads(out.read_text())["annotations"]
    step = max(1, len(result) // max_checks)
    for ann in result[::step]:
        mask = coco.annToMask(coco.anns[ann["id"]])
        for (x, y), label in zip(ann["point_coords"], ann["point_labels"], strict=True):
            if mask[y, x] != label:
                raise AssertionError(f"label mismatch at annotation {ann['id']}, point {(x, y)}")
    return len(result[::step])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-instances", type=int, default=100_000)
    parser.add_argument("--num-points", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-subset", type=int, default=0, help="time the baseline on the first "
                        "N annotations only and extrapolate (0: all)")  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "synthetic.json"
        t0 = time.perf_counter()
        data = build_dataset(args.num_instances)
        import orjson

        src.write_bytes(orjson.dumps(data))
        anns = data["annotations"]
        nverts = [
            sum(len(p) // 2 for p in a["segmentation"]) for a in anns if isinstance(a["segmentation"], list)
        ]
        ncrowd = sum(a["iscrowd"] for a in anns)
        print(
            f"synthetic input: {len(anns):,} instances in {len(data['images']):,} images, "
            f"{src.stat().st_size / 2**20:.1f} MiB, mean {np.mean(nverts):.1f} polygon vertices "
            f"(max {max(nverts)}), {ncrowd} crowd RLEs (built in {time.perf_counter() - t0:.1f} s)"
        )
        del data, anns

        ours = run_point_sup(src, tmp / "ours.json", args.workers, args.num_points, mode="time")
        ours["peak"] = run_point_sup(src, tmp / "ours.json", args.workers, args.num_points, mode="mem")[
            "peak"
        ]
        mem = run_point_sup(src, tmp / "unused.json", 1, args.num_points, mode="load")
        checked = check_labels(src, tmp / "ours.json")

        command_ours = run_tool(src, tmp / "tool.json", args.workers, args.num_points)
        start_up = tool_start_up()
        if args.baseline_subset:
            sub = json.loads(src.read_text())
            sub["annotations"] = sub["annotations"][: args.baseline_subset]
            src_sub = tmp / "subset.json"
            src_sub.write_text(json.dumps(sub))
            del sub
            command_base, t_base, cpu_base = run_baseline(src_sub, tmp / "base.json", args.num_points)
            scale = args.num_instances / args.baseline_subset
            command_base, t_base, cpu_base = command_base * scale, t_base * scale, cpu_base * scale
            base_note = f" (extrapolated from {args.baseline_subset:,})"
        else:
            command_base, t_base, cpu_base = run_baseline(src, tmp / "base.json", args.num_points)
            base_note = ""

    n = args.num_instances
    loaded = mem["loaded"] - mem["base"]
    used = ours["peak"] - ours["base"]
    print(f"baseline annToMask per annotation: {t_base:.2f} s{base_note}, {n / t_base:,.0f} instances/s")
    print(
        f"point_sup, {args.workers} workers: {ours['total']:.2f} s (load+validate {ours['load']:.2f} s, "
        f"simulate {ours['simulate']:.2f} s, rest = output), {n / ours['total']:,.0f} instances/s"
    )
    print(
        f"speed-up in process (reading to writing): {t_base / ours['total']:.1f}x "
        f"(labels checked vs annToMask on {checked:,} annotations)"
    )
    print(
        f"whole commands as a user runs them: baseline script {command_base:.2f} s{base_note}, "
        f"tools/prepare_point_annotations.py --workers {args.workers} {command_ours:.2f} s: "
        f"{command_base / command_ours:.1f}x; the tool's start-up (--help) {start_up:.2f} s"
    )
    cpu_ours = ours["cpu_main"] + ours["cpu_workers"]
    print(
        f"CPU time: baseline {cpu_base:.2f} s; point_sup {cpu_ours:.2f} s (main process "
        f"{ours['cpu_main']:.2f} s, workers {ours['cpu_workers']:.2f} s): {cpu_base / cpu_ours:.1f}x less "
        "(other processes competing for the cores change CPU times little, wall-clock ratios much)"
    )
    print(
        f"memory: loaded input {loaded / 2**20:.0f} MiB; point_sup peak {used / 2**20:.0f} MiB "
        f"({used / loaded:.2f}x the loaded input; PSS of process + workers, above the interpreter's "
        f"{ours['base'] / 2**20:.0f} MiB after imports)"
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
