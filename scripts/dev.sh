#!/usr/bin/env bash
# Sets up everything on a fresh machine (Python + pip is all it needs) and runs a job:
#   scripts/dev.sh train [dreamer-fast train args]  build, then train (default: DreamerV3
#                                             on gymnasium Pendulum-v1, CPU)
#   scripts/dev.sh test  [pytest args]       build, then run the test suite
#   scripts/dev.sh bench [dreamer-fast args]  build, then run `dreamer-fast bench`
#   scripts/dev.sh setup                      build only
# Uses the active virtual environment, or creates ./.venv. torch is installed only
# when none is importable, pinned to 2.13.0 (an unpinned torch pulls a multi-GB
# CUDA build); the extension is then built against whatever torch is there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "[dev] creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

pip_quiet() { python -m pip install --disable-pip-version-check -q "$@"; }

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[dev] installing torch==2.13.0"
  pip_quiet "torch==2.13.0"
fi
# Build tools (torch is deliberately not a build requirement, so the build runs
# without isolation and needs these present) and the test tools.
pip_quiet "scikit-build-core>=0.10" "pybind11>=2.12" ninja numpy pytest pytest-benchmark
# The trainer's environments. dm_control 1.0.50 fails with mujoco 4: both in one pip call,
# mujoco pinned (installing them separately can leave a broken mujoco package).
if ! python -c "import dm_control.suite, gymnasium, pygame" >/dev/null 2>&1; then
  echo "[dev] installing gymnasium[classic-control], dm_control, mujoco==3.17.0"
  pip_quiet "gymnasium[classic-control]>=1.0" dm_control "mujoco==3.17.0"
fi
echo "[dev] building dreamer_fast against torch $(python -c 'import torch; print(torch.__version__)')"
pip_quiet --no-build-isolation -e .

job="${1:-test}"
shift || true
case "$job" in
  # Passive OpenMP waits: on a busy machine spinning worker threads stall every GEMM.
  train) OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" exec dreamer-fast train "$@" ;;
  test)  exec python -m pytest python_tests -q "$@" ;;
  bench) exec dreamer-fast bench "$@" ;;
  setup) ;;
  *) echo "usage: scripts/dev.sh {train|test|bench|setup} [args]" >&2; exit 2 ;;
esac
