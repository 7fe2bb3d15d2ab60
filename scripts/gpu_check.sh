#!/usr/bin/env bash
# Every CUDA path of openllm_hub checked against CPU fp32 on the same weights (scripts/gpu_check.py
# says what, how, and how to run it on the GPU machine with the device tool).
#
#   scripts/gpu_check.sh [--cpu] [--out report.json] [--only PREFIX,...] [--perturb]
#
# Our packages are not installed on the GPU machine (they pin torch==2.13.0; it has torch 2.11), so
# this puts the repo's src/ folders on PYTHONPATH, after /tmp/site (the carried wheels and the CUDA
# build of llama-cpp-python that scripts/gpu_build_llama_cpp.sh installs there), when present.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
P="$ROOT/src"
for d in "$ROOT"/plugins/*/src; do P="$P:$d"; done
[ -d /tmp/site ] && P="/tmp/site:$P"
export PYTHONPATH="$P${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) > 8 ? 8 : $(nproc) ))}"
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
