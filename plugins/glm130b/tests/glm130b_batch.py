"""What the batch tests check on rank 0: in process (TP=1) and inside spawned ranks (TP=2).

:func:`logits_report` decodes sequences in one :class:`GLM130BBatchDecoder` (keeping every
logits row it samples from): prompts of different lengths incl. ``[MASK]`` blank filling and a
>= 1,024-token one, one joining late, one cancelled early and one that fails as it joins (ids
outside the vocabulary); it compares each row with the single path's row (``generate``: the
prompt read in one piece, then one token at a time) and with ``Model.logits`` over the whole
sequence. :class:`BatchChecksJob` runs it and the conformance
kit's batch checks on rank 0 of a tensor-parallel group (a test-only module: pickled by name
into the spawned ranks, which inherit this folder on ``sys.path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from openllm_hub_glm130b.engine_tp import GLM130BBatchDecoder
from openllm_hub_glm130b.network.positions import layout_of

from openllm_hub.plugin import GenerationConfig
from openllm_hub.testing import (
    check_batch_equals_single,
    check_batch_join_and_cancel,
    check_greedy_batch_matches_single_runs,
    check_joins_and_cancels_leave_the_others_unchanged,
    check_sampled_batch_matches_single_runs,
)

#: Eight prompts of different lengths: left-to-right ([gMASK] appended) and blank filling ([MASK], [sMASK]).
PROMPTS = ["the cat sat on the mat", "hello", "a dog [MASK] the river", "the quick brown fox jumps over the lazy dog",
           "x", "we [sMASK] to the sea and back again", "one two three four five six seven eight nine ten", "ok [MASK]"]
#: A prompt of >= 1,024 tokens (the tiny tokenizer reads a word as several pieces).
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40) + " and the cat [MASK] on the mat"
GREEDY: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}


def relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max()) / float(ref.max() - ref.min())


def _config(model: Any, n: int) -> GenerationConfig:
    return GenerationConfig.build(model.generation_defaults, max_new_tokens=n, **GREEDY).with_seed()


def single_rows(model: Any, ids: list[int], generated: list[int]) -> list[np.ndarray]:
    """The logits rows the single path (``Model.generate``'s ``_token_stream``) samples ``generated``
    from: the prompt read in one piece, then one token at a time into the ranks' one-row cache."""
    lay = layout_of(ids, model.tokenizer.commands)
    with model._lock:
        model.backend("start", 1)
        rows = [model.backend("forward", [ids], [lay.positions(0, len(ids))], lay.context, True)[0, -1]]
        for i, t in enumerate(generated[:-1]):
            rows.append(model.backend("forward", [[t]], [[lay.position(len(ids) + i)]], lay.context, True)[0, -1])
    return rows


def logits_report(model: Any, n: int = 10) -> dict[str, Any]:
    """Seven sequences in one decoder (see the module doc); what every row gave, and how far."""
    prompts = [model.tokenize(p) for p in (*PROMPTS[:5], LONG, PROMPTS[5])]
    vocab = model.config.vocab_size
    dec = GLM130BBatchDecoder(model, keep_logits=True, step_tokens=256)
    generated: dict[int, list[int]] = {k: [] for k in range(len(prompts))}
    failed: dict[int, str] = {}
    try:
        for key, ids in enumerate(prompts[:4]):
            dec.join(key, ids, _config(model, n))
        for step in range(n + 4):
            if step == 2:  # the long prompt and a blank joins while the others generate, with a bad one
                dec.join(5, prompts[5], _config(model, n))
                dec.join(99, [*prompts[0][:-2], vocab + 3, *prompts[0][-2:]], _config(model, n))
                dec.join(6, prompts[6], _config(model, n))
            if step == 3:
                dec.join(4, prompts[4], _config(model, n))
            if step == 5:
                dec.leave(1)  # cancelled mid-batch
            for key, token in dec.step().items():
                if isinstance(token, BaseException):
                    failed[key] = repr(token)
                    continue
                assert isinstance(token, int), f"sequence {key} ended early"
                generated[key].append(token)
                if len(generated[key]) == n:
                    dec.leave(key)
        assert dec.rows == 0, "every sequence has left"
        worst = worst_full = 0.0
        first_equal = argmax_equal = True
        for key, ids in enumerate(prompts):
            rows = dec.logits[key]
            alone = single_rows(model, ids, generated[key])
            first_equal &= bool(np.array_equal(rows[0], alone[0]))  # the prompt is read alone: the same row
            full = model.logits(ids + generated[key][:-1])[len(ids) - 1:]
            for row, ref, ref_full in zip(rows, alone, full, strict=True):
                worst = max(worst, relative(row, ref))
                worst_full = max(worst_full, relative(row, ref_full))
                argmax_equal &= int(np.argmax(row)) == int(np.argmax(ref))
    finally:
        dec.close()
    return {"lengths": [len(p) for p in prompts], "rows": {k: len(v) for k, v in dec.logits.items()},
            "generated": generated, "failed": failed, "worst_alone": worst, "worst_full": worst_full,
            "first_equal": first_equal, "argmax_equal": argmax_equal}


def run_batch_checks(model: Any) -> None:
    """The conformance kit's batch checks (they raise AssertionError where a check fails)."""
    check_greedy_batch_matches_single_runs(model, PROMPTS, GREEDY, slots=(None, 3))
    check_sampled_batch_matches_single_runs(model, PROMPTS)
    check_joins_and_cancels_leave_the_others_unchanged(model, PROMPTS, GREEDY)
    check_batch_equals_single(model, PROMPTS[:4])
    check_batch_join_and_cancel(model, PROMPTS[:4])


def long_and_blank_batch(model: Any) -> list[tuple[int, ...]]:
    """Greedy ids of the long prompt and two blank-filling ones in one batch, checked against alone."""
    prompts = [LONG, PROMPTS[2], PROMPTS[7]]
    params = [{**GREEDY, "max_new_tokens": 8 + i} for i in range(len(prompts))]
    single = [model.generate(p, **kw).token_ids for p, kw in zip(prompts, params, strict=True)]
    batch = [c.token_ids for c in model.generate_batch(prompts, params)]
    assert batch == single, "the long / blank-filling prompts differ in a batch"
    return batch


def batch_rows(model: Any, prompts: list[str], n: int = 6) -> list[list[np.ndarray]]:
    """Every logits row of ``prompts`` decoded together (greedy, ``n`` tokens each)."""
    dec = GLM130BBatchDecoder(model, keep_logits=True)
    try:
        for key, p in enumerate(prompts):
            dec.join(key, model.tokenize(p), _config(model, n))
        for _ in range(n):
            dec.step()
        return [dec.logits[k] for k in range(len(prompts))]
    finally:
        dec.close()


@dataclass(frozen=True)
class ReportJob:
    """On rank 0 of a TP group: :func:`logits_report` only."""

    def __call__(self, model: Any) -> dict[str, Any]:
        return logits_report(model)


@dataclass(frozen=True)
class BatchChecksJob:
    """On rank 0 of a TP group: the batching facts, the logits report, the kit's checks."""

    def __call__(self, model: Any) -> dict[str, Any]:
        report = logits_report(model)
        run_batch_checks(model)
        return {"batching": model.batching, "world": model.info.extra["tensor_parallel"], "report": report,
                "rows": batch_rows(model, PROMPTS[:3]),
                "long_and_blank": long_and_blank_batch(model),
                "greedy": [c.token_ids for c in model.generate_batch(PROMPTS, max_new_tokens=12, **GREEDY)]}
