#!/usr/bin/env python
"""A miniature replication of the paper on real data, with the spread across seeds.

    python bench/miniature_replication.py --seeds 0 1 2 --iters 200                       # main table
    python bench/miniature_replication.py --study points noise --seeds 0 1 2 --iters 200  # ablations
    python bench/miniature_replication.py --study box_prior --folds 4 --seeds 0 1 2 --iters 200  # k-fold
    python bench/miniature_replication.py --study box_prior --folds 4 --fold-indices 0 --seeds 0  # 1 fold

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
``box_prior``
    Does a box prior help point supervision? Mask R-CNN M, P10, P10 + box prior
    (``mask_rcnn_R_18_FPN_P10_box_prior.yaml``) and box only with the box prior
    (``mask_rcnn_R_18_FPN_B_box_prior.yaml``, ``MODEL.MIXED_SUP``, on the box-only view of the training
    set); CondInst M, P10, P10 + box prior (``condinst_R_18_FPN_P10_box_prior.yaml``) and BoxInst B. The
    box-prior rows are compared with their P10 row (``Row.paired``) as well as with M. Also draws
    mask AP (mean and 95 % interval) against annotation time per object
    (``point_sup_labels.time_model``: P10 with or without the box prior 16 s, a box 7 s, a polygon
    79.2 s), Mask R-CNN and CondInst as two series, as ``box_prior.png`` in the output directory.

The seed changes the simulated points (their version), the initialisation and the data order.
Printed: mean ± standard deviation of AP and AP50 per row, and AP(row)/AP(M) computed per seed, then
averaged. Per-seed results are written as JSON in ``--output`` after every run; ``--resume``
continues an interrupted study from them.

K-fold protocol (``--folds K``, K in {2, 4, 8, 16}; default 0, the single split above): fold k
validates on the band of rows [k * 512 / K, (k + 1) * 512 / K) and trains on the rest of the image,
minus the rows of the nuclei crossing the band (point_sup.data.nuclei; datasets
``nuclei_fold{k}of{K}_train[_p{N}|_boxes|...]`` and ``nuclei_fold{k}of{K}_val``). Each row trains once
per (seed, fold) (``--fold-indices``: only these folds) on that fold's version of its training set
(masks, P_N of the seed, or boxes) and is evaluated on the fold's band, so each nucleus is scored in
exactly one fold. Printed: mean mask AP (with its 95 % t-interval) and AP50 over the (seed, fold)
runs, and per row the paired differences AP(row) - AP(reference) over the runs both rows have, for
``Row.reference`` (M) and ``Row.paired``, with their mean, 95 % Student-t interval (n - 1 degrees of
freedom) and whether it excludes zero. Results per (row, seed, fold) go to
``--output/{study}_folds{K}.json``; ``--resume`` keeps the runs there (of any seed, fold or row), so
a study can be run in parts (e.g. one ``--fold-indices`` per call) and then reported whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from detectron2.utils.logger import setup_logger

from point_sup.data import register_nuclei
from point_sup.data.builtin import register_nuclei_files, register_nuclei_folds
from point_sup.data.nuclei import check_fold_indices, fold_dataset_name
from point_sup.engine.experiment import load_config, train_and_evaluate
from point_sup_labels.file_io import atomic_open, atomic_write_text
from point_sup_labels.point_file import write_point_annotation_file
from point_sup_labels.time_model import SECONDS_PER_BOX, SECONDS_PER_POLYGON_MASK, annotation_time

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
    points: Points | None = None  # None: `dataset`, else the config's own training set
    reference: str = "Mask R-CNN M"  # the row of AP(M) in the AP / AP(M) column (and, with folds, of a
    # paired difference)
    paired: str | None = None  # with folds, also the paired difference against this row (the row's question)
    dataset: str | None = None  # a single-split nuclei training set instead of the config's, if not `points`


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
    # The box prior (ours): does it help P10, and how far does it take boxes alone?
    "Mask R-CNN P10 + box prior": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_P10_box_prior.yaml",
        None,
        "ours, box prior",
        points=Points(10),
        paired="Mask R-CNN P10",
    ),
    "Mask R-CNN B (box prior)": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_B_box_prior.yaml",
        None,
        "ours, box prior",
        dataset="nuclei_train_boxes",
        paired="Mask R-CNN P10",
    ),
    "CondInst P10 + box prior": Row(
        f"{NUCLEI}/condinst_R_18_FPN_P10_box_prior.yaml",
        None,
        "ours, box prior",
        points=Points(10),
        reference="CondInst M",
        paired="CondInst P10",
    ),
    # Which of the two terms moves Mask R-CNN P10 (the other's weight 0).
    "Mask R-CNN P10 + projection only": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_P10_box_prior.yaml",
        None,
        "ours, box prior",
        ("MODEL.BOX_PRIOR.PAIRWISE_WEIGHT", 0.0),
        points=Points(10),
        paired="Mask R-CNN P10",
    ),
    "Mask R-CNN P10 + pairwise only": Row(
        f"{NUCLEI}/mask_rcnn_R_18_FPN_P10_box_prior.yaml",
        None,
        "ours, box prior",
        ("MODEL.BOX_PRIOR.PROJECTION_WEIGHT", 0.0),
        points=Points(10),
        paired="Mask R-CNN P10",
    ),
}
BOX_PRIOR_ROWS = ("Mask R-CNN P10 + box prior", "Mask R-CNN B (box prior)", "CondInst P10 + box prior")
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
    "box_prior": [
        M,
        "Mask R-CNN P10",
        "Mask R-CNN P10 + box prior",
        "Mask R-CNN B (box prior)",
        "CondInst M",
        "CondInst P10",
        "BoxInst B",
        "CondInst P10 + box prior",
    ],
}

logger = logging.getLogger("point_sup.miniature_replication")


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _build_points(
    data_root: Path, train_json: Path, rows: list[str], seed: int, fold: tuple[int, int] | None = None
) -> None:
    """The P_N files of ``rows`` for this seed (the P10 one is written by register_nuclei), made from
    ``train_json``; with ``fold`` (k, K), that fold's versions (:func:`fold_train_dataset`)."""
    specs = {ROWS[r].points for r in rows if ROWS[r].points is not None and not ROWS[r].points.mixed}
    specs -= {Points(10)}
    for spec in sorted(specs, key=lambda p: (p.num_points, p.noise_rate, p.noise_mode)):
        name = spec.dataset if fold is None else fold_train_dataset(spec.dataset, *fold)
        out = data_root / "annotations" / f"{name}.json"
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


