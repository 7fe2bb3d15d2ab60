"""A tensor-parallel GLM-130B through the API and the server: ``load(MODEL, nproc=2)`` keeps rank 0
in this process and starts one follower rank (gloo on CPU); ``serve MODEL --nproc 2`` serves
with its ``--parallel`` slots decoded in one batch on both ranks.

Rank processes cost seconds, so each kind is started once: one model loaded here (module
fixture ``tp2``) and one ``serve`` process (module fixture ``served``), plus one follower that
fails as it starts. Answers are checked against TP=1 in this process (the conftest's ``model``):
logits within test_tp.py's ``TP_TOL``, greedy tokens exactly.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import torch
from live_server import eventually, serve_command
from openllm_hub_glm130b.checkpoint import repartition
from openllm_hub_glm130b.engine_tp import GLM130BModel
from openllm_hub_glm130b.jobs import GenerateJob
from openllm_hub_glm130b.launch import Followers
from test_tp import TP_TOL

import openllm_hub
from openllm_hub.errors import CorruptFileError, InvalidParameterError, OpenLLMHubError

PROMPTS = ["the cat sat on the mat", "hello", "a dog [MASK] the river", "the quick brown fox jumps over the lazy dog",
           "we [sMASK] to the sea and back again"]
GREEDY: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": 8}
#: glm130b-run's prompts: several blanks in one text, [sMASK], and left to right ([gMASK] appended)
JOB_PROMPTS = ("the quick brown fox", "the cat [MASK] on the [MASK] mat", "a [sMASK] dog [sMASK] river [sMASK]",
               "big red [MASK]")


def rel_diff(got: np.ndarray, expect: np.ndarray) -> float:
    return float(np.abs(got - expect).max() / (expect.max() - expect.min()))


def followers_of(pid: int) -> list[psutil.Process]:
    """The rank processes ``pid`` started (multiprocessing "spawn" children; not its resource tracker)."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_job(job: GenerateJob, model: Any) -> tuple[list[dict[str, Any]], str]:
    out = io.StringIO()
    with redirect_stdout(out):
        result = job(model)
    return result, out.getvalue()


@pytest.fixture(scope="module")
def tp2(tiny: Any) -> Iterator[GLM130BModel]:
    m = openllm_hub.load(tiny.path, device="cpu", nproc=2, threads=1)
    assert isinstance(m, GLM130BModel)
    yield m
    m.close()


# ---- refused before any rank starts, or when one cannot start -----------------------------------
def test_bad_layouts_are_refused_before_any_rank_starts(tiny: Any, tmp_path: Path) -> None:
    q8 = repartition(tiny.path, tmp_path / "q8", 2, bits=8)
    with pytest.raises(InvalidParameterError, match="TP=2 shards and cannot run on 4 rank"):
        openllm_hub.load(q8, device="cpu", nproc=4)  # quantized shards are not re-split
    with pytest.raises(InvalidParameterError, match="world size 3"):
        openllm_hub.load(tiny.path, device="cpu", nproc=3)  # 3 does not divide the 4 heads
    with pytest.raises(InvalidParameterError, match="nproc"):
        openllm_hub.load(tiny.path, device="cpu", nproc=0)
    assert not followers_of(psutil.Process().pid)


def test_a_rank_that_cannot_start_fails_the_load_with_its_error(tiny: Any, tmp_path: Path) -> None:
    """NaN weights in rank 1's shard only: rank 1 refuses them while building its engine, and
    that error (what, where, fix) is what load() raises; nothing is left running."""
    bad = tmp_path / "nan"
    shutil.copytree(tiny.path, bad)
    shard = next(bad.glob("*/mp_rank_01_model_states.pt"))
    state = torch.load(shard, weights_only=True)
    name = next(k for k, v in state["module"].items() if v.is_floating_point())
    state["module"][name].view(-1)[0] = float("nan")
    torch.save(state, shard)
    with pytest.raises(CorruptFileError, match="NaN") as err:
        openllm_hub.load(bad, device="cpu", nproc=2, threads=1)
    assert "mp_rank_01" in str(err.value)
    assert not followers_of(psutil.Process().pid)
    import torch.distributed as dist

    assert not dist.is_initialized()  # rank 0 never joined: a later load may


