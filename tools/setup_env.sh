#!/usr/bin/env bash
# One-command, idempotent set-up of a Python environment for point_sup.
#
#   tools/setup_env.sh [VENV]        (default VENV: .venv; `make` calls this)
#
# VENV may be an existing virtualenv or conda env: whatever torch/torchvision and
# detectron2 it already has are used untouched. Otherwise:
#   torch       : torch==2.14.1 torchvision==0.29.1 (override with TORCH_SPEC="...")
#   detectron2  : the first route that works, in this order
#                 1. existing  - detectron2 is already importable in VENV: used untouched
#                 2. source    - GitHub reachable: upstream source install (needs a compiler)
#                 3. offline   - the sal-detectron2==0.7.2 wheel from PyPI (pure-Python part of
#                                detectron2 main of mid-2024; point_sup.compat supplies what its
#                                un-loadable C++ extension would)
#                 Force one with POINT_SUP_D2_ROUTE=existing|source|offline.
# A stamp file makes a second run a no-op (about a second) until an input file changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
D2_GIT_URL="https://github.com/facebookresearch/detectron2.git"
D2_OFFLINE_SPEC="sal-detectron2==0.7.2"
ROUTE="${POINT_SUP_D2_ROUTE:-auto}"

log() { printf '[setup_env] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.point_sup_setup_stamp"
digest="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
    "$ROOT/requirements-eval.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1) $TORCH_SPEC $ROUTE"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] \
    && "$PY" -c "import point_sup" >/dev/null 2>&1; then
    log "environment $VENV is up to date ($(cat "$VENV/.point_sup_d2_route" 2>/dev/null || echo '?'))"
    exit 0
fi

# This machine's pip config lists local wheel folders that may be absent; their warnings are noise.
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip_install() { quiet_pip install --disable-pip-version-check -q "$@"; }

pip_install --upgrade pip wheel 'setuptools<81'

if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "torch: using installed $("$PY" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")')"
else
    log "torch: installing $TORCH_SPEC (several GB on first install; a few minutes)"
    # shellcheck disable=SC2086
    pip_install $TORCH_SPEC
fi

pip_install -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
# The LVIS and Cityscapes evaluators, without the dependencies they declare (see the file).
pip_install --no-deps -r "$ROOT/requirements-eval.txt"

# Optional: headless Chromium and its driver for the annotation tool's browser test
# (tests/annotation/test_browser.py, which is skipped without them). Never fails the set-up.
install_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        log "chromium: not installed, and apt-get is unavailable or this is not root: skipped (the browser" \
            "test will be skipped; install Debian's chromium and chromium-driver to run it)"
        return 0
    fi
    log "chromium: apt-get install chromium chromium-driver (for the annotation tool's browser test)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
        # Fresh machines may have no package lists yet.
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
            || log "chromium: apt-get failed: skipped (the browser test will be skipped)"
    fi
}
install_chromium

d2_importable() { "$PY" -c "import detectron2" >/dev/null 2>&1; }
github_reachable() {
    command -v git >/dev/null 2>&1 \
        && timeout 20 git ls-remote --exit-code "$D2_GIT_URL" HEAD >/dev/null 2>&1
}
install_source() {
    log "detectron2 route 2 (source): pip install --no-build-isolation git+$D2_GIT_URL"
    pip_install --no-build-isolation "git+$D2_GIT_URL"
}
install_offline() {
    local site
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    log "detectron2 route 3 (offline): $D2_OFFLINE_SPEC into $site (its C++ extension cannot load here)"
    # The wheel is tagged cp310 and declares stricter pins (numpy<2, ...) than its code needs, so
    # it is unpacked without dependency resolution; requirements.txt supplies the real runtime deps.
    # The wheel also ships a top-level `tools` package (detectron2's scripts) that would shadow
    # other `tools` packages, so it goes to a scratch dir and only detectron2 is moved in.
    local tmp
    tmp="$(mktemp -d)"
    quiet_pip install --disable-pip-version-check -q --no-deps --target "$tmp" \
        --python-version 3.10 --only-binary=:all: "$D2_OFFLINE_SPEC"
    rm -rf "$site/detectron2" "$site"/sal_detectron2-*.dist-info
    mv "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$site/"
    rm -rf "$tmp"
}

case "$ROUTE" in
    auto)
        if d2_importable; then
            chosen="existing"
        elif github_reachable && install_source; then
            chosen="source"
        else
            log "GitHub unreachable or source install failed: taking the offline route"
            install_offline
            chosen="offline"
        fi ;;
    existing) d2_importable || { log "POINT_SUP_D2_ROUTE=existing but detectron2 is not importable in $VENV"; exit 1; }
              chosen="existing" ;;
    source) install_source; chosen="source" ;;
    offline) install_offline; chosen="offline" ;;
    *) log "unknown POINT_SUP_D2_ROUTE=$ROUTE (expected existing|source|offline)"; exit 2 ;;
esac

pip_install --no-deps --no-build-isolation -e "$ROOT"

summary="$("$PY" -W ignore - <<'EOF'
import point_sup  # applies point_sup.compat before detectron2 is used
import detectron2, torch
from point_sup import compat
ext = "C++ extension loaded" if compat.HAS_C_EXTENSION else "no C++ extension (point_sup.compat: clear errors)"
print(f"detectron2 {detectron2.__version__} at {detectron2.__path__[0]}, {ext}; torch {torch.__version__}")
EOF
)"
# The offline demo/test data (a real nuclei image inside the 3 MB stardist wheel), fetched once.
"$PY" -W ignore -c "from point_sup.data.nuclei import fetch_stardist_wheel as f; print('[setup_env] nuclei data:', f())"
log "detectron2 route taken: $chosen"
log "$summary"
echo "$chosen: $summary" > "$VENV/.point_sup_d2_route"
echo "$digest" > "$stamp"
