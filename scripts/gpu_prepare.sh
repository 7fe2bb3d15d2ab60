#!/usr/bin/env bash
# Prepare, on a machine with network access, what the GPU check needs on a GPU machine that has none.
#
#   scripts/gpu_prepare.sh            # fills .gpu/ (ignored by git through .git/info/exclude)
#
# .gpu/sdist/   llama-cpp-python 0.3.36 source (built there by scripts/gpu_build_llama_cpp.sh with CUDA)
# .gpu/wheels/  the Python packages the GPU machine's image lacks, for CPython 3.12 x86-64
#               (its image has torch 2.11, transformers, peft, safetensors, sentencepiece, tokenizers,
#               numpy, pluggy, tqdm, accelerate, scikit-build-core, cmake, ninja; see the device
#               notes' package list). Our own packages are NOT installed there: they pin torch==2.13.0,
#               so the check puts their src/ folders on PYTHONPATH instead.
#
# Everything under .gpu/ travels with the working tree when a device `run` names it in `carry`;
# tree plus carried files must stay under 64 MiB, so this script prints the total at the end and
# fails when it is over.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >> "$EXCLUDE"
mkdir -p .gpu/sdist .gpu/wheels

# Exact versions from requirements/constraints.txt (the versions the project is tested with).
WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing_extensions==4.16.0 platformdirs==4.14.8 gguf==0.19.0 rwkv==0.8.32 diskcache==5.6.3)
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17 5; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for w in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .gpu/wheels "$w"
done
# The sdist is 73 MiB: a packed .git history (36 MiB) and llama.cpp's test vocabularies (models/),
# docs, tools, examples, benches and tests, none of which the library build uses (llama.cpp is a CMake
# subproject there, so its tests/tools/examples are off, and LLAVA_BUILD=OFF skips tools/mtmd), plus
# the sources of GPU backends other than CUDA. Slimmed to about 4 MiB.
SLIM=.gpu/sdist/llama_cpp_python-0.3.36-slim.tar.gz
if [ ! -f "$SLIM" ]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
  tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
  v="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp"
  rm -rf "$tmp"/llama_cpp_python-0.3.36/.git  # a packed git history, 36 MiB
  rm -rf "$v"/{models,docs,tools,examples,benches,tests,media,pocs,app,ci,skills,gguf-py,conversion,scripts,grammars}
  rm -rf "$v"/ggml/src/{ggml-sycl,ggml-opencl,ggml-vulkan,ggml-hexagon,ggml-metal,ggml-et,ggml-cann,ggml-musa,ggml-webgpu,ggml-zdnn}
  tar czf "$SLIM" -C "$tmp" llama_cpp_python-0.3.36
  rm -rf "$tmp"
fi

# One version of each package, or the install there stops.
dups=$(ls .gpu/wheels | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dups" ]; then echo "two versions of: $dups (delete the old wheels in .gpu/wheels)" >&2; exit 1; fi

carried=$(du -sb .gpu | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
printf '.gpu: %d MiB (sdist %s, wheels %s); working tree %d MiB; together %d MiB of 64\n' \
  $((carried >> 20)) "$(du -sh .gpu/sdist | cut -f1)" "$(du -sh .gpu/wheels | cut -f1)" $((tree >> 20)) $((total >> 20))
if [ "$total" -ge $((64 << 20)) ]; then echo "over the 64 MiB a device run may carry" >&2; exit 1; fi
