#!/usr/bin/env bash
# The cuda_emu tests (python_tests/test_cuda_emu.py) with the emulation module built under
# AddressSanitizer and UndefinedBehaviorSanitizer: our CPU-side stand-in for
# compute-sanitizer memcheck over the real CUDA kernel files. Any report fails: ASan
# aborts at its first error, UBSan is built without recovery (-fno-sanitize-recover=all).
# Builds only the _cuda_emu target, into build/cuda-emu-asan (or DREAMER_FAST_ASAN_BUILD_DIR;
# the installed extension is left alone: the tests load the sanitized module through
# DREAMER_FAST_CUDA_EMU_MODULE).
# Run inside the project venv; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="${DREAMER_FAST_ASAN_BUILD_DIR:-build/cuda-emu-asan}"
command -v cmake >/dev/null 2>&1 || { echo "[asan] cmake not found on PATH" >&2; exit 1; }
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
echo "[asan] configuring ${build}"
# Debug: no link-time optimisation (pybind11 adds it to optimised builds; with the
# sanitizers it doubles the build time); the sanitized target itself is built with -O1 -g.
cmake -S . -B "$build" "${generator[@]}" -DPython_EXECUTABLE="$(command -v python)" \
  -DCMAKE_BUILD_TYPE=Debug -DDREAMER_FAST_CUDA=OFF -DDREAMER_FAST_CUDA_EMU=ON \
  -DDREAMER_FAST_CUDA_EMU_SANITIZE=address,undefined >/dev/null
echo "[asan] building _cuda_emu with -fsanitize=address,undefined"
cmake --build "$build" --target _cuda_emu
module="$(ls "$PWD/$build"/_cuda_emu*.so)"
asan_rt="$(g++ -print-file-name=libasan.so)"
[[ -f "$asan_rt" ]] || { echo "[asan] libasan.so not found (g++ -print-file-name)" >&2; exit 1; }
# libstdc++ preloaded too: the interpreter does not link it, and ASan's __cxa_throw
# interceptor must find the real one when it starts (else the first C++ exception aborts)
preload="$asan_rt $(g++ -print-file-name=libstdc++.so)"
echo "[asan] pytest -m cuda_emu with ${module##*/} (LD_PRELOAD ${preload})"
# detect_leaks=0: the interpreter's own allocations at exit are not ours to judge
LD_PRELOAD="$preload" \
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  DREAMER_FAST_CUDA_EMU_MODULE="$module" DREAMER_FAST_REQUIRE_CUDA_EMU=1 \
  python -m pytest -m cuda_emu python_tests/test_cuda_emu.py -q -p no:cacheprovider "$@"

# The step must be able to fail: a launch told a wider N than its tensors have reads past
# their ends, which ASan must report (in a child process: the report aborts it).
echo "[asan] an out-of-bounds launch must be reported"
set +e
report="$(LD_PRELOAD="$preload" ASAN_OPTIONS="detect_leaks=0" DREAMER_FAST_CUDA_EMU_MODULE="$module" \
  python -c '
import importlib.util, os, torch
spec = importlib.util.spec_from_file_location("dreamer_fast._cuda_emu", os.environ["DREAMER_FAST_CUDA_EMU_MODULE"])
emu = importlib.util.module_from_spec(spec); spec.loader.exec_module(emu)
x = torch.zeros(4, 8); out = torch.empty(4, 8)
emu.reverse_scan_forward(x, x, torch.zeros(8), out, 4, 9)
' 2>&1)"
rc=$?
set -e
if [[ $rc -eq 0 ]] || ! grep -q "AddressSanitizer: heap-buffer-overflow" <<<"$report"; then
  echo "[asan] an out-of-bounds read went unreported (rc=$rc):" >&2
  tail -20 <<<"$report" >&2
  exit 1
fi
echo "[asan] ok: no sanitizer report in the cuda_emu tests; the out-of-bounds launch was reported"
