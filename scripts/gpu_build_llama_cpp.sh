#!/usr/bin/env bash
# GPU machine, phase 1 of the GPU check: install the carried wheels and build llama-cpp-python 0.3.36
# with CUDA for the H200 (sm_90) from the carried source, into /tmp/site; prints the build time.
#
#   scripts/gpu_build_llama_cpp.sh        # needs .gpu/ from scripts/gpu_prepare.sh (carry it)
#
# A separate phase (and a separate device `run` if need be) because the CUDA build may take minutes:
# with it inside the check the 8-minute budget would not hold. Build options:
#   -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF   (as the issue asks), plus
#   -DGGML_CUDA_FA=OFF: skips ggml's FlashAttention CUDA kernels, the bulk of the template instances
#   to compile; llama-cpp-python never enables flash attention unless asked (flash_attn=False ->
#   LLAMA_FLASH_ATTN_TYPE_DISABLED) and openllm_hub does not ask. GPU_BUILD_FA=1 builds them anyway.
# Nothing is downloaded: build isolation is off, the image's scikit-build-core, cmake, ninja and nvcc
# do the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$ROOT"/.gpu/wheels/*.whl
echo "installed $(ls "$ROOT"/.gpu/wheels | wc -l) carried wheels into $SITE"

SDIST=$(ls "$ROOT"/.gpu/sdist/llama_cpp_python-0.3.36*.tar.gz | head -1)
SRC=$(mktemp -d)
tar xzf "$SDIST" -C "$SRC"
FA=$([ "${GPU_BUILD_FA:-0}" = 1 ] && echo ON || echo OFF)
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DGGML_CUDA_FA=$FA ${CMAKE_ARGS_EXTRA:-}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PATH="/usr/local/cuda/bin:$PATH"
LOG=${OUT:-/tmp}/llama_cpp_build.log
echo "building llama-cpp-python 0.3.36 (CMAKE_ARGS=$CMAKE_ARGS, $CMAKE_BUILD_PARALLEL_LEVEL jobs; log $LOG)"
t0=$(date +%s)
# Bounded (GPU_BUILD_TIMEOUT_S, default 400 s) so that the check after it in the same 10-minute device
# command still runs (its -ngl paths then SKIP); a build that needs longer: run this script alone with
# GPU_BUILD_TIMEOUT_S=580, then the check in the next call while the machine is warm (/tmp/site stays).
if ! timeout "${GPU_BUILD_TIMEOUT_S:-400}" "$PY" -m pip wheel -v --no-index --no-deps --no-build-isolation \
     -w "$SRC/wheel" "$SRC/llama_cpp_python-0.3.36" > "$LOG" 2>&1; then
  tail -40 "$LOG"; echo "llama-cpp-python CUDA build FAILED or timed out after $(( $(date +%s) - t0 )) s" >&2
  rm -rf "$SRC"; exit 1
fi
t1=$(date +%s)
"$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$SRC"/wheel/llama_cpp_python-*.whl
echo "llama-cpp-python CUDA build: $(( t1 - t0 )) s (install $(( $(date +%s) - t1 )) s)"
PYTHONPATH="$SITE" "$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', bool(llama_cpp.llama_supports_gpu_offload()))"
rm -rf "$SRC"
