#!/usr/bin/env bash
# Every check the project has: pytest over core, plugins and examples, then mypy and ruff.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
export OPENLLM_HUB_NO_PROGRESS=1
# keep test runs away from the user's own config and cache
export OPENLLM_HUB_CONFIG_DIR="${OPENLLM_HUB_CONFIG_DIR:-$(mktemp -d)}"
export OPENLLM_HUB_CACHE_DIR="${OPENLLM_HUB_CACHE_DIR:-$(mktemp -d)}"
for hook in scripts/setup.d/*.sh; do
  [ -e "$hook" ] && { bash "$hook" || exit 1; }
done
status=0
echo "==> pytest"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=1
echo "==> mypy --strict src/openllm_hub"
"$VENV/bin/mypy" --strict src/openllm_hub || status=1
echo "==> mypy --strict on every plugin, the demo trainer and the plugins' test oracles"
"$VENV/bin/mypy" --strict plugins/*/src/openllm_hub_* demo_train/src/openllm_hub_demo_train \
  examples/third_party_plugin/src/openllm_hub_bigram \
  plugins/llama/tests/llama_reference.py plugins/llama/tests/llama_lora_tiny.py \
  plugins/chatglm/tests/chatglm_reference.py plugins/glm130b/tests/glm130b_reference.py || status=1
echo "==> mypy --strict scripts/gpu_check.py"
"$VENV/bin/mypy" --strict scripts/gpu_check.py || status=1
echo "==> ruff"
"$VENV/bin/ruff" check . || status=1
exit $status
