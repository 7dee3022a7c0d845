#!/usr/bin/env python
"""Simulate P_N point annotations from any COCO-format instance segmentation dataset.

    python tools/prepare_point_annotations.py INPUT.json OUTPUT.json --num-points 10 --seed 0
    python tools/prepare_point_annotations.py --dataset cityscapes_fine_instance_seg_train OUTPUT.json

The output keeps ``images``, ``categories`` and every annotation field, adds ``point_coords``
(``[x, y]`` integer pixel indices; Detectron2's PointSup loader adds 0.5 to reach pixel centres)
and ``point_labels`` (1 object, 0 background), and drops ``segmentation`` unless ``--keep-masks``.

Mixed supervision (for training from masks, points and boxes at once), from any dataset:

    tools/prepare_point_annotations.py IN.json OUT.json --keep-masks-fraction 0.1 --box-only-fraction 0.3

A fraction F (``--keep-masks-fraction``) of the objects keep ``segmentation`` and get no point
fields, a fraction G (``--box-only-fraction``) keep neither (box only), the others get points as
above. The rule: ``u`` in [0, 1) is a hash of (``--seed``, annotation id), or of (seed, image id)
with ``--fraction-of images`` (all objects of an image then share its kind); an object keeps its
mask if ``u < F``, is box only if ``F <= u < F + G``. Crowd objects (``iscrowd`` 1) always get
points. Each object (or image) is decided on its own, so the counts are binomial: close to, not
exactly, F and G of the objects (or images). The selection depends neither on ``--workers`` nor on
the order of the file, and the points of the other objects are exactly those of a run without the
fractions (``u`` has a random stream of its own; ``point_sup_labels.simulate.supervision_kind``
gives the same answer in-process). Label noise is drawn among the points written. ``--keep-masks``
(a mask on every object) cannot be combined with the fractions.

The logic lives in :mod:`point_sup_labels.simulate` (and, with ``--workers`` > 1 on a file,
:mod:`point_sup_labels.sharded`, which parses the file in shards); this is the command-line
shell. Converting a file imports neither torch nor Detectron2 (only ``--dataset`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import string
import sys
import time
from pathlib import Path

from point_sup_labels import cli
from point_sup_labels.coco_format import (
    CocoFormatError,
    dumps_json,
    load_coco_instances,
    validate_coco_instances,
)
from point_sup_labels.file_io import StagedFiles, probe_writable
from point_sup_labels.log import setup_logger
from point_sup_labels.mixed_supervision import apply_supervision
from point_sup_labels.point_file import set_point_fields
from point_sup_labels.process import exit_on_termination, gc_paused, make_worker_pool, raise_if_stop_requested
from point_sup_labels.sharded import NotShardableError, ShardedSimulation, ShardWorkers
from point_sup_labels.simulate import simulate_point_annotations
from point_sup_labels.time_model import annotation_time

logger = logging.getLogger("point_sup.prepare_point_annotations")


def output_paths(output: str, num_versions: int) -> list[Path]:
    """One path per version: ``OUTPUT`` itself for one version; with several, ``{version}`` in
    OUTPUT is replaced by the version number, or else ``_v{k}`` is inserted before the suffix."""
    if "{version}" in output:
        fields = {name for _, name, _, _ in string.Formatter().parse(output) if name is not None}
        if fields != {"version"}:
            raise ValueError(
                f"OUTPUT {output!r} may contain only the field {{version}}, not "
                + ", ".join("{" + name + "}" for name in sorted(fields - {"version"}))
            )
        paths = [Path(output.format(version=k)) for k in range(num_versions)]
        if len(set(paths)) != len(paths):
            raise ValueError(f"OUTPUT {output!r} does not give distinct names per version")
        return paths
    if num_versions == 1:
        return [Path(output)]
    p = Path(output)
    return [p.with_name(f"{p.stem}_v{k}{p.suffix}") for k in range(num_versions)]


_fraction = cli.number_type(lambda v: 0.0 <= v <= 1.0, "in [0, 1]")  # the range test refuses nan


def check_outputs(outputs: list[Path], inputs: list[str]) -> str | None:
    """Why the outputs cannot be written (checked before any work), or None.

    Each output's folder must exist and be writable, the output must not be a folder, and it must
    not name an input (also through a symbolic or hard link): the input would be replaced.
    """
    for out in outputs:
        if not out.parent.is_dir():
            return f"the output directory {out.parent} does not exist"
        if not os.access(out.parent, os.W_OK | os.X_OK):
            return f"the output directory {out.parent} is not writable"
        try:  # also what os.access cannot tell: a read-only mount, ACLs, a full quota
            probe_writable(out)
        except OSError as e:
            return f"cannot create files in the output directory {out.parent} ({e.strerror or e})"
        if out.is_dir():
            return f"OUTPUT {out} is a directory"
        for source in inputs:
            same = os.path.realpath(source) == os.path.realpath(out)
            if not same and out.exists() and os.path.exists(source):
                same = os.path.samefile(source, out)
            if same:
                return f"OUTPUT {out} is the input file {source}: refusing to overwrite the input"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_point_annotations.py",
        description=(
            "Simulate P_N point annotations (Cheng et al., CVPR 2022): N pixels sampled uniformly "
            "inside each box, labelled by the ground-truth mask exactly as pycocotools rasterizes it."
        ),
        epilog=(
            "Usage: prepare_point_annotations.py INPUT.json OUTPUT.json [options], or "
            "prepare_point_annotations.py --dataset NAME OUTPUT.json [options]. Same input and "
            "seed give byte-identical output for any --workers. Mixed supervision: an object (with "
            "--fraction-of images, every object of an image) whose draw u, a hash of (seed, annotation "
            "or image id) in [0, 1), is below F keeps its mask and gets no points; one with "
            "F <= u < F + G keeps only its box; counts are binomial; crowd objects always get points."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="INPUT OUTPUT",
        help="COCO-format instances JSON (polygons, RLE, compressed RLE; COCO, LVIS, ...) and the "
        "output JSON; only OUTPUT with --dataset",
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        help="read a dataset registered in Detectron2's DatasetCatalog instead of INPUT",
    )
    parser.add_argument("--num-points", type=int, default=10, help="points per object, N (default 10)")
    parser.add_argument("--seed", type=cli.seed, default=0, help="random seed in [0, 2**64) (default 0)")
    parser.add_argument(
        "--num-versions",
        type=int,
        default=1,
        metavar="K",
        help="write K independently sampled versions (OUTPUT_v0.json ... or OUTPUT with '{version}')",
    )
    parser.add_argument(
        "--noise-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="flip the labels of exactly round(R * total points) points (paper §3.3.1; default 0)",
    )
    parser.add_argument(
        "--noise-mode",
        choices=["random", "boundary"],
        default="random",
        help="which points to flip: uniformly random, or those closest to the object boundary",
    )
    parser.add_argument(
        "--keep-masks",
        action="store_true",
        help="keep 'segmentation' of every object in the output, besides its points (not with the fractions)",
    )
    parser.add_argument(
        "--keep-masks-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="a fraction F of the objects keep 'segmentation' and get no points (mask supervision): "
        "those whose draw u < F, with u in [0, 1) a hash of (seed, id); binomial counts (default 0)",
    )
    parser.add_argument(
        "--box-only-fraction",
        type=_fraction,
        default=0.0,
        metavar="G",
        help="a fraction G of the objects keep neither 'segmentation' nor points (box only): those "
        "with F <= u < F + G; F + G <= 1 (default 0)",
    )
    parser.add_argument(
        "--fraction-of",
        choices=["objects", "images"],
        default="objects",
        help="whether the fractions select objects (u hashes the annotation id) or whole images (u "
        "hashes the image id; all objects of the image); crowd objects always get points",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a scheduler's kill) runs the same cleanup as Ctrl-C: workers stopped, staged
    # outputs removed; under SIGKILL the workers die with this process (see ShardWorkers).
    with exit_on_termination(), gc_paused():  # a loaded COCO file is millions of containers
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset is None and len(args.paths) != 2:
        parser.error("expected INPUT OUTPUT (or --dataset NAME OUTPUT)")
    if args.dataset is not None and len(args.paths) != 1:
        parser.error("with --dataset, give only OUTPUT")
    for name, value, low in (("--num-points", args.num_points, 1), ("--num-versions", args.num_versions, 1)):
        if value < low:
            parser.error(f"{name} must be >= {low}")
    if args.workers < 1 or not 0.0 <= args.noise_rate <= 1.0:
        parser.error("--workers must be >= 1, --noise-rate in [0, 1]")
    if args.keep_masks_fraction + args.box_only_fraction > 1.0 + 1e-9:  # the simulator's slack
        parser.error(
            f"--keep-masks-fraction + --box-only-fraction must be <= 1, got "
            f"{args.keep_masks_fraction} + {args.box_only_fraction}"
        )
    if args.keep_masks and (args.keep_masks_fraction > 0 or args.box_only_fraction > 0):
        parser.error(
            "--keep-masks keeps the mask of every object: it cannot be combined with "
            "--keep-masks-fraction or --box-only-fraction"
        )

    setup_logger("point_sup")
    try:
        outputs = output_paths(args.paths[-1], args.num_versions)
    except ValueError as e:
        parser.error(str(e))
    problem = check_outputs(
        outputs, [args.paths[0]] if args.dataset is None else _dataset_files(args.dataset)
    )
    if problem is not None:
        logger.error("%s", problem)
        return 2

    t0 = time.perf_counter()
    if args.dataset is None and args.workers > 1:
        # Workers are forked before anything is loaded (see ShardWorkers).
        with ShardWorkers(args.workers) as workers:
            try:
                return _convert_sharded(args, outputs, workers, t0)
            except NotShardableError as e:
                logger.info("parsing the whole file in the main process instead of in shards: %s", e)
    with contextlib.ExitStack() as stack:
        # Workers are forked before the dataset is loaded (see make_worker_pool).
        pool = stack.enter_context(make_worker_pool(args.workers)) if args.workers > 1 else None
        return _convert(args, outputs, pool, t0)


def _dataset_files(name: str) -> list[str]:
    """The annotation file that a registered dataset is read from, if its metadata names one."""
    from detectron2.data import MetadataCatalog

    import point_sup  # noqa: F401  (registers point_sup's datasets too)

    json_file = MetadataCatalog.get(name).get("json_file", None)
    return [json_file] if isinstance(json_file, str) else []


def _convert_sharded(args: argparse.Namespace, outputs: list[Path], workers: ShardWorkers, t0: float) -> int:
    """The conversion with the file parsed in shards by the workers (NotShardableError: not possible)."""
    sim = ShardedSimulation(args.paths[0], workers)
    _log_loaded(sim.source, sim.num_images, sim.num_annotations, sim.num_categories, t0)
    import tqdm

    with tqdm.tqdm(total=sim.num_annotations, unit="ann", disable=args.no_progress, file=sys.stderr) as bar:
        stats = sim.simulate(
            num_points=args.num_points,
            seed=args.seed,
            versions=range(args.num_versions),
            noise_rate=args.noise_rate,
            noise_mode=args.noise_mode,
            **_fractions(args),
            drop_segmentation=not args.keep_masks,
            progress=bar.update,
        )
    try:
        with StagedFiles() as staged:  # nothing is written unless every version was produced
            for k, path in enumerate(outputs):
                staged.write_with(path, lambda tmp, fd, k=k: sim.write(k, tmp, fd))
            raise_if_stop_requested()  # a stop never ends in written outputs
    except OSError as e:
        return _write_failed(e)
    workers.close(wait=False)  # told to stop; their memory is freed after this process exits
    _log_summary(args, stats, outputs, t0)
    return 0


def _fractions(args: argparse.Namespace) -> dict:
    return {
        "keep_masks_fraction": args.keep_masks_fraction,
        "box_only_fraction": args.box_only_fraction,
        "fraction_of": args.fraction_of,
    }


def _write_failed(e: OSError) -> int:
    logger.error("cannot write %s (%s); no output was written", e.filename or "the output", e.strerror or e)
    return 1


def _log_loaded(source: str, num_images: int, num_annotations: int, num_categories: int, t0: float) -> None:
    logger.info(
        "loaded %s: %d images, %d annotations, %d categories (%.1f s)",
        source,
        num_images,
        num_annotations,
        num_categories,
        time.perf_counter() - t0,
    )


def _convert(args: argparse.Namespace, outputs: list[Path], pool, t0: float) -> int:
    try:
        if args.dataset is not None:
            # Only a registered dataset needs Detectron2 (and torch): imported here, not at start-up.
            import point_sup  # noqa: F401  (registers point_sup's datasets too)
            from point_sup.data import register_point_datasets
            from point_sup.data.catalog import catalog_image_root, coco_dict_from_catalog

            register_point_datasets([args.dataset])
            instances = validate_coco_instances(coco_dict_from_catalog(args.dataset), source=args.dataset)
            root = catalog_image_root(args.dataset)
            if root is not None:
                logger.info(
                    "file_name of images under %s is written relative to it (register OUTPUT with that "
                    "image root); of any other image, absolute",
                    root,
                )
            else:
                logger.info("file_name is absolute (the metadata names no image_root or image_dir)")
        else:
            instances = load_coco_instances(args.paths[0])
        _log_loaded(
            instances.source, len(instances.images), len(instances.annotations), len(instances.categories), t0
        )
        import tqdm

        with tqdm.tqdm(
            total=len(instances.annotations), unit="ann", disable=args.no_progress, file=sys.stderr
        ) as bar:
            samples, stats = simulate_point_annotations(
                instances,
                num_points=args.num_points,
                seed=args.seed,
                versions=range(args.num_versions),
                noise_rate=args.noise_rate,
                noise_mode=args.noise_mode,
                **_fractions(args),
                pool=pool,
                drop_segmentation=not args.keep_masks,
                progress=bar.update,
            )
    except CocoFormatError as e:
        logger.error("%s", e)
        return 1

    # Nothing is written unless every version was produced (no partial output, ever).
    try:
        with StagedFiles() as staged:
            for path, s in zip(outputs, samples, strict=True):
                set_point_fields(instances.annotations, s)
                apply_supervision(instances.annotations, s.supervision)  # mixed supervision
                staged.write(path, dumps_json(instances.data))
            raise_if_stop_requested()  # a stop never ends in written outputs
    except OSError as e:
        return _write_failed(e)
    _log_summary(args, stats, outputs, t0)
    return 0


def _log_summary(args: argparse.Namespace, stats, outputs: list[Path], t0: float) -> None:
    logger.info(
        "%d annotations (%d polygon, %d RLE, %d crowd): %d with %d points each; %d boxes clipped to "
        "the image; %d zero-area boxes without points; %d polygon parts under 3 vertices skipped",
        stats.num_annotations,
        stats.num_polygon,
        stats.num_rle,
        stats.num_crowd,
        stats.num_with_points,
        args.num_points,
        stats.num_clipped,
        stats.num_zero_area,
        stats.num_skipped_parts,
    )
    if args.keep_masks_fraction > 0 or args.box_only_fraction > 0:
        logger.info(
            "kept masks on %d objects, box only on %d, points on %d (fractions %g and %g of the %s, "
            "seed %d; crowd objects always get points)",
            stats.num_mask_kept,
            stats.num_box_only,
            stats.num_point_objects,
            args.keep_masks_fraction,
            args.box_only_fraction,
            args.fraction_of,
            args.seed,
        )
    if args.noise_rate > 0:
        logger.info("label noise (%s): flipped %s points per version", args.noise_mode, stats.num_flipped)
    logger.info("%s", annotation_time(stats.num_with_points, args.num_points).summary())
    logger.info("wrote %s (%.1f s)", ", ".join(map(str, outputs)), time.perf_counter() - t0)


if __name__ == "__main__":
    code = main()
    # Everything is written and logged; exiting without the interpreter's teardown spares waiting
    # for the workers' memory to be freed (multiprocessing joins its children at exit), a tenth of
    # a second on a large file. Any worker not gone yet dies with this process (parent-death signal).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
