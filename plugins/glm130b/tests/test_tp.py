"""Tensor parallelism in separate processes (gloo on CPU): TP=2 and TP=4 ranks give the TP=1
logits and tokens, before and after repartitioning 2 -> 1 -> 4 -> 2, quantized shards run
as the reference says, and rank 0 streams what a single process prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from glm130b_reference import reference_dequantize, reference_logits
from openllm_hub_glm130b.checkpoint import SatCheckpoint, repartition
from openllm_hub_glm130b.jobs import GenerateJob, ProbeJob
from openllm_hub_glm130b.launch import RunSpec, spawn_many
from openllm_hub_glm130b.network.positions import layout_of
from openllm_hub_glm130b.network.quant import is_quantized_linear
from openllm_hub_glm130b.partition import rule_of, take

# TP splits every matmul's reduction into per-rank partial sums that an all-reduce adds: fp32
# rounding differs from TP=1 by ~1e-6 of the logit range (observed ~2e-6 at TP=2); 2e-5 is ~10x that.
TP_TOL = 2e-5
# the engine vs the float64 reference (see test_model.py): 5e-5 of the logit range
REF_TOL = 5e-5
PROMPTS = ("the cat sat on the mat", "a dog [MASK] the river")


def rel_diff(got: np.ndarray, expect: np.ndarray) -> float:
    return float(np.abs(got - expect).max() / (expect.max() - expect.min()))


@pytest.fixture(scope="module")
def ckpts(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp")
    one = repartition(tiny.path, root / "tp1", 1)
    four = repartition(one, root / "tp4", 4)
    two = repartition(four, root / "tp2", 2)
    q8 = repartition(tiny.path, root / "q8", 2, bits=8)
    return {"mp2": tiny.path, "mp4": four, "mp2_roundtrip": two, "mp2_int8": q8}


@pytest.fixture(scope="module")
def probe(model: Any) -> ProbeJob:
    return ProbeJob(ids=tuple(tuple(model.tokenize(p)) for p in PROMPTS), prompts=PROMPTS, max_new_tokens=8)


def merged_dequantized(path: Path) -> dict[str, Any]:
    """Unpartitioned weights of a quantized TP checkpoint: each shard dequantized with its own
    scales, then concatenated along the split dimension."""
    import torch

    ck = SatCheckpoint.open(path)
    shards = []
    for r in range(ck.tp):
        st = ck.state(r)
        shards.append({k: torch.from_numpy(reference_dequantize(v, st[k + "_scale"], 8)) if is_quantized_linear(k)
                       else v.double() for k, v in st.items() if not k.endswith("_scale")})
    return {k: take([s[k] for s in shards], rule_of(k), 0, 1) for k in shards[0]}  # type: ignore[arg-type]


def test_tp2_and_tp4_match_tp1(model: Any, tiny: Any, ckpts: dict[str, Path], probe: ProbeJob,
                               capfd: Any) -> None:
    expect_logits = [model.logits(list(ids)) for ids in probe.ids]
    expect_greedy = [list(model.generate(p, max_new_tokens=8, temperature=0.0, seed=0).token_ids) for p in PROMPTS]
    gen = GenerateJob(("the quick brown fox", "the cat [MASK] on the mat"),
                      params=(("temperature", 0.0), ("max_new_tokens", 6)))
    beam = GenerateJob(("the quick brown fox",), num_beams=3, params=(("max_new_tokens", 5),),
                       no_repeat_ngram_size=2)
    capfd.readouterr()
    local = [gen(model), beam(model)]
    local_out = capfd.readouterr().out

    runs = spawn_many([(RunSpec(str(ckpts["mp2"])), probe), (RunSpec(str(ckpts["mp2_roundtrip"])), probe),
                       (RunSpec(str(ckpts["mp2_int8"])), probe), (RunSpec(str(ckpts["mp2"])), gen),
                       (RunSpec(str(ckpts["mp2"])), beam)], 2, device="cpu")
    spawned_out = capfd.readouterr().out
    (four,) = spawn_many([(RunSpec(str(ckpts["mp4"])), probe)], 4, device="cpu")

    for res, world in ((runs[0], 2), (runs[1], 2), (four, 4)):
        assert res["info"]["extra"]["tensor_parallel"] == world
        for got, want in zip(res["logits"], expect_logits):
            assert rel_diff(got, want) < TP_TOL
        assert res["greedy"] == expect_greedy
    # quantized shards (each with its own scales) on two ranks compute the dequantized model
    weights = merged_dequantized(ckpts["mp2_int8"])
    for got, ids in zip(runs[2]["logits"], probe.ids):
        lay = layout_of(ids, tiny.config.tokenizer.commands)
        want = reference_logits(weights, tiny.config, ids, lay.positions(0, len(ids)), lay.context)
        assert rel_diff(got, want) < REF_TOL
    # rank 0 streams exactly what the single-process run printed; blanks and beams agree
    assert runs[3:] == local
    assert spawned_out == local_out and local_out.count("\n") == 3
    # per-rank resident weights: a TP share of the matrices and embedding, plus replicated norms
    tp1 = model.backend.engine.weight_bytes()["device"]
    assert tp1 / 2 < runs[0]["weight_bytes"]["device"] < tp1 / 2 * 1.1
    assert tp1 / 4 < four["weight_bytes"]["device"] < tp1 / 4 * 1.2


def test_torchrun_entry_point(model: Any, tiny: Any) -> None:
    """``torchrun --standalone --nproc-per-node 2 -m openllm_hub_glm130b``: what multi-node runs use."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    prompt = "the cat [MASK] on the mat"
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "openllm_hub_glm130b",
                           str(tiny.path), "-p", prompt, "--strategy", "greedy", "--max-new-tokens", "5"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    expect = model.fill_blanks(prompt, temperature=0.0, max_new_tokens=5)
    assert proc.stdout == expect.blanks[0] + "\n"


def test_core_run_with_nproc(model: Any, tiny: Any) -> None:
    """``openllm-hub run MODEL --nproc 2`` goes through the core's launch path to two ranks."""
    import os
    import subprocess
    import sys

    prompt = "the cat [MASK] on the mat"
    proc = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "run", str(tiny.path), "-p", prompt,
                           "--nproc", "2", "--device", "cpu", "--temp", "0", "-n", "5", "-t", "1", "--no-echo"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    expect = model.fill_blanks(prompt, temperature=0.0, max_new_tokens=5)
    assert proc.stdout == expect.blanks[0] + "\n"
    bad = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "run", str(tiny.path), "-p", prompt,
                          "--nproc", "2", "-o", "nonsense=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "nonsense" in bad.stderr
