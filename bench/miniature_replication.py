#!/usr/bin/env python
"""A miniature replication of the paper on real data, with the spread across seeds.

    python bench/miniature_replication.py --seeds 0 1 2 --iters 200                       # main table
    python bench/miniature_replication.py --study points noise --seeds 0 1 2 --iters 200  # ablations

For each seed, on the DSB2018 nuclei image (train region / held-out validation region, see
point_sup.data.nuclei), trains from scratch on CPU and reports mask AP on the held-out region.
Studies (``--study``, any combination; each row is trained once per seed):

``main``
    Mask R-CNN with masks (M) and with P10 (paper Table 1a: 37.2 and 36.1 AP on COCO), PointRend P10
    and Implicit PointRend P10 with point-based augmentation (Table 5: 35.7, 36.9), and Implicit
    PointRend with ``MODEL.IMPLICIT_POINTREND.PARAMS_INIT: shared`` (ours).
``points``
    Figure 3: Mask R-CNN trained from P_N, N in {1, 2, 3, 5, 10, 20, 50}, next to M; also draws the
    figure's curve (mask AP against N, mean and standard deviation over the seeds, with the M line)
    as ``points.png`` in the output directory.
``noise``
    §3.3.1: P10 with the labels of 5 % of all points flipped, chosen at random or closest to the
    object boundary (paper: 35.9 and 35.7 AP against 36.1 clean).
``normalization``
    ``MODEL.POINT_LOSS.NORMALIZATION``: the P10 models with point_sup's ``valid_points`` mean next to
    the default (Detectron2's ``all_points``).
``condinst``
    Table 3b and Figure 3: CondInst from masks and from P10 + point aug. (37.5, 35.7), BoxInst from
    the boxes only (31.6), each against CondInst M; and CondInst P10 with
    ``MODEL.CONDINST.POINT_LOGITS: bilinear`` (ours: points read in the upsampled mask).
``mixed``
    Issue 15, one dataset with per-object supervision (``MODEL.MIXED_SUP``), next to M and P10:
    10 % of the nuclei with their mask and the rest P10 (``nuclei_train_p10_m10``), and P10 with half
    of the nuclei box only (``nuclei_train_p10_b50``); the objects are selected per seed by the
    simulator's rule (``tools/prepare_point_annotations.py --keep-masks-fraction/--box-only-fraction``).
``small_implicit``
    Issue 16 (ours): the small Implicit PointRend (``MODEL.IMPLICIT_POINTREND.PARAMS_RANK: 32``,
    ``implicit_point_rend_R_18_FPN_P10_small.yaml``) next to the paper-faithful head, each with the
    reference and the shared initialisation.
``mask_labels``
    ``MODEL.POINT_LOSS.MASK_POINT_LABELS``: PointRend and Implicit PointRend trained from masks with
    Detectron2's bilinear point labels (default) and with point_sup's ``pixel`` labels.

The seed changes the simulated points (their version), the initialisation and the data order.
Printed: mean ± standard deviation of AP and AP50 per row, and AP(row)/AP(M) computed per seed, then
averaged. Per-seed results are written as JSON in ``--output`` after every run; ``--resume``
continues an interrupted study from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from detectron2.utils.logger import setup_logger

from point_sup.data import register_nuclei
from point_sup.data.builtin import register_nuclei_files
from point_sup.engine.experiment import load_config, train_and_evaluate
from point_sup_labels.file_io import atomic_open, atomic_write_text
from point_sup_labels.point_file import write_point_annotation_file

ROOT = Path(__file__).resolve().parents[1]
NUCLEI = "configs/nuclei"
FIGURE3_POINTS = (1, 2, 3, 5, 10, 20, 50)
SHARED_INIT = ["MODEL.IMPLICIT_POINTREND.PARAMS_INIT", "shared"]
VALID_MEAN = ["MODEL.POINT_LOSS.NORMALIZATION", "valid_points"]
PIXEL_LABELS = ["MODEL.POINT_LOSS.MASK_POINT_LABELS", "pixel"]


@dataclass(frozen=True)
class Points:
    """The simulated P_N training file a row trains on (nuclei_train_p{N}[_{noise}{percent}])."""

    num_points: int = 10
    noise_rate: float = 0.0
    noise_mode: str = "random"
    mixed: str = ""  # a key of point_sup.data.builtin.NUCLEI_MIXED (written by register_nuclei)

    @property
    def dataset(self) -> str:
        noise = f"_{self.noise_mode}{round(100 * self.noise_rate)}" if self.noise_rate else ""
        mixed = f"_{self.mixed}" if self.mixed else ""
        return f"nuclei_train_p{self.num_points}{noise}{mixed}"


@dataclass(frozen=True)
class Row:
    config: str
    paper: float | None  # paper's COCO mask AP, for reference
    paper_row: str
    overrides: tuple = ()
    points: Points | None = None  # None: the config's own training set
    reference: str = "Mask R-CNN M"  # the row of AP(M) in the AP / AP(M) column


M = "Mask R-CNN M"
ROWS: dict[str, Row] = {
    M: Row(f"{NUCLEI}/mask_rcnn_R_18_FPN_M.yaml", 37.2, "Table 1a M"),
    "Mask R-CNN P10": Row(f"{NUCLEI}/mask_rcnn_R_18_FPN_P10.yaml", 36.1, "Table 1a P10"),
    "PointRend P10": Row(f"{NUCLEI}/point_rend_R_18_FPN_P10.yaml", 35.7, "Table 5 PointRend P10"),
    "Implicit PointRend P10": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_P10.yaml", 36.9, "Table 5 Implicit P10"
    ),
    # Ours, not the paper's: generated parameters start from one shared well-scaled MLP.
    "Implicit P10, shared init": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_P10.yaml", 36.9, "Table 5 Implicit P10", tuple(SHARED_INIT)
    ),
    # Issue 16 (ours): the parameter head's prediction layer factorised (PARAMS_RANK 32).
    "Implicit P10, small": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_P10_small.yaml", None, "ours, small Implicit"
    ),
    "Implicit P10 small, shared init": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_P10_small.yaml",
        None,
        "ours, small Implicit",
        tuple(SHARED_INIT),
    ),
    **{
        f"Mask R-CNN P{n}": Row(
            f"{NUCLEI}/mask_rcnn_R_18_FPN_P10.yaml",
            {10: 36.1}.get(n),  # the paper gives the other points of Figure 3 as a curve only
            "Figure 3",
            points=Points(n),
        )
        for n in FIGURE3_POINTS
        if n != 10
    },
    "P10, 5% random noise": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_P10.yaml", 35.9, "§3.3.1 random", points=Points(10, 0.05, "random")
    ),
    "P10, 5% boundary noise": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_P10.yaml", 35.7, "§3.3.1 boundary", points=Points(10, 0.05, "boundary")
    ),
    "Mask R-CNN P10, valid mean": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_P10.yaml", None, "ours", tuple(VALID_MEAN)
    ),
    "PointRend P10, valid mean": Row(
        f"{NUCLEI}/point_rend_R_18_FPN_P10.yaml", None, "ours", tuple(VALID_MEAN)
    ),
    "Implicit P10 shared, valid mean": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_P10.yaml", None, "ours", (*SHARED_INIT, *VALID_MEAN)
    ),
    "PointRend M": Row(f"{NUCLEI}/point_rend_R_18_FPN_M.yaml", 38.3, "Table 3c PointRend M"),
    "CondInst M": Row(
        f"{NUCLEI}/condinst_R_18_FPN_M.yaml", 37.5, "Table 3b CondInst M", reference="CondInst M"
    ),
    "CondInst P10": Row(
        f"{NUCLEI}/condinst_R_18_FPN_P10.yaml", 35.7, "Table 3b CondInst P10", reference="CondInst M"
    ),
    "BoxInst B": Row(f"{NUCLEI}/boxinst_R_18_FPN_B.yaml", 31.6, "Figure 3 BoxInst", reference="CondInst M"),
    "CondInst P10, bilinear points": Row(
        f"{NUCLEI}/condinst_R_18_FPN_P10.yaml",
        None,
        "ours",
        ("MODEL.CONDINST.POINT_LOGITS", "bilinear"),
        reference="CondInst M",
    ),
    # Issue 15 (not in the paper): one dataset, per-object supervision (MODEL.MIXED_SUP).
    "Mask R-CNN 10% M + P10": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_mixed.yaml", None, "ours, mixed", points=Points(10, mixed="m10")
    ),
    "Mask R-CNN P10 + B50%": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_mixed.yaml", None, "ours, mixed", points=Points(10, mixed="b50")
    ),
    "PointRend M, pixel labels": Row(
        f"{NUCLEI}/point_rend_R_18_FPN_M.yaml", None, "ours", tuple(PIXEL_LABELS)
    ),
    "Implicit M, shared init": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_M.yaml", 38.5, "Table 5 Implicit M", tuple(SHARED_INIT)
    ),
    "Implicit M, shared, pixel labels": Row(
        f"{NUCLEI}/implicit_point_rend_R_18_FPN_M.yaml", None, "ours", (*SHARED_INIT, *PIXEL_LABELS)
    ),
}
STUDIES: dict[str, list[str]] = {
    "main": [M, "Mask R-CNN P10", "PointRend P10", "Implicit PointRend P10", "Implicit P10, shared init"],
    "points": [M, *(f"Mask R-CNN P{n}" for n in FIGURE3_POINTS)],
    "noise": [M, "Mask R-CNN P10", "P10, 5% random noise", "P10, 5% boundary noise"],
    "normalization": [
        M,
        "Mask R-CNN P10",
        "Mask R-CNN P10, valid mean",
        "PointRend P10",
        "PointRend P10, valid mean",
        "Implicit P10, shared init",
        "Implicit P10 shared, valid mean",
    ],
    "condinst": [
        M,
        "Mask R-CNN P10",
        "CondInst M",
        "CondInst P10",
        "BoxInst B",
        "CondInst P10, bilinear points",
    ],
    "mixed": [M, "Mask R-CNN P10", "Mask R-CNN 10% M + P10", "Mask R-CNN P10 + B50%"],
    "small_implicit": [
        M,
        "Implicit PointRend P10",
        "Implicit P10, small",
        "Implicit P10, shared init",
        "Implicit P10 small, shared init",
    ],
    "mask_labels": [
        M,
        "PointRend M",
        "PointRend M, pixel labels",
        "Implicit M, shared init",
        "Implicit M, shared, pixel labels",
    ],
}

logger = logging.getLogger("point_sup.miniature_replication")


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _build_points(data_root: Path, train_json: Path, rows: list[str], seed: int) -> None:
    """The P_N files of ``rows`` for this seed (the P10 one is written by register_nuclei)."""
    specs = {ROWS[r].points for r in rows if ROWS[r].points is not None and not ROWS[r].points.mixed}
    specs -= {Points(10)}
    for spec in sorted(specs, key=lambda p: (p.num_points, p.noise_rate, p.noise_mode)):
        out = data_root / "annotations" / f"{spec.dataset}.json"
        write_point_annotation_file(
            train_json,
            out,
            num_points=spec.num_points,
            seed=seed,
            noise_rate=spec.noise_rate,
            noise_mode=spec.noise_mode,
        )
    register_nuclei_files(data_root, replace=True)


def draw_points_figure(path: Path, results: dict[str, dict[int, dict]], seeds: list[int], iters: int) -> None:
    """Figure 3 of the paper on the miniature: mask AP against N (mean ± std over seeds), M as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [n for n in FIGURE3_POINTS if f"Mask R-CNN P{n}" in results]
    means = [statistics.mean(results[f"Mask R-CNN P{n}"][s]["AP"] for s in seeds) for n in points]
    stds = [
        statistics.stdev(results[f"Mask R-CNN P{n}"][s]["AP"] for s in seeds) if len(seeds) > 1 else 0.0
        for n in points
    ]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=150)
    ax.errorbar(points, means, yerr=stds, marker="o", capsize=3, color="tab:red", label="Mask R-CNN, $P_N$")
    if M in results:
        m = [results[M][s]["AP"] for s in seeds]
        m_mean, m_std = statistics.mean(m), statistics.stdev(m) if len(m) > 1 else 0.0
        ax.axhline(m_mean, color="tab:blue", linestyle="--", label="Mask R-CNN, masks (M)")
        ax.axhspan(m_mean - m_std, m_mean + m_std, color="tab:blue", alpha=0.12)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(points)
    ax.set_xticklabels([str(n) for n in points])
    ax.set_xlabel("labelled points per object (N)")
    ax.set_ylabel("mask AP (held-out nuclei)")
    ax.set_title(f"Figure 3 on the nuclei miniature: {len(seeds)} seeds, {iters} iterations", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", nargs="+", default=["main"], choices=list(STUDIES))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="these rows instead of --study's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=200, help="training iterations per model")
    parser.add_argument("--output", default="output/miniature_replication")
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs already in the output's results file"
    )
    args = parser.parse_args(argv)
    setup_logger(name="point_sup")
    setup_logger(name="detectron2", abbrev_name="d2")
    rows = args.rows or list(dict.fromkeys(r for study in args.study for r in STUDIES[study]))
    out = Path(args.output)
    tag = "_".join(args.study) if not args.rows else "rows"
    results_file = out / f"{tag}.json"
    data_root = Path(os.getenv("DETECTRON2_DATASETS", "datasets")) / "nuclei"
    results: dict[str, dict[int, dict]] = {r: {} for r in rows}
    if args.resume and results_file.is_file():
        saved = json.loads(results_file.read_text())
        if saved["iters"] == args.iters:
            for name, per_seed in saved["results"].items():
                if name in results:
                    results[name] = {int(s): r for s, r in per_seed.items() if int(s) in args.seeds}
    t0 = time.time()
    # Row by row (all seeds of a row, then the next), saving after every run: an interrupted study
    # keeps complete rows, and --resume continues it.
    for name in rows:
        row = ROWS[name]
        for seed in args.seeds:
            if seed in results[name]:
                continue
            paths = register_nuclei(data_root, seed=seed)  # P10 version `seed`
            _build_points(data_root, paths["train"], [name], seed)
            logger.info(f"seed {seed}: training {name} ({args.iters} iterations)")
            overrides = list(row.overrides)
            if row.points is not None:
                overrides += ["DATASETS.TRAIN", (row.points.dataset,)]
            cfg = load_config(
                str(ROOT / row.config),
                [
                    "OUTPUT_DIR", str(out / f"seed{seed}" / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")),
                    "SOLVER.MAX_ITER", args.iters,
                    "SOLVER.STEPS", (int(0.8 * args.iters),),
                    "SEED", seed,
                    *overrides,
                ],
            )  # fmt: skip
            _, res = train_and_evaluate(cfg, eval_datasets=("nuclei_val",))
            results[name][seed] = {k: res["nuclei_val"]["segm"][k] for k in ("AP", "AP50")}
            logger.info(f"seed {seed}: {name}: {results[name][seed]}")
            atomic_write_text(
                results_file,
                json.dumps({"iters": args.iters, "seeds": args.seeds, "results": results}, indent=1),
            )
    minutes = (time.time() - t0) / 60

    lines = [
        "",
        f"miniature replication: DSB2018 nuclei, R18-FPN from scratch, {args.iters} iterations, "
        f"seeds {args.seeds} (mean ± std over seeds), {minutes:.0f} min",
        f"{'model':<34}{'mask AP':>14}{'AP50':>14}{'AP / AP(M)':>14}{'paper COCO AP':>16}",
    ]
    for name in rows:
        aps = [results[name][s]["AP"] for s in args.seeds]
        ap50s = [results[name][s]["AP50"] for s in args.seeds]
        ratio = "-"
        base = results.get(ROWS[name].reference, {})
        if base:
            ratios = [100 * results[name][s]["AP"] / base[s]["AP"] for s in args.seeds if base[s]["AP"] > 0]
            ratio = _mean_std(ratios) + "%" if ratios else "-"
        row = ROWS[name]
        paper = (
            f"{row.paper:>9.1f} ({row.paper_row})" if row.paper is not None else f"{'-':>9} ({row.paper_row})"
        )
        lines.append(f"{name:<34}{_mean_std(aps):>14}{_mean_std(ap50s):>14}{ratio:>14}{paper}")
    per_seed = "; ".join(
        f"seed {s}: " + " / ".join(f"{results[name][s]['AP']:.1f}" for name in rows) for s in args.seeds
    )
    lines.append(f"per seed (mask AP, rows in order): {per_seed}")
    if any(r.startswith("Mask R-CNN P") and ROWS[r].paper_row == "Figure 3" for r in rows):
        figure = out / "points.png"
        draw_points_figure(figure, results, args.seeds, args.iters)
        lines.append(f"figure: {figure}")
    print("\n".join(lines), flush=True)
    return results


if __name__ == "__main__":
    main()
