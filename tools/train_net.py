#!/usr/bin/env python
"""Train and evaluate point_sup models (and their mask-supervised baselines) with Detectron2.

Single GPU:      python tools/train_net.py --config-file configs/COCO/mask_rcnn_R_50_FPN_3x_P10.yaml
8 GPUs:          python tools/train_net.py --num-gpus 8 --config-file ...
2 machines:      python tools/train_net.py --num-gpus 8 --num-machines 2 --machine-rank {0,1} \\
                     --dist-url tcp://HOST:PORT --config-file ...
CPU, 2 processes (gloo): python tools/train_net.py --num-gpus 2 --config-file ... MODEL.DEVICE cpu
Evaluate a checkpoint:   python tools/train_net.py --eval-only --config-file ... MODEL.WEIGHTS model.pth
Resume after a stop:     python tools/train_net.py --resume --config-file ...  (same OUTPUT_DIR)
Your own data:           python tools/train_net.py --register my_p10 points.json my_images/ \\
                             --config-file ... DATASETS.TRAIN "('my_p10',)" MODEL.ROI_HEADS.NUM_CLASSES 3

Trailing ``KEY VALUE`` pairs override the config. The tool keeps Detectron2's shape
(``setup(args)``, ``Trainer``, ``main(args)``), so it can be driven from Python as well.
"""

from __future__ import annotations

import argparse

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results

import point_sup  # noqa: F401  (registers point_sup's heads, datasets and mapper)
from point_sup import add_point_sup_config
from point_sup.data import register_point_datasets
from point_sup.engine import PointSupTrainer, cli
from point_sup.engine.experiment import ConfigError, checked_config
from point_sup.engine.test_time_augmentation import tta_config_error


class Trainer(PointSupTrainer):
    """Subclass here to customise training for one experiment (hooks, loaders, ...)."""


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config: Detectron2's defaults, point_sup's keys, the file, then the overrides."""
    cfg = get_cfg()
    add_point_sup_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    # P_N names of the scheme (coco_2017_train_p20_v1, ...) need no registration by the user.
    register_point_datasets([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    default_setup(cfg, args)
    return cfg


def register_datasets(args: argparse.Namespace) -> None:
    """``--register NAME JSON IMAGE_ROOT``: COCO-format files (points and/or masks) of the user's own."""
    cli.register_datasets(getattr(args, "register", None))


def main(args: argparse.Namespace):
    register_datasets(args)  # in every process of a multi-GPU run
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:  # after the last regular evaluation, as Detectron2's tools do
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` plus ``--register``."""
    parser = default_argument_parser(epilog=__doc__)
    cli.add_register_argument(parser)
    return parser


def config_error(args: argparse.Namespace) -> str | None:
    """Why the config of ``args`` cannot be built (missing file, unknown key, bad value) or run
    (``TEST.AUG.ENABLED`` for a model without test-time augmentation), or None.

    Run once before :func:`launch`, so that a mistake is one message naming the file or key, not a
    Detectron2 traceback from every worker process.
    """
    try:
        cfg = checked_config(args.config_file, args.opts)
    except ConfigError as e:
        return str(e)
    return tta_config_error(cfg)


def invoke_main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    problem = config_error(args)
    if problem is not None:
        parser.error(problem)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
