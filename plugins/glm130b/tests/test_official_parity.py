"""The engine against numbers from the official code (SwissArmyTransformer 0.2.12's GLM130B, run
through GLM-130B's own generation loop), stored in ``data/official/`` by
``data/make_official_fixture.py`` (provenance: ``data/README.md``).

The fixture checkpoint is a tiny GLM-130B-shaped SAT checkpoint as SAT saves it (with the
rotary ``inv_freq`` buffer in its state dict), TP=1 and TP=2. For each prompt (short ``[gMASK]``,
``[MASK]`` in the middle and at the end, and a 1,114-token ``[gMASK]``) it holds the prompt ids
GLM-130B's ``generate.py`` builds, the official logits over the prompt, the official logits of
each greedy step, and the greedy tokens, in fp32 and fp16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openllm_hub_glm130b.jobs import ProbeJob
from openllm_hub_glm130b.launch import RunSpec, spawn_many
from openllm_hub_glm130b.ranks import EngineOptions

DATA = Path(__file__).parent / "data" / "official"
CASES = ("gmask_short", "mask_short", "mask_end", "gmask_long")
GEN = 8
# fp32: the engine computes the official maths in the same precision; what is left is fp32
# rounding from a different operation order (~1e-6 of the logit range; the official code's own
# TP=2 vs TP=1 difference on this checkpoint is up to 8e-6). The required bound:
FP32_TOL = 1e-4
# fp16: the engine rounds to fp16 where the official code does (modeling.py) and runs the same
# torch kernels in the same order, so on this CPU its fp16 logits are bit-identical to the
# official ones (measured: 0, TP=1 and TP=2). The bound leaves room for isolated one-ulp
# differences only; a change in the maths shows at >= 1e-2 here (the old rotary: 2e-2 on the
# short prompts). With other kernels (a GPU, another CPU's matmul order) the justified bound is
# the official code's own spread under reordered sums: its TP=2 vs TP=1 fp16 logits differ by
# up to 1.9e-2 of the range on this chaotic tiny model, so 3e-2 there.
FP16_TOL = 1e-3
DTYPES = ("fp32", "fp16")


@pytest.fixture(scope="module")
def official() -> dict[str, np.ndarray]:
    with np.load(DATA / "official_logits.npz") as z:
        return {k: z[k] for k in z.files}


def expected(official: dict[str, np.ndarray], case: str, mode: str) -> tuple[list[int], np.ndarray, list[int]]:
    """(rows of the whole sequence the official logits are for, those logits, greedy tokens)."""
    ids = official[f"{case}/ids"]
    greedy = official[f"{case}/{mode}/greedy"].tolist()
    rows = [*official[f"{case}/prompt_rows"].tolist(), *range(len(ids), len(ids) + len(greedy) - 1)]
    step = official[f"{case}/{mode}/step_logits"]
    logits = np.concatenate([official[f"{case}/{mode}/prompt_logits"], step[1 : len(greedy)]])
    assert np.array_equal(step[0], official[f"{case}/{mode}/prompt_logits"][-1])
    return rows, logits, greedy


def rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / (want.max() - want.min()))


def check(official: dict[str, np.ndarray], case: str, mode: str, logits: np.ndarray, greedy: list[int],
          tol: float) -> float:
    rows, want, want_greedy = expected(official, case, mode)
    diff = rel_diff(logits[rows], want)
    assert diff <= tol, f"{case} {mode}: {diff:.2e} of the logit range"
    # the official list ends with the end token (eop/eos) when one was chosen; ours stops before it
    ends = {int(official["eop"]), int(official["eos"])}
    assert greedy == (want_greedy[:-1] if want_greedy and want_greedy[-1] in ends else want_greedy), case
    return diff


def full_sequence(official: dict[str, np.ndarray], case: str, mode: str) -> list[int]:
    return [*official[f"{case}/ids"].tolist(), *official[f"{case}/{mode}/greedy"].tolist()[:-1]]


@pytest.mark.parametrize("ckpt", ["tp1", "tp2"])
def test_load_matches_official(official: dict[str, np.ndarray], ckpt: str) -> None:
    """``openllm_hub.load`` (fp32) of the SAT-saved checkpoint (TP=1 as saved; TP=2 merged onto
    one rank) equals the official TP=1/TP=2 fp32 run: the prompt ids generate.py builds, the
    logits over the prompt and every greedy step, and the greedy tokens."""
    from openllm_hub import load

    with load(DATA / ckpt, device="cpu") as model:
        check_model(official, model, f"{ckpt}_fp32")


def check_model(official: dict[str, np.ndarray], model: Any, mode: str) -> None:
    for case in CASES:
        text = str(official[f"{case}/text"])
        assert model.tokenize(text) == official[f"{case}/ids"].tolist()
        logits = model.logits(full_sequence(official, case, mode))
        greedy = list(model.generate(text, max_new_tokens=GEN, temperature=0.0, seed=0).token_ids)
        check(official, case, mode, logits, greedy, FP32_TOL)


def test_ranks_match_official(official: dict[str, np.ndarray]) -> None:
    """Rank processes (the path ``glm130b-run --nproc N`` takes): one rank on the TP=1 shard in
    fp16 (``load()`` offers fp32/bf16 on CPU), and two tensor-parallel ranks on the TP=2 shards
    in fp32 and fp16, equal the official TP=1 and TP=2 runs."""
    texts = tuple(str(official[f"{c}/text"]) for c in CASES)

    def job(mode: str) -> ProbeJob:
        return ProbeJob(ids=tuple(tuple(full_sequence(official, c, mode)) for c in CASES), prompts=texts,
                        max_new_tokens=GEN)

    one = spawn_many([(RunSpec(str(DATA / "tp1"), EngineOptions(dtype="fp16")), job("tp1_fp16"))], 1,
                     device="cpu", threads=1)
    two = spawn_many([(RunSpec(str(DATA / "tp2"), EngineOptions(dtype=dtype)), job(f"tp2_{dtype}"))
                      for dtype in DTYPES], 2, device="cpu", threads=1)
    for mode, res in (("tp1_fp16", one[0]), ("tp2_fp32", two[0]), ("tp2_fp16", two[1])):
        assert res["info"]["extra"]["tensor_parallel"] == int(mode[2])
        for case, logits, greedy in zip(CASES, res["logits"], res["greedy"]):
            check(official, case, mode, logits, greedy, FP32_TOL if mode.endswith("fp32") else FP16_TOL)


def test_sat_inv_freq_keys_are_accepted_and_checked(tmp_path: Path) -> None:
    """SAT 0.2.12 saves its rotary buffer as ``mixins.rotary-embedding.rotary_emb.inv_freq``
    (older SAT, and GLM-130B's release: per layer ``attention.rotary_emb.inv_freq``): both are
    accepted, repartitioned along, and verified against the frequencies the engine uses."""
    import shutil

    import torch
    from openllm_hub_glm130b.checkpoint import SatCheckpoint, repartition

    from openllm_hub.errors import CorruptFileError

    ck = SatCheckpoint.open(DATA / "tp2")
    assert any(k.endswith("rotary_emb.inv_freq") for k in ck.state(0))
    one = SatCheckpoint.open(repartition(DATA / "tp2", tmp_path / "tp1", 1))
    assert "mixins.rotary-embedding.rotary_emb.inv_freq" in ck.state(0)
    assert "mixins.rotary-embedding.rotary_emb.inv_freq" in one.state(0)

    bad = tmp_path / "bad"
    shutil.copytree(DATA / "tp1", bad)
    shard = bad / "1000" / "mp_rank_00_model_states.pt"
    obj = torch.load(shard, weights_only=True)
    obj["module"]["mixins.rotary-embedding.rotary_emb.inv_freq"] = obj["module"][
        "mixins.rotary-embedding.rotary_emb.inv_freq"] * 2
    torch.save(obj, shard)
    with pytest.raises(CorruptFileError, match="inv_freq"):
        SatCheckpoint.open(bad)
