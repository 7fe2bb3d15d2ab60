"""``serve``'s default number of slots (:func:`openllm_hub.server.scheduler.default_parallel`) and
the start-up line that shows it.

The rule: an engine that interleaves (no batched forward pass) gets 1 slot; a batching engine
one per CPU thread, at least 2 and at most 8, and no more than half the free memory holds
full-context KV caches of (``info.extra["kv_bytes_per_token"]`` x the context). The machine
probe and the free-memory reading are set to known values here (``monkeypatch``; the models
are real), so each bound is checked on its own; the start-up line is checked on a real
``serve`` process against the rule computed for this machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import serve_command, sigterm

import openllm_hub
from openllm_hub.core import device, plan
from openllm_hub.core.device import Machine
from openllm_hub.core.model import Model
from openllm_hub.server.scheduler import MAX_DEFAULT_PARALLEL, default_parallel


@pytest.fixture(scope="module")
def gguf_model(tiny_llama: tuple[Path, Path]) -> Iterator[Model]:
    with openllm_hub.load(tiny_llama[1], device="cpu", threads=1) as m:
        yield m


def _machine(monkeypatch: pytest.MonkeyPatch, threads: int, free_ram: int | None) -> None:
    monkeypatch.setattr(device, "probe_machine", lambda: Machine(cpu_threads=threads, gpus=(), gpu_note=""))
    monkeypatch.setattr(plan, "available_ram", lambda: free_ram)


def test_an_interleaving_engine_gets_one_slot(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, 16, 2**40)
    n, why = default_parallel(model)
    assert model.batching == "interleaved"
    assert n == 1 and "interleaved" in why and "add no speed" in why


@pytest.mark.parametrize(("threads", "want"), [(1, 2), (2, 2), (3, 3), (5, 5), (8, 8), (9, 8), (64, 8)])
def test_a_batching_engine_gets_a_slot_per_cpu_thread_from_2_to_8(gguf_model: Model, monkeypatch: pytest.MonkeyPatch,
                                                                  threads: int, want: int) -> None:
    _machine(monkeypatch, threads, 2**40)  # memory for thousands of this tiny model's caches
    assert gguf_model.batching == "batched" and MAX_DEFAULT_PARALLEL == 8
    assert default_parallel(gguf_model) == (want, f"{threads} CPU threads")


@pytest.mark.parametrize(("caches", "want"), [(20, 8), (8, 8), (5, 5), (2, 2), (1, 1)])
def test_free_memory_bounds_the_slots(gguf_model: Model, monkeypatch: pytest.MonkeyPatch, caches: int,
                                      want: int) -> None:
    """Free RAM whose half holds exactly ``caches`` full-context caches, on a 16-thread machine."""
    per_token = gguf_model.info.extra["kv_bytes_per_token"]
    ctx = gguf_model.info.context_length
    assert isinstance(per_token, int) and per_token > 0 and ctx
    _machine(monkeypatch, 16, 2 * caches * per_token * ctx)
    n, why = default_parallel(gguf_model)
    assert n == want
    assert why == ("16 CPU threads" if caches >= 8 else f"half the free memory holds {want} full-context caches")
    _machine(monkeypatch, 16, 2 * caches * per_token * ctx - 2)  # a byte less in the half: one cache fewer fits
    assert default_parallel(gguf_model)[0] == min(8, max(1, caches - 1))


def test_start_up_line_shows_the_default(tiny_llama: tuple[Path, Path], gguf_model: Model, model: Model,
                                         bigram_path: Path) -> None:
    """``serve`` without ``--parallel``: the line says the slots chosen and why (this machine's rule)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENLLM_HUB_API_KEY"}
    for path, loaded in ((tiny_llama[1], gguf_model), (bigram_path, model)):
        n, why = default_parallel(loaded)
        with serve_command(path, "--log-level", "warning", env=env) as (proc, _):
            err = sigterm(proc)
        assert proc.returncode == 0, err
        line = f"{n} parallel slot{'s' if n != 1 else ''} ({loaded.batching}; default: {why}), "
        assert line in err, err
        assert (n == 1) if loaded.batching == "interleaved" else (2 <= n <= 8)
