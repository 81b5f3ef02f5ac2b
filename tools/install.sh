#!/usr/bin/env bash
# Make this machine ready for mmq: idempotent, safe to run again (seconds when all is in place).
#
#   bash tools/install.sh            # into the active Python (python3 on PATH, or $PYTHON)
#
# Environment:
#   PYTHON            interpreter to install into (default: python3)
#   MMQ_WHEELHOUSE    a folder that may hold a ready mmcv-2.1.0 wheel for this Python/torch;
#                     when it does, nothing is compiled
#   MMQ_CACHE         where a wheel built here is kept for later installs
#                     (default: ~/.cache/mmq/wheelhouse)
#
# mmcv 2.1.0 has no wheel for torch 2.14 on the registry: when no wheel is found it is built
# once from its source distribution (compiled CPU ops, C++20, about 20 minutes on 2 cores),
# the wheel is kept in $MMQ_CACHE, and every later install reuses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CACHE="${MMQ_CACHE:-$HOME/.cache/mmq/wheelhouse}"
MMCV_VERSION="2.1.0"
PIP=("$PYTHON" -m pip install --disable-pip-version-check --no-input)

step() { printf '\n[mmq install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
    echo "mmq install: needs Python 3.11 (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
    exit 2
}

step "1/4 torch, torchvision and build tools (requirements/build.txt)"
"${PIP[@]}" -q -r "$ROOT/requirements/build.txt"

step "2/4 pinned runtime stack (requirements/runtime.txt)"
"${PIP[@]}" -q -r "$ROOT/requirements/runtime.txt"

mmcv_ok() {
    "$PYTHON" - <<EOF 2>/dev/null
import mmcv
assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__
from mmcv.ops import nms, RoIAlign  # compiled ops present
EOF
}

find_wheel() {  # print the first mmcv wheel for this Python in the folders given
    local dir
    for dir in "$@"; do
        [ -n "$dir" ] && [ -d "$dir" ] || continue
        ls "$dir"/mmcv-"$MMCV_VERSION"-cp311-cp311-linux_x86_64.whl 2>/dev/null | head -n 1
    done | head -n 1
}

step "3/4 mmcv $MMCV_VERSION with compiled ops"
if mmcv_ok; then
    echo "mmcv $MMCV_VERSION with compiled ops is already installed."
else
    WHEEL="$(find_wheel "${MMQ_WHEELHOUSE:-}" "$CACHE")"
    if [ -z "$WHEEL" ]; then
        mkdir -p "$CACHE"
        BUILD="$(mktemp -d)"
        LOG="$CACHE/mmcv-$MMCV_VERSION-build.log"
        echo "No mmcv $MMCV_VERSION wheel in MMQ_WHEELHOUSE='${MMQ_WHEELHOUSE:-}' or $CACHE."
        echo "Building it from source once (77 compile units, about 20 minutes on 2 cores)."
        echo "Build log: $LOG    (follow it with: tail -f $LOG)"
        "$PYTHON" -m pip download -q --no-deps --no-build-isolation --no-binary mmcv \
            -d "$BUILD" "mmcv==$MMCV_VERSION"
        tar -xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
        # torch >= 2.14 headers require C++20; mmcv 2.1.0 hard-codes -std=c++17.
        sed -i "s/'-std=c++17'/'-std=c++20'/g" "$BUILD/mmcv-$MMCV_VERSION/setup.py"
        (
            cd "$BUILD/mmcv-$MMCV_VERSION"
            MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
                "$PYTHON" -m pip wheel -v --no-deps --no-build-isolation -w "$CACHE" . >"$LOG" 2>&1
        ) &
        pid=$!
        start=$SECONDS
        while kill -0 "$pid" 2>/dev/null; do
            sleep 30
            done_units=$(grep -c '^ *\[[0-9]*/[0-9]*\]' "$LOG" 2>/dev/null || true)
            echo "  building mmcv: $((SECONDS - start)) s, ${done_units:-0}/77 compile units started"
        done
        wait "$pid" || { echo "mmcv build failed; see $LOG" >&2; exit 1; }
        rm -rf "$BUILD"
        WHEEL="$(find_wheel "$CACHE")"
        echo "Built $WHEEL in $((SECONDS - start)) s; later installs reuse it."
    else
        echo "Using $WHEEL"
    fi
    "${PIP[@]}" -q --no-deps "$WHEEL"
    mmcv_ok || { echo "mmcv installed but its compiled ops do not import" >&2; exit 1; }
fi

step "4/4 mmq itself (editable) and the test tools"
"${PIP[@]}" -q --no-deps --no-build-isolation -e "$ROOT"
"${PIP[@]}" -q -r "$ROOT/requirements/tests.txt"
"$PYTHON" -c "import mmq; print('mmq', mmq.__version__, 'ready')"
