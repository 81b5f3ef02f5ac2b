#!/usr/bin/env bash
# Stage what tools/device_check.sh installs on a GPU machine that has Python 3.12, torch (CUDA)
# and no package registry: Python 3.12 wheels of the OpenMMLab stack and mmcv's source
# distribution (built there, with its CUDA ops), into the ignored folder .whl/.
#
#   bash tools/stage_device_wheels.sh          # here, where pip reaches a package registry
#
# Packages the GPU image already holds (numpy, scipy, matplotlib, opencv, rich, pyyaml, tqdm,
# pytest, setuptools, ...) are not staged: see the device library's KINDS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
PYTHON="${PYTHON:-python3}"
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
# The same pins as requirements/runtime.txt, for CPython 3.12 on x86-64.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" \
    mmengine==0.10.7 mmdet==3.3.0 timm==1.0.31 pycocotools==2.0.11 shapely==2.2.0 \
    terminaltables==3.1.10 addict==2.4.0 yapf==0.43.0 termcolor==3.3.0 platformdirs==4.14.8 \
    six==1.17.0 pytest-timeout==2.4.0
# mmcv 2.1.0 has no wheel for torch 2.11 + CUDA 13: device_check.sh builds it from source.
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$DEST" \
    mmcv==2.1.0
ls -l "$DEST"
du -sh "$DEST"
