#!/usr/bin/env bash
# Everything bench/gpu_acceptance.py needs on the borrowed GPU machine (Python 3.12 and PyTorch
# preinstalled, no package registry) in one git-ignored folder, carried by the device call:
#
#   bash bench/gpu_wheels.sh [BUNDLE]        (default: .gpu_bundle in the repo root)
#
# Needs the project's environment (make setup: its venv, the cached stardist wheel) and PyPI.
# BUNDLE/ then holds
#   wheels/  the Python packages the GPU machine lacks, at the project venv's versions (the ones
#            the suite ran with): pure-Python ones built or fetched as py3 wheels (fvcore, iopath and
#            antlr4-python3-runtime exist only as source distributions), compiled ones as CPython
#            3.12 manylinux wheels (pycocotools, orjson). What the GPU machine already has (numpy,
#            Pillow, PyYAML, tabulate, tqdm, cloudpickle, portalocker, tifffile, opencv, matplotlib:
#            /work/.library/device/KINDS.md) is not carried.
#   site/    detectron2's Python code: the `detectron2` package of the sal-detectron2==0.7.2 wheel
#            (environment notes; tagged cp310 but pure Python apart from its C++ extension, which is
#            left out: it cannot load on Python 3.12, and point_sup.compat stands in for it).
#   nuclei/  the nuclei datasets pre-built (tiles, masks, P10 and mixed annotation files), so the
#            GPU machine needs neither the stardist wheel nor the point simulator.
# and checks that BUNDLE plus the repo's tracked files stay under the device's 64 MiB.
# docs/gpu_acceptance.md has the device command that installs and uses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${1:-$ROOT/.gpu_bundle}"
PY="${PY:-$ROOT/.venv/bin/python}"
D2_WHEEL_SPEC="sal-detectron2==0.7.2"
PURE=(fvcore iopath omegaconf antlr4-python3-runtime yacs termcolor)
COMPILED=(pycocotools orjson)
LIMIT_BYTES=$((64 * 1024 * 1024))

log() { printf '[gpu_wheels] %s\n' "$*"; }
# This machine's pip config lists local wheel folders that may be absent; their warnings are noise.
pip_q() { "$PY" -m pip "$@" --disable-pip-version-check -q 2> >(grep -v "is neither a file nor a directory" >&2); }
version() { "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

[ -x "$PY" ] || { log "no $PY: run 'make setup' first (or set PY)"; exit 1; }
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/site"

for name in "${PURE[@]}"; do
    spec="$name==$(version "$name")"
    log "pure Python: $spec"
    pip_q wheel --no-deps -w "$BUNDLE/wheels" "$spec"
done

specs=()
for name in "${COMPILED[@]}"; do specs+=("$name==$(version "$name")"); done
log "CPython 3.12 manylinux: ${specs[*]}"
pip_q download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$BUNDLE/wheels" "${specs[@]}"

for whl in "$BUNDLE"/wheels/*.whl; do
    case "$(basename "$whl")" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-cp312-*.whl | *-cp312-abi3-*.whl | *-cp3*-abi3-*.whl) ;;
        *) log "$(basename "$whl") is neither pure Python nor built for CPython 3.12"; exit 1 ;;
    esac
done

log "detectron2's Python code from $D2_WHEEL_SPEC"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip_q download --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "$D2_WHEEL_SPEC"
"$PY" - "$tmp"/sal_detectron2-*.whl "$BUNDLE/site" <<'EOF'
import sys
import zipfile

wheel, target = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    members = [n for n in z.namelist() if n.startswith("detectron2/") and not n.endswith(".so")]
    z.extractall(target, members)
print(f"[gpu_wheels] {len(members)} files of detectron2/ (its _C extension left out)")
EOF

log "nuclei datasets"
"$PY" -W ignore - "$BUNDLE/nuclei" <<'EOF'
import sys

from point_sup.data import register_nuclei

paths = register_nuclei(sys.argv[1])
print(f"[gpu_wheels] {len(paths) - 1} annotation files under {sys.argv[1]}")
EOF

bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
tracked_bytes=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((bundle_bytes + tracked_bytes))
{
    echo "bench/gpu_wheels.sh bundle, made $(date -u +%Y-%m-%dT%H:%MZ) with $("$PY" --version)"
    echo "bundle: $bundle_bytes bytes; with the tracked files: $total of $LIMIT_BYTES bytes"
    (cd "$BUNDLE" && ls -l wheels && du -sb site nuclei)
} > "$BUNDLE/MANIFEST.txt"
log "bundle $(numfmt --to=iec "$bundle_bytes") + tracked files $(numfmt --to=iec "$tracked_bytes") = $(numfmt --to=iec "$total") (limit 64 MiB)"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
    log "over the device's 64 MiB: carry less"
    exit 1
fi
log "done: $BUNDLE (carry it: see docs/gpu_acceptance.md)"
