"""The GPU check (scripts/gpu_check.py) in its CPU mode, so the script never rots between the rare
runs on a GPU machine: every path runs with the "GPU" side on the CPU and passes its stated bound,
and the negative controls (one weight changed on the device side; a batched decoder's rows decoded
one position off) are reported as FAIL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
#: Every family and kind of path the GPU run checks, by name prefix (CPU mode runs each one).
EXPECTED_PREFIXES = (
    "llama-hf/fp32", "llama-hf/bf16", "llama-hf/device_map=auto",
    "llama.cpp/f16 -ngl 0", "llama.cpp/f16 -ngl half", "llama.cpp/f16 -ngl all", "llama.cpp/f16 -ngl auto",
    "llama.cpp/q8_0",
    "chatglm2/bf16", "chatglm2/int8", "chatglm2/int4", "chatglm/bf16", "chatglm/int4",
    "rwkv4/cuda fp16", "rwkv4/cuda fp32", "rwkv4/cuda fp16i8", "rwkv4/cuda fp16 *1 -> cpu fp32",
    "rwkv4/cuda fp16 *1+", "rwkv7/cuda fp16",
    "glm130b/tp1 gloo fp32", "glm130b/tp1 gloo int4", "glm130b/tp2 gloo fp32", "glm130b/tp2 gloo bf16",
    "glm130b/tp2 gloo offload", "glm130b/tp2 gloo int8", "glm130b/tp2 gloo int4", "glm130b/load()",
    "lora/train", "bandwidth/transformers", "bandwidth/llama.cpp",
    # several sequences at once: batched decoders, prefix-cache hits, the KV budget, embeddings
    "llama-hf/batch fp32", "llama-hf/batch bf16", "llama-hf/prefix-cache hit", "llama-hf/batch memory budget",
    "llama-hf/embed", "llama.cpp/batch f16 -ngl all",
    "chatglm2/batch fp32", "chatglm2/batch bf16", "chatglm2/prefix-cache hit", "chatglm2/batch memory budget",
    "chatglm2/embed", "glm130b/batch load() cpu fp32", "glm130b/batch load() cpu bf16", "glm130b/embed",
    "glm130b/load(nproc=2) gloo", "glm130b/batch nproc=2 gloo",
)
#: Paths that decode nothing, so have no tokens/s (LoRA reports steps/s instead).
NO_SPEED = ("lora/", "/embed", "/prefix-cache hit", "/batch memory budget")


def _run(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "OPENLLM_HUB_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout


def test_every_path_passes_on_the_cpu_with_its_bound(tmp_path: Path) -> None:
    rc, report, stdout = _run(tmp_path)
    paths = {p["name"]: p for p in report["paths"]}
    assert rc == 0, stdout
    assert report["ok"] is True and report["counts"]["FAIL"] == report["counts"]["ERROR"] == 0, stdout
    for prefix in EXPECTED_PREFIXES:
        assert any(name.startswith(prefix) for name in paths), (prefix, sorted(paths))
    for name, p in paths.items():
        assert p["status"] == "PASS", (name, p)
        assert p["bound"] is not None and p["bound"] > 0 and p["bound_kind"] in report["bounds"], name
        assert p["diff"] is not None and 0 <= p["diff"] <= p["bound"], name
        assert f"PASS  {name}" in stdout  # one printed line per path
    # decode speed is measured for every decoding path (LoRA reports steps/s instead)
    assert all(p["tokens_per_s"] for n, p in paths.items() if not any(k in n for k in NO_SPEED)), stdout
    # the batched paths: a >= 1,024-token prompt among rows of other lengths, 8 sequences against 1
    for name, p in paths.items():
        if "/batch " in name and "memory" not in name:
            assert max(p["detail"]["prompt_tokens"]) >= 1024 and len(set(p["detail"]["prompt_tokens"])) >= 4, p
            assert p["detail"]["speedup_8_vs_1"] > 0 and p["detail"]["tokens_per_s_1"] > 0, p
    hits = [p for n, p in paths.items() if "/prefix-cache hit" in n]
    assert hits and all(p["detail"]["hits_batch"] >= 1 and p["detail"]["hits_single"] >= 1 for p in hits), hits
    budgets = [p for n, p in paths.items() if "/batch memory budget" in n]
    assert budgets and all(p["detail"]["most_rows"] == 2 and p["detail"]["default_budget"] for p in budgets), budgets
    assert report["machine"]["mode"] == "cpu"
    # the planner's prediction is found (core planner or the GLM-130B plugin's) for the torch paths
    llama_fp32 = next(p for n, p in paths.items() if n.startswith("llama-hf/fp32"))
    assert llama_fp32["detail"]["memory"]["planner"]["predicted_bytes"] > 0, llama_fp32["detail"]["memory"]
    # the report renders as the Markdown table RESULTS.md records
    table = subprocess.run([sys.executable, str(SCRIPT), "--table", str(tmp_path / "report.json")],
                           capture_output=True, text=True, check=True).stdout
    assert all(f"| {name} | PASS |" in table for name in paths), table


def test_negative_control_is_reported_as_fail(tmp_path: Path) -> None:
    rc, report, stdout = _run(tmp_path, "--perturb", "--only", "llama-hf/fp32")
    assert rc == 1, stdout
    [path] = report["paths"]
    assert path["name"].startswith("llama-hf/fp32") and path["status"] == "FAIL", path
    assert path["diff"] > 100 * path["bound"]
    assert report["ok"] is False and report["counts"]["FAIL"] == 1
    assert "FAIL  llama-hf/fp32" in stdout


def test_batching_bug_is_reported_as_fail(tmp_path: Path) -> None:
    """The negative control of the batched paths: every row decoded one position off."""
    rc, report, stdout = _run(tmp_path, "--perturb", "--only", "llama-hf/batch fp32")
    assert rc == 1, stdout
    [path] = report["paths"]
    assert path["name"] == "llama-hf/batch fp32" and path["status"] == "FAIL", path
    assert path["diff"] > 100 * path["bound"] and "perturbed" in path["detail"], path
    assert "FAIL  llama-hf/batch fp32" in stdout
