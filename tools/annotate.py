#!/usr/bin/env python
"""Label P_N points on your own images in a browser, merge annotators' files, report speed and quality.

    python tools/annotate.py --images DIR --annotations boxes.json --output points.json [--num-points 10]
    python tools/annotate.py merge merged.json alice.json bob.json
    python tools/annotate.py report points.json [--masks ground_truth_with_masks.json]

``serve`` (the default command) starts a local web app; open the printed URL. For each object the
page shows the image around its box and one sampled point at a time; answer object (O or 1) or
background (B or 2), undo (U or Backspace), flag a wrong box (X), zoom out (Z). Every answer is on
disk before the page moves on; stop at any time and run the same command to resume. The output
is the P_N simulator's format (``point_coords``, ``point_labels``) and trains as-is. The logic
lives in :mod:`point_sup_labels.annotation`; this is the command-line shell.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import signal
import sys
import threading
from pathlib import Path

logger = logging.getLogger("point_sup.annotate")

COMMANDS = ("serve", "merge", "report")
# --help's texts, beside the commands they describe.
DESCRIPTION = (
    "P_N point annotation (Cheng et al., CVPR 2022, §3.1): for each box, N random "
    "points shown one at a time, each answered object or background."
)
EPILOG = (
    "Without a command, 'serve' is assumed: annotate.py --images DIR --annotations "
    "boxes.json --output points.json. Run 'annotate.py COMMAND --help' for each command."
)


def _shard(text: str) -> tuple[int, int]:
    try:
        k, m = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/M such as 1/3, got {text!r}") from None
    if not (m >= 1 and 1 <= k <= m):
        raise argparse.ArgumentTypeError(f"expected K/M with 1 <= K <= M, got {text!r}")
    return k - 1, m


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="annotate.py", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="{serve,merge,report}")

    serve = sub.add_parser("serve", help="start the annotation web app (the default command)")
    serve.add_argument("--images", required=True, metavar="DIR", help="folder holding the images")
    serve.add_argument(
        "--annotations",
        required=True,
        metavar="BOXES.json",
        help="COCO JSON with images, categories and boxes (segmentation not needed)",
    )
    serve.add_argument(
        "--output",
        required=True,
        metavar="POINTS.json",
        help="the P_N file to write (its journal goes beside it, POINTS.json.journal); "
        "an existing one is resumed",
    )
    serve.add_argument("--num-points", type=int, default=10, help="points per object, N (default 10)")
    serve.add_argument(
        "--seed", type=int, default=0, help="sampling seed, as the simulator's --seed (default 0)"
    )
    serve.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="K/M",
        help="annotate only images K, K+M, K+2M, ... of the input (one shard per annotator; "
        "join the outputs with 'merge')",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")

    merge = sub.add_parser("merge", help="join the outputs of several annotators into one file")
    merge.add_argument("output", metavar="MERGED.json")
    merge.add_argument("inputs", nargs="+", metavar="POINTS.json", help="outputs of 'serve'")

    report = sub.add_parser("report", help="seconds per point and object; agreement with masks")
    report.add_argument("points", metavar="POINTS.json", help="an output of 'serve' or 'merge'")
    report.add_argument(
        "--masks", metavar="MASKS.json", help="COCO JSON with masks for the same annotation ids"
    )
    report.add_argument("--json", action="store_true", help="print the numbers as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")

    from point_sup_labels.coco_format import CocoFormatError

    try:
        if args.command == "serve":
            if args.num_points < 1 or args.seed < 0 or not 0 <= args.port < 65536:
                parser.error("--num-points must be >= 1, --seed >= 0, --port in [0, 65535]")
            return _serve(args)
        if args.command == "merge":
            from point_sup_labels.annotation import merge_outputs

            stats = merge_outputs(args.inputs, args.output)
            logger.info("%s; wrote %s", stats.summary(), args.output)
            return 0
        from point_sup_labels.annotation import build_report

        rep = build_report(args.points, args.masks)
        print(json.dumps(rep.as_dict(), indent=2) if args.json else rep.summary())
        return 0
    except (CocoFormatError, ValueError, FileExistsError) as e:
        logger.error("%s", e)
        return 1


def _serve(args: argparse.Namespace) -> int:
    from point_sup_labels.annotation import AnnotationServer, OutputInUseError, is_loopback
    from point_sup_labels.coco_format import load_coco_instances

    images = Path(args.images)
    if not images.is_dir():
        logger.error("--images %s is not a folder", images)
        return 1
    if not Path(args.output).resolve().parent.is_dir():
        logger.error("the folder of --output %s does not exist", args.output)
        return 1
    # The same validation, with the same errors, as the simulator; masks are optional here.
    instances = load_coco_instances(args.annotations, require_segmentation=False)
    # Images checked, socket bound, and only then the output and its journal created: a start
    # refused for a bad file_name or a busy port leaves no session behind to be "resumed".
    try:
        server = AnnotationServer.open_session(
            instances,
            args.output,
            images,
            num_points=args.num_points,
            seed=args.seed,
            shard=args.shard,
            host=args.host,
            port=args.port,
        )
    except FileExistsError:
        raise  # an output of another tool: main() reports it
    except (OutputInUseError, OSError) as e:  # another annotator on it; the port is taken
        hint = (
            "; choose another --port (0 picks a free one)"
            if getattr(e, "errno", None) == errno.EADDRINUSE
            else ""
        )
        logger.error("%s%s", e, hint)
        return 1
    store = server.store
    if not is_loopback(args.host):
        logger.warning(
            "bound to %s, not a loopback address: anyone who can reach this machine on port %d can "
            "see the images and change the answers (there is no authentication)",
            args.host,
            server.server_address[1],
        )
    p = store.progress()
    logger.info(
        "%d objects in %d images (P%d, seed %d): %d done, %d points of %d answered; output %s",
        p["objects_total"], p["images_total"], args.num_points, args.seed, p["objects_done"],
        p["points_done"], p["points_total"], args.output,
    )  # fmt: skip

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it must not run in the serving thread
        # (before serve_forever starts it is still safe: serve_forever then returns at once).
        threading.Thread(target=server.shutdown, daemon=True).start()

    # Before the URL is printed: a script that stops the server as soon as it has read the URL
    # must find the handler installed (else SIGTERM's default action kills it, output unclosed).
    signal.signal(signal.SIGTERM, stop)
    # The URL line is printed plainly (tests and scripts read it from stdout).
    print(f"Annotation server running: open {server.url} in a browser (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    p = store.progress()
    logger.info(
        "stopped: %d/%d objects done (%d flagged), %d/%d points; %s is up to date",
        p["objects_done"], p["objects_total"], p["objects_flagged"], p["points_done"], p["points_total"],
        args.output,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