def row_train_dataset(name: str) -> str:
    """The single-split nuclei training set row ``name`` trains on: its points' set, its ``dataset``,
    else its config's ``DATASETS.TRAIN`` (read from the config file)."""
    row = ROWS[name]
    if row.points is not None:
        return row.points.dataset
    if row.dataset is not None:
        return row.dataset
    train = load_config(str(ROOT / row.config)).DATASETS.TRAIN
    if len(train) != 1:
        raise ValueError(f"row {name!r}: {row.config} trains on {tuple(train)}, not one nuclei training set")
    return train[0]


def fold_train_dataset(dataset: str, fold: int, num_folds: int) -> str:
    """Fold ``fold`` of ``num_folds``'s version of a single-split nuclei training set:
    ``nuclei_train[_suffix]`` -> ``nuclei_fold{fold}of{num_folds}_train[_suffix]``."""
    if dataset != "nuclei_train" and not dataset.startswith("nuclei_train_"):
        raise ValueError(f"training set {dataset!r} is not a nuclei_train set: it has no k-fold version")
    return fold_dataset_name(fold, num_folds, "train") + dataset[len("nuclei_train") :]


def annotation_seconds(dataset: str) -> float | None:
    """Annotation time per object of a single-split nuclei training set (point_sup_labels.time_model):
    P_N a box and N points, box only a box, masks a polygon; None for mixed supervision."""
    if dataset == "nuclei_train":
        return SECONDS_PER_POLYGON_MASK
    if dataset == "nuclei_train_boxes":
        return SECONDS_PER_BOX
    match = re.fullmatch(r"nuclei_train_p(\d+)(?:_(?:random|boundary)\d+)?", dataset)
    return annotation_time(1, int(match[1])).point_annotation_seconds if match else None