# ---- load(nproc=2) --------------------------------------------------------------------------------
def test_tp2_through_the_api_equals_tp1(tp2: GLM130BModel, model: Any) -> None:
    assert tp2.info.extra["tensor_parallel"] == 2 and tp2.batching == "batched"
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        assert rel_diff(tp2.logits(ids), model.logits(ids)) < TP_TOL
    single = [model.generate(p, **GREEDY).token_ids for p in PROMPTS]
    assert [tp2.generate(p, **GREEDY).token_ids for p in PROMPTS] == single
    # several prompts in one batch (one forward pass per step on both ranks), all at once and 2 at a time
    assert [c.token_ids for c in tp2.generate_batch(PROMPTS, **GREEDY)] == single
    assert [c.token_ids for c in tp2.generate_batch(PROMPTS, slots=2, **GREEDY)] == single


def test_glm130b_run_prompts_in_one_batch_equal_the_serial_run(tp2: GLM130BModel, model: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``GenerateJob`` (glm130b-run) with several prompts fills them in one batch: the results
    and the printed text are the serial run's, at TP=1 and TP=2, all at once and 2 at a time."""
    params = tuple(GREEDY.items())
    serial = [run_job(GenerateJob((p,), params=params), model) for p in JOB_PROMPTS]
    expect = ([r for res, _ in serial for r in res], "".join(out for _, out in serial))
    assert len(expect[0][1]["blanks"]) == 2 and len(expect[0][2]["blanks"]) == 3
    for m in (model, tp2):
        monkeypatch.setattr(m, "fill_blanks", None)  # several prompts never take the one-at-a-time path
    for m in (model, tp2):
        assert run_job(GenerateJob(JOB_PROMPTS, params=params), m) == expect
    assert run_job(GenerateJob(JOB_PROMPTS, params=params, parallel=2), tp2) == expect


def test_one_tensor_parallel_model_per_process(tp2: GLM130BModel, tiny: Any) -> None:
    with pytest.raises(InvalidParameterError, match="already has a torch\\.distributed process group"):
        openllm_hub.load(tiny.path, device="cpu", nproc=2)
    assert len(followers_of(psutil.Process().pid)) == 1


def test_close_stops_the_followers(tp2: GLM130BModel) -> None:
    assert isinstance(tp2.backend.followers, Followers)
    ranks = [psutil.Process(p.pid) for p in tp2.backend.followers.processes]
    assert len(ranks) == 1 and not gone(ranks[0])
    tp2.close()
    assert all(gone(r) for r in ranks)
    assert not followers_of(psutil.Process().pid)
    with pytest.raises(OpenLLMHubError, match="closed"):
        tp2.generate("x")


# ---- serve --nproc 2 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny: Any) -> Iterator[tuple[Any, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with serve_command(tiny.path, "--nproc", "2", "--parallel", "4", "--device", "cpu", "-t", "1", env=env) as (p, u):
        yield p, u


def test_serve_nproc_answers_concurrent_completions(served: tuple[Any, str], model: Any) -> None:
    """Four completions at once through four slots of a TP=2 server equal their TP=1 single runs."""
    from concurrent.futures import ThreadPoolExecutor

    _, url = served
    meta = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["meta"]
    assert meta["batching"] == "batched" and meta["parallel"] == 4

    def ask(prompt: str) -> str:
        r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 8,
                                                      "temperature": 0}, timeout=120)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["text"])

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, PROMPTS[:4])) == [model.generate(p, **GREEDY).text for p in PROMPTS[:4]]


def test_a_killed_server_takes_its_follower_with_it(served: tuple[Any, str]) -> None:
    """SIGKILL leaves rank 0 no chance to close: the follower notices its parent is gone and exits."""
    proc, _ = served
    ranks = followers_of(proc.pid)
    assert len(ranks) == 1
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    eventually(lambda: gone(ranks[0]), "the follower rank to exit")
