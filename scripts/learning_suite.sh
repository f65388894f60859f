#!/usr/bin/env bash
# The learning suite (dreamer_fast/bench/learning.py): trains V1/V2/V3 on Pendulum-v1,
# V3 on CartPole-v1 and on dm_control cartpole-swingup (proprio; --rows ... to add the
# pixel run), each with the defaults and one torch thread, at most --jobs 2 at a time,
# niced; writes a curve PNG, a summary .md and the running means .json per run under
# benchmarks/results/, then the table. Arguments go to `learning run`, e.g.
#   scripts/learning_suite.sh --rows v1-pendulum,v2-pendulum --seeds 0,1
#   scripts/learning_suite.sh --rows v3-dmc-cartpole-swingup-pixels --steps 20000
# An interrupted run resumes from runs/learning/<row>-seed<seed> on the next call;
# `python -m dreamer_fast.bench.learning report --row R` reports one as it is now.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" MUJOCO_GL="${MUJOCO_GL:-egl}"
exec nice -n "${NICE:-10}" python -m dreamer_fast.bench.learning run "$@"