# Two-sided 95 % quantiles of Student's t by degrees of freedom, when scipy is not installed; between
# the entries the next smaller one (a slightly wider interval).
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
    19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052,
    28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` >= 1 degrees of freedom (scipy's, else a table)."""
    if dof < 1:
        raise ValueError(f"Student t needs at least 1 degree of freedom, got {dof}")
    try:
        from scipy.stats import t
    except ImportError:
        return _T975[max(k for k in _T975 if k <= dof)]
    return float(t.ppf(0.975, dof))


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of ``values`` and its two-sided 95 % Student-t interval (n - 1 degrees of freedom);
    the interval is (nan, nan) for fewer than two values."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_differences(
    runs: dict[str, dict[tuple[int, int], dict]], name: str, reference: str
) -> dict[tuple[int, int], float]:
    """AP(name) - AP(reference) for every (seed, fold) run that both rows have, in run order."""
    both = sorted(set(runs.get(name, {})) & set(runs.get(reference, {})))
    return {key: runs[name][key]["AP"] - runs[reference][key]["AP"] for key in both}


def _references(name: str) -> list[str]:
    row = ROWS[name]
    return [r for r in dict.fromkeys((row.reference, row.paired)) if r is not None and r != name]


def _interval(values: list[float], signed: bool = False) -> str:
    mean, lo, hi = t_interval(values)
    f = "+.1f" if signed else ".1f"
    if math.isnan(lo):
        return f"{mean:{f}}"
    return f"{mean:{f}} [{lo:{f}}, {hi:{f}}]"


def fold_report(rows: list[str], runs: dict[str, dict[tuple[int, int], dict]], header: str) -> list[str]:
    """The printed summary of a k-fold study: per row the mean AP (95 % t-interval) and AP50 over its
    (seed, fold) runs, then the paired differences against ``Row.reference`` and ``Row.paired``."""
    lines = [
        "",
        header,
        f"{'model':<34}{'runs':>5}{'mask AP [95% CI]':>22}{'AP50':>8}{'paper COCO AP':>16}",
    ]
    for name in rows:
        done = list(runs[name].values())
        row = ROWS[name]
        paper = (
            f"{row.paper:>9.1f} ({row.paper_row})" if row.paper is not None else f"{'-':>9} ({row.paper_row})"
        )
        if not done:
            lines.append(f"{name:<34}{0:>5}{'-':>22}{'-':>8}{paper}")
            continue
        ap = _interval([r["AP"] for r in done])
        ap50 = statistics.mean(r["AP50"] for r in done)
        lines.append(f"{name:<34}{len(done):>5}{ap:>22}{ap50:>8.1f}{paper}")
    lines.append(
        "paired differences AP(row) - AP(reference) over the (seed, fold) runs both have: mean "
        "[95% Student-t interval, n - 1 dof]"
    )
    for name in rows:
        for ref in _references(name):
            if ref not in runs:
                continue
            diffs = paired_differences(runs, name, ref)
            if not diffs:
                continue
            values = list(diffs.values())
            _, lo, hi = t_interval(values)
            if any(math.isnan(v) for v in values):
                verdict = "undefined: a run has no AP (no detections)"
            elif len(values) < 2:
                verdict = "no interval (n = 1)"
            else:
                verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
            per_run = ", ".join(f"s{s}f{k} {d:+.1f}" for (s, k), d in diffs.items())
            lines.append(
                f"  {name} - {ref}: {_interval(values, signed=True)}, n = {len(values)}: {verdict}"
                f" (per run: {per_run})"
            )
    return lines


def draw_box_prior_figure(path: Path, aps: dict[str, list[float]], title: str) -> None:
    """Mask AP against annotation time per object for the rows of ``aps`` (row -> AP per run): one
    marker per row at its mean with the 95 % t-interval as error bars, Mask R-CNN and CondInst
    (CondInst and BoxInst configs) as two series; rows of mixed supervision are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=150)
    series = {"Mask R-CNN": ("tab:red", 0.95), "CondInst": ("tab:blue", 1.05)}
    placed: dict[tuple[str, float], int] = {}
    labelled = set()
    for name, values in aps.items():
        seconds = annotation_seconds(row_train_dataset(name))
        if seconds is None or not values:
            continue
        family = "CondInst" if re.search(r"condinst|boxinst", ROWS[name].config) else "Mask R-CNN"
        color, offset = series[family]
        # Rows at the same time (P10 with and without the prior) side by side.
        nth = placed.get((family, seconds), 0)
        placed[(family, seconds)] = nth + 1
        x = seconds * offset * 1.08**nth
        mean, lo, hi = t_interval(values)
        yerr = None if math.isnan(lo) else [[mean - lo], [hi - mean]]
        prior = name in BOX_PRIOR_ROWS
        ax.errorbar(
            [x],
            [mean],
            yerr=yerr,
            marker="D" if prior else "o",
            markerfacecolor="white" if prior else color,
            color=color,
            capsize=3,
            linestyle="none",
            label=None if family in labelled else family,
        )
        labelled.add(family)
        ax.annotate(name, (x, mean), xytext=(4, 3), textcoords="offset points", fontsize=6, color=color)
    ax.plot([], [], "D", color="grey", markerfacecolor="white", linestyle="none", label="with the box prior")
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted({s for _, s in placed})
    if ticks:
        ax.set_xlim(ticks[0] * 0.7, ticks[-1] * 2.2)  # room for the labels right of the markers
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{s:g}" for s in ticks])
    ax.set_xlabel("annotation time per object (s; box 7, P10 16, polygon 79.2)")
    ax.set_ylabel("mask AP (held-out nuclei), mean and 95% CI")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def _train_row(
    name: str, seed: int, iters: int, output_dir: Path, train_set: str | None, val_set: str
) -> dict:
    """Train row ``name`` (on ``train_set``, default its config's) and its mask AP, AP50 on ``val_set``."""
    row = ROWS[name]
    overrides = list(row.overrides)
    if train_set is not None:
        overrides += ["DATASETS.TRAIN", (train_set,)]
    cfg = load_config(
        str(ROOT / row.config),
        [
            "OUTPUT_DIR", str(output_dir / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")),
            "SOLVER.MAX_ITER", iters,
            "SOLVER.STEPS", (int(0.8 * iters),),
            "SEED", seed,
            "DATASETS.TEST", (val_set,),
            *overrides,
        ],
    )  # fmt: skip
    _, res = train_and_evaluate(cfg, eval_datasets=(val_set,))
    return {k: res[val_set]["segm"][k] for k in ("AP", "AP50")}


def run_folds(
    args: argparse.Namespace, rows: list[str], out: Path, tag: str, data_root: Path
) -> dict[str, dict[tuple[int, int], dict]]:
    """The k-fold study (module docstring): every row once per (seed, fold), saved after each run to
    ``out/{tag}_folds{K}.json`` as ``results[row][seed][fold] = {"AP": .., "AP50": ..}``. With
    ``--resume``, the runs saved there (same iterations and K) are kept, also those of other seeds,
    folds or rows, so that a study can be run in parts; the report covers the runs of this call's
    seeds and folds. Returns ``{row: {(seed, fold): {"AP": .., "AP50": ..}}}`` of those."""
    num_folds, folds = args.folds, args.fold_indices
    results_file = out / f"{tag}_folds{num_folds}.json"
    stored: dict[str, dict[tuple[int, int], dict]] = {}  # every run of the file, and the new ones
    if args.resume and results_file.is_file():
        saved = json.loads(results_file.read_text())
        if saved.get("iters") == args.iters and saved.get("folds") == num_folds:
            stored = {
                name: {(int(s), int(k)): r for s, per_fold in per_seed.items() for k, r in per_fold.items()}
                for name, per_seed in saved["results"].items()
            }
    runs: dict[str, dict[tuple[int, int], dict]] = {
        r: {key: v for key, v in stored.get(r, {}).items() if key[0] in args.seeds and key[1] in folds}
        for r in rows
    }

    def save() -> None:
        nested: dict[str, dict[str, dict[str, dict]]] = {}
        for name, per_run in stored.items():
            nested[name] = {}
            for (s, k), r in sorted(per_run.items()):
                nested[name].setdefault(str(s), {})[str(k)] = r
        keys = {key for per_run in stored.values() for key in per_run}
        payload = {
            "iters": args.iters,
            "folds": num_folds,
            "fold_indices": sorted({k for _, k in keys}),
            "seeds": sorted({s for s, _ in keys}),
            "results": nested,
        }
        atomic_write_text(results_file, json.dumps(payload, indent=1))

    t0 = time.time()
    for name in rows:  # row by row, as the single split
        for seed in args.seeds:
            for k in folds:
                if (seed, k) in runs[name]:
                    continue
                paths = register_nuclei_folds(data_root, num_folds, folds=[k], seed=seed)[k]
                _build_points(data_root, paths["train"], [name], seed, fold=(k, num_folds))
                train_set = fold_train_dataset(row_train_dataset(name), k, num_folds)
                val_set = fold_dataset_name(k, num_folds, "val")
                logger.info(
                    f"seed {seed}, fold {k}/{num_folds}: training {name} on {train_set} "
                    f"({args.iters} iterations)"
                )
                output_dir = out / f"seed{seed}" / f"fold{k}of{num_folds}"
                runs[name][(seed, k)] = _train_row(name, seed, args.iters, output_dir, train_set, val_set)
                stored.setdefault(name, {})[(seed, k)] = runs[name][(seed, k)]
                logger.info(f"seed {seed}, fold {k}/{num_folds}: {name}: {runs[name][(seed, k)]}")
                save()
    minutes = (time.time() - t0) / 60
    header = (
        f"miniature replication, {num_folds}-fold (folds {folds}): DSB2018 nuclei, R18-FPN from scratch, "
        f"{args.iters} iterations, seeds {args.seeds}, {minutes:.0f} min"
    )
    lines = fold_report(rows, runs, header)
    if set(rows) & set(BOX_PRIOR_ROWS):
        figure = out / "box_prior.png"
        aps = {name: [r["AP"] for r in runs[name].values()] for name in rows}
        draw_box_prior_figure(
            figure,
            aps,
            f"box prior on the nuclei miniature: {num_folds}-fold, seeds {args.seeds}, {args.iters} it.",
        )
        lines.append(f"figure: {figure}")
    print("\n".join(lines), flush=True)
    return runs


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
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="k-fold protocol with K folds (2, 4, 8 or 16); 0 (default): the single train/val split",
    )
    parser.add_argument(
        "--fold-indices", type=int, nargs="+", metavar="k", help="with --folds: only these folds (0..K-1)"
    )
    args = parser.parse_args(argv)
    if args.folds:
        try:
            args.fold_indices = check_fold_indices(args.fold_indices, args.folds)
        except ValueError as e:
            parser.error(f"--folds {args.folds} --fold-indices {args.fold_indices}: {e}")
    elif args.fold_indices is not None:
        parser.error("--fold-indices needs --folds K")
    setup_logger(name="point_sup")
    setup_logger(name="detectron2", abbrev_name="d2")
    rows = args.rows or list(dict.fromkeys(r for study in args.study for r in STUDIES[study]))
    missing = sorted({ROWS[r].config for r in rows if not (ROOT / ROWS[r].config).is_file()})
    if missing:
        parser.error(f"config files not found (relative to {ROOT}): {', '.join(missing)}")
    out = Path(args.output)
    tag = "_".join(args.study) if not args.rows else "rows"
    data_root = Path(os.getenv("DETECTRON2_DATASETS", "datasets")) / "nuclei"
    if args.folds:
        return run_folds(args, rows, out, tag, data_root)
    results_file = out / f"{tag}.json"
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
            train_set = row.points.dataset if row.points is not None else row.dataset
            results[name][seed] = _train_row(
                name, seed, args.iters, out / f"seed{seed}", train_set, "nuclei_val"
            )
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
    if set(rows) & set(BOX_PRIOR_ROWS):
        figure = out / "box_prior.png"
        aps = {name: [results[name][s]["AP"] for s in args.seeds] for name in rows}
        draw_box_prior_figure(
            figure, aps, f"box prior on the nuclei miniature: seeds {args.seeds}, {args.iters} iterations"
        )
        lines.append(f"figure: {figure}")
    print("\n".join(lines), flush=True)
    return results


if __name__ == "__main__":
    main()
