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
# ggml-cuda links cuBLAS and the driver library. A CUDA toolkit without them (seen on a CPU machine's
# image: nvcc and cudart only) fails at CMake's generate step ("CUDA::cublas ... target was not
# found"); then point CMake at the ones torch's pip packages (nvidia-cublas) and the driver bring.
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NV=$("$PY" -c "import nvidia; print(' '.join(nvidia.__path__))" 2>/dev/null || true)
LIB_ARGS=""
for pair in cublas:libcublas.so cublasLt:libcublasLt.so cuda_driver:libcuda.so; do
  name=${pair%%:*}; file=${pair#*:}
  if ls "$CUDA_HOME"/lib64/"$file"* "$CUDA_HOME"/targets/*/lib/"$file"* >/dev/null 2>&1; then continue; fi
  found=$(find $NV /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu "$CUDA_HOME"/lib64/stubs \
          -name "$file*" 2>/dev/null | sort | head -1 || true)
  if [ -n "$found" ]; then
    LIB_ARGS="$LIB_ARGS -DCUDA_${name}_LIBRARY=$found"
    echo "the CUDA toolkit has no $file: using $found"
  else
    echo "warning: no $file in $CUDA_HOME nor elsewhere; the build will likely fail" >&2
  fi
done
if [ ! -f "$CUDA_HOME/include/cublas_v2.h" ] && ! ls "$CUDA_HOME"/targets/*/include/cublas_v2.h >/dev/null 2>&1; then
  HDR=$(find $NV -name cublas_v2.h 2>/dev/null | head -1 || true)
  if [ -n "$HDR" ]; then
    LIB_ARGS="$LIB_ARGS -DCMAKE_CUDA_FLAGS=-I$(dirname "$HDR") -DCMAKE_CXX_FLAGS=-I$(dirname "$HDR")"
    echo "cuBLAS headers from $(dirname "$HDR")"
  fi
fi
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DGGML_CUDA_FA=$FA$LIB_ARGS ${CMAKE_ARGS_EXTRA:-}"
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
# torch first: it loads the CUDA libraries (cuBLAS from pip's nvidia packages) that ggml-cuda links, as
# the check does
PYTHONPATH="$SITE" "$PY" -c "import torch, llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', bool(llama_cpp.llama_supports_gpu_offload()))" \
  || echo "warning: the built llama_cpp does not import (see above)" >&2
rm -rf "$SRC"
