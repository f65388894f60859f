#!/usr/bin/env bash
# Compile checks of the CUDA code on a machine without a GPU or a CUDA build of torch:
#  1. nvcc -c of every kernel file (csrc/<family>/*.cu) for sm_80 and sm_90, and that no
#     kernel file launches with <<<>>> (every launch goes through cuda::launch_kernel, which
#     the host emulation of csrc/emu/ replaces);
#  2. g++ -fsyntax-only of every C++ file with DREAMER_FAST_WITH_CUDA defined, against
#     the installed torch's headers and the CUDA toolkit's. A CPU-only torch wheel lacks
#     one generated header (c10/cuda/impl/cuda_cmake_macros.h); an empty stand-in is
#     enough for a syntax check.
# Skips (exit 0, with a message) when nvcc is not on PATH. Run inside the project venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v nvcc >/dev/null 2>&1; then
  echo "[cuda-check] nvcc not found: skipping the CUDA compile checks"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

mapfile -t cu_files < <(find csrc -name '*.cu' | sort)
# csrc/emu/ is the host emulation of the kernels: C++ built against emu/cuda_emu.h (the
# normal build compiles it whenever the CUDA headers are found), not against CUDA.
mapfile -t cpp_files < <(find csrc -name '*.cpp' -not -path 'csrc/emu/*' | sort)
if grep -n '<<<' "${cu_files[@]}"; then
  echo "[cuda-check] launch through cuda::launch_kernel (common/cuda_common.cuh), not <<<>>>" >&2
  exit 1
fi
for cu in "${cu_files[@]}"; do
  for arch in 80 90; do
    echo "[cuda-check] nvcc -c ${cu} (sm_${arch})"
    nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch="sm_${arch}" -Icsrc -c "$cu" \
      -o "${tmp}/$(basename "$cu").sm${arch}.o"
  done
done

# The toolkit's include directory, as nvcc itself reports it (nvcc may be a wrapper).
cuda_include="$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)"
mapfile -t torch_includes < <(python -c \
  "import torch.utils.cpp_extension as c; print('\n'.join('-isystem' + p for p in c.include_paths()))")
read -r -a python_includes <<< "$(python -m pybind11 --includes)"
mkdir -p "${tmp}/stub/c10/cuda/impl"
[[ -f "$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')/include/c10/cuda/impl/cuda_cmake_macros.h" ]] \
  || echo "#pragma once" > "${tmp}/stub/c10/cuda/impl/cuda_cmake_macros.h"
for cpp in "${cpp_files[@]}"; do
  echo "[cuda-check] g++ -fsyntax-only -DDREAMER_FAST_WITH_CUDA ${cpp}"
  g++ -std=c++17 -fsyntax-only -DDREAMER_FAST_WITH_CUDA=1 -I"${tmp}/stub" "${torch_includes[@]}" \
    "${python_includes[@]}" -I"${cuda_include}" -Icsrc "$cpp"
done
echo "[cuda-check] ok"
