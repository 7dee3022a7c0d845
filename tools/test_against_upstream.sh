#!/usr/bin/env bash
# The test suite against upstream detectron2 built from source, with and without its C++ extension.
#
#   tools/test_against_upstream.sh SRC [PYTEST_ARGS...]
#
# SRC is a detectron2 source tree (`git clone https://github.com/facebookresearch/detectron2`, or
# `git archive` of one). The script links SRC's model-zoo configs where `setup.py develop` would,
# compiles detectron2/_C in place for the CPU (FORCE_CUDA=0; about 2 minutes on 2 cores), runs
# `make test` with SRC first on PYTHONPATH, then again on a copy of SRC's Python code without the
# compiled extension. The environment (.venv, from `make setup`) is not modified: SRC is used
# through PYTHONPATH only. Exit status: 0 when both runs pass.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$(cd "${1:?usage: tools/test_against_upstream.sh SRC [PYTEST_ARGS...]}" && pwd)"
shift
VENV="${VENV:-$ROOT/.venv}"
log() { printf '[test_against_upstream] %s\n' "$*"; }

[ -f "$SRC/setup.py" ] && [ -d "$SRC/detectron2" ] || { log "$SRC is not a detectron2 source tree"; exit 2; }
make -C "$ROOT" setup VENV="$VENV" >/dev/null
[ -e "$SRC/detectron2/model_zoo/configs" ] || ln -s "$SRC/configs" "$SRC/detectron2/model_zoo/configs"
if ! ls "$SRC"/detectron2/_C*.so >/dev/null 2>&1; then
    log "compiling detectron2/_C in $SRC (CPU only)"
    (cd "$SRC" && FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py build_ext --inplace >/dev/null)
fi
version="$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo 'unknown commit')"

log "1/2: detectron2 $version with its compiled extension"
PYTHONPATH="$SRC" "$VENV/bin/python" -c "import detectron2._C, detectron2; print('  using', detectron2.__file__)"
PYTHONPATH="$SRC" make -C "$ROOT" test VENV="$VENV" PYTEST_ARGS="$*"

# The same Python code without the extension: detectron2/ copied without _C*.so; projects/ and
# configs/ linked (detectron2.projects finds its projects next to the package, as in SRC).
plain="$(mktemp -d)"
trap 'rm -rf "$plain"' EXIT
cp -r "$SRC/detectron2" "$plain/detectron2"
rm -f "$plain"/detectron2/_C*.so
ln -sfn "$SRC/configs" "$plain/detectron2/model_zoo/configs"
ln -s "$SRC/projects" "$plain/projects"
ln -s "$SRC/configs" "$plain/configs"
log "2/2: detectron2 $version without its compiled extension"
PYTHONPATH="$plain" "$VENV/bin/python" -c "
import detectron2
try:
    import detectron2._C
except ImportError:
    print('  using', detectron2.__file__, '(no _C)')
else:
    raise SystemExit('detectron2._C still imports')"
PYTHONPATH="$plain" make -C "$ROOT" test VENV="$VENV" PYTEST_ARGS="$*"
log "both runs passed"
