#!/usr/bin/env bash
# One call on a CUDA machine: build the extension with the CUDA kernels in place, run
# every CUDA test, then the GPU benchmarks, and leave the logs and tables in one folder.
#
#   benchmarks/gpu_check.sh [OUT_DIR]     (default benchmarks/results/gpu-<date>)
#
# Expects torch with CUDA, nvcc, cmake, ninja, pybind11, scikit-build-core and pytest
# already installed (nothing is downloaded: the build runs without isolation and
# without dependencies). gymnasium / dm_control are not needed: the environment and
# trainer test modules skip themselves without gymnasium (checked by collecting with it
# missing), and the selected tests are the CUDA cases of every op test, marked `cuda`.
set -euo pipefail
cd "$(dirname "$0")/.."
# python3, not python: some CUDA images have only the former; override with PYTHON=...
PY=${PYTHON:-python3}

OUT_DIR=${1:-benchmarks/results/gpu-$(date +%F)}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
  | tee "$OUT_DIR/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT_DIR/device.txt" || true

# 1. build (sm_80 / sm_90 by default; DREAMER_FAST_CUDA=ON fails loudly without nvcc)
$PY -m pip install --no-build-isolation --no-deps -e . \
  -C cmake.define.DREAMER_FAST_CUDA=ON 2>&1 | tee "$OUT_DIR/build.log"
$PY -c "import dreamer_fast as d; assert d.has_cuda_kernels(), 'built without CUDA kernels'"

# 2. every CUDA test case (fast vs reference on the GPU, CUDA-graph capture)
$PY -m pytest python_tests -m cuda -q -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests.log"

# 3. benchmarks on the GPU (interleaved medians, fast vs eager vs torch.compile)
$PY -m dreamer_fast bench --device cuda --suite scan --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/bench-scan.log"
$PY -m dreamer_fast bench --device cuda --suite rssm,imagine --matmul-precision highest,high \
  --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/bench-rssm-imagine.log"
echo "results in $OUT_DIR"
