"""Runs the recipe block of docs/reproducing.md as written, in one process (the recipe test starts it).

    python tests/recipes/run_recipes.py docs/reproducing.md RESULTS.jsonl [--groups coco voc ...]

Run it from a working directory that has the repository's ``tools/`` and ``configs/`` (the block's
commands name them relative to the repository root), with ``$DETECTRON2_DATASETS`` and
``$FVCORE_CACHE`` set. Each command is turned into argv exactly as bash would, given the scale knobs
of tests/recipes/scale.py, and handed to the tool's own entry point (its argument parser and main)
in this process: one interpreter start-up for the whole block instead of one per command. The
first failing command stops the run. One JSON line per command is appended to RESULTS.jsonl, with
the size of the model_final.pth a training wrote; checkpoints that no later command names are then
deleted (Implicit PointRend's are 2.4 GB with the optimizer state).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from readme_recipes import apply_scale, bash_argv, parse_recipes  # noqa: E402
from scale import RECIPE_SCALE_FLAGS, RECIPE_SCALE_OPTS  # noqa: E402

_TOOLS: dict[str, object] = {}


def _tool(path: str):
    """The tool's module, loaded once from the working directory's tools/."""
    if path not in _TOOLS:
        name = Path(path).stem
        spec = importlib.util.spec_from_file_location(f"recipe_tool_{name}", Path(path).resolve())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS[path] = module
    return _TOOLS[path]


def _reset_logging() -> None:
    """Each command sets up its own log files (Detectron2's setup_logger is cached by arguments)."""
    from detectron2.utils import logger as d2_logger

    d2_logger.setup_logger.cache_clear()
    for name in ("detectron2", "fvcore", "point_sup", "d2"):
        logging.getLogger(name).handlers.clear()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return repr(value)


def run(argv: list[str]):
    """Runs one tool invocation as its command line would; returns what its main returns."""
    tool, args = argv[0], argv[1:]
    module = _tool(tool)
    if Path(tool).name == "train_net.py":
        parsed = module.argument_parser().parse_args(args)
        if parsed.num_gpus * parsed.num_machines != 1:
            raise ValueError("the recipe test runs one process per training (see scale.py)")
        return module.main(parsed)  # what detectron2's launch() calls for one process
    result = module.main(args)
    if Path(tool).name in ("prepare_point_annotations.py", "select_annotation_budget.py") and result != 0:
        raise SystemExit(f"{tool} exited with {result}")
    return result


def _output_dir(argv: list[str]) -> Path | None:
    return Path(argv[argv.index("OUTPUT_DIR") + 1]) if "OUTPUT_DIR" in argv else None


def _names(command: str) -> str:
    """What a command can name a checkpoint with: its words, and its config file's MODEL.WEIGHTS."""
    words = command.split()
    if "--config-file" not in words:
        return command
    from detectron2.config import get_cfg

    from point_sup import add_point_sup_config

    cfg = add_point_sup_config(get_cfg())
    cfg.merge_from_file(words[words.index("--config-file") + 1])
    return f"{command} {cfg.MODEL.WEIGHTS}"


def _prune_checkpoints(output: Path, later_commands: list[str]) -> int | None:
    """The size of ``output/model_final.pth`` (None if absent); the checkpoints of ``output`` are
    deleted unless a later command, or its config's MODEL.WEIGHTS, names that folder (a transfer
    or self-training recipe)."""
    final = output / "model_final.pth"
    size = final.stat().st_size if final.is_file() else None
    if not any(str(output) in _names(command) for command in later_commands):
        for checkpoint in output.glob("model_*.pth"):
            checkpoint.unlink()
    return size


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("page", help="the markdown page with the recipe block (docs/reproducing.md)")
    parser.add_argument("results")
    parser.add_argument("--groups", nargs="*", help="only these recipe groups (default: all)")
    args = parser.parse_args()
    import point_sup  # noqa: F401  (as every tool does first)

    groups = parse_recipes(Path(args.page).read_text(encoding="utf-8"))
    env = dict(os.environ)
    selected = [g for g in groups if not args.groups or g.id in args.groups]
    commands = [c for g in selected for c in g.commands]
    done = 0
    for group in selected:
        for command in group.commands:
            done += 1
            argv = apply_scale(bash_argv(command, env, Path.cwd()), RECIPE_SCALE_OPTS, RECIPE_SCALE_FLAGS)
            record = {"group": group.id, "command": command, "argv": argv}
            _reset_logging()
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                record["result"] = _jsonable(run(argv))
                record["ok"] = True
            except BaseException as e:  # SystemExit from argparse and the tools included
                record["ok"] = False
                record["error"] = "".join(traceback.format_exception(e))[-4000:]
            record["seconds"] = round(time.perf_counter() - t0, 2)
            record["cpu_seconds"] = round(time.process_time() - cpu0, 2)
            output = _output_dir(argv)
            if record["ok"] and Path(argv[0]).name == "train_net.py" and output is not None:
                record["model_final_bytes"] = _prune_checkpoints(output, commands[done:])
            gc.collect()
            with open(args.results, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"[{record['seconds']:6.1f} s] {'ok  ' if record['ok'] else 'FAIL'} {command}", flush=True)
            if not record["ok"]:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
