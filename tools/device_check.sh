#!/usr/bin/env bash
# mmq on a CUDA GPU, from a bare Python 3.12 + torch (CUDA) image with no package registry.
#
#   bash tools/stage_device_wheels.sh     # first, where pip reaches a registry: fills .whl/
#   bash tools/device_check.sh [LOG_DIR]  # on the GPU machine, from the repository root
#
# 1. installs the staged wheels into /tmp/mmq-site (nothing outside it is touched);
# 2. builds mmcv 2.1.0 from its source distribution WITH its compiled ops, CUDA kernels for
#    this GPU's architecture only (mmdet imports mmcv.ops, so there is no useful check
#    without them); the build is capped at MMQ_MMCV_BUILD_S seconds (default 420);
# 3. runs the CUDA tests (tests/test_cuda.py) and the device plumbing tests;
# 4. times W4A4 AdaLog + FPCS calibration of a DINOv2 ViT-S/14-shaped backbone on the GPU
#    against the same run on the CPU (benchmarks/fused_scoring_speed.py --device).
# Every step prints its wall time; logs go to LOG_DIR (default /tmp/mmq-device-check).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOGS="${1:-/tmp/mmq-device-check}"
SITE=/tmp/mmq-site
PYTHON="${PYTHON:-python3}"
mkdir -p "$LOGS" "$SITE"
cd "$ROOT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
step() { printf '\n[device check +%ds] %s\n' "$((SECONDS - t0))" "$*"; }

ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run tools/stage_device_wheels.sh where a package registry is reachable, and carry .whl" >&2; exit 2; }
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"' || exit 2

step "1/4 staged wheels -> $SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"

step "2/4 mmcv 2.1.0 with CUDA ops (log $LOGS/mmcv_build.log)"
if "$PYTHON" -c 'from mmcv.ops import RoIAlign, nms' 2>/dev/null; then
    echo "mmcv with compiled ops already importable"
else
    BUILD="$(mktemp -d)"
    tar -xzf .whl/mmcv-2.1.0.tar.gz -C "$BUILD"
    ARCH="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
    CXX_STD="$("$PYTHON" -c 'import torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 14) else "c++17")')"
    sed -i "s/'-std=c++17'/'-std=$CXX_STD'/g" "$BUILD/mmcv-2.1.0/setup.py"
    start=$SECONDS
    (cd "$BUILD/mmcv-2.1.0" && MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
        MAX_JOBS="$(nproc)" timeout "${MMQ_MMCV_BUILD_S:-420}" \
        "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$BUILD/dist" . \
        >"$LOGS/mmcv_build.log" 2>&1) || {
        echo "mmcv build failed or ran past ${MMQ_MMCV_BUILD_S:-420} s; tail of the log:" >&2
        tail -n 30 "$LOGS/mmcv_build.log" >&2
        exit 1
    }
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" --upgrade \
        "$BUILD"/dist/mmcv-*.whl
    echo "mmcv built for sm_${ARCH/./} in $((SECONDS - start)) s"
    "$PYTHON" -c 'import torch; from mmcv.ops import roi_align; x = torch.rand(1, 4, 8, 8, device="cuda"); r = torch.tensor([[0, 0, 0, 4, 4.]], device="cuda"); print("mmcv RoIAlign on", roi_align(x, r, (2, 2), 1.0, 0, "avg", True).device)'
fi

step "3/4 CUDA tests and device plumbing tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_device.py \
    2>&1 | tee "$LOGS/pytest_cuda.log"

step "4/4 calibration timing, GPU against CPU (log $LOGS/timing.log)"
"$PYTHON" benchmarks/fused_scoring_speed.py --device cuda --blocks "${MMQ_CHECK_BLOCKS:-12}" \
    --images "${MMQ_CHECK_IMAGES:-32}" --threads "$(nproc)" 2>&1 | tee "$LOGS/timing.log"

step "done"
