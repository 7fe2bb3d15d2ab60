"""``Model.embed`` on GLM-130B (TP=1 and TP=2): the final-LayerNorm hidden states, checked through
the tied output layer against the official code's logits (``data/official/``, see
``data/README.md``: SwissArmyTransformer 0.2.12's GLM130B through GLM-130B's generation loop).

GLM-130B's logits are ``h @ E^T`` with ``E`` the word embeddings (the tied output layer), read
here straight from the SAT shard files (``torch.load``; the TP=2 shards' vocabulary halves
concatenate to the TP=1 matrix). ``E`` is 512 x 64 of full column rank (condition number 2.0),
so the official logits determine ``h`` uniquely: the least-squares ``h`` recovered from them is
compared too.

Pooling (the core's): the mean over ``tokenize(text)``, GLM-130B's ``generate.py`` prompt: the
text, ``[gMASK]`` (or ``<eos>`` after a text that goes on past its last ``[MASK]``), ``<sop>``.

Bounds (fp32): the fixture's own, 1e-4 of the logit range (test_official_parity.FP32_TOL).
Observed: one rank (``load()`` of the TP=1 checkpoint, and of the TP=2 one merged) against
the official TP=1 run <= 1.5e-7 of the range, recovered ``h`` within 2.5e-7 (values up to
4.6); the official TP=2 run differs from its own TP=1 run by up to 8.2e-6 of the range (the
ranks sum partial products in another order), so the merged TP=2 checkpoint on one rank is
5.0-6.5e-6 of the range from the official TP=2 run. Two tensor-parallel rank processes: their
embeddings through ``E`` within 1.4e-8 of the range of the mean official TP=2 logits, and
within 3.6e-6 of one rank's embeddings. Recovered-``h`` bound: 1e-4 absolute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from openllm_hub_glm130b.engine_tp import GLM130BModel
from openllm_hub_glm130b.jobs import ProbeJob
from openllm_hub_glm130b.launch import RunSpec, spawn_many
from openllm_hub_glm130b.ranks import EngineOptions

import openllm_hub

DATA = Path(__file__).parent / "data" / "official"
CASES = ("gmask_short", "mask_short", "mask_end", "gmask_long")
SHORT = ("gmask_short", "mask_short", "mask_end")  # every prompt row stored: the mean can be checked
FP32_TOL = 1e-4  # of the logit range: the fixture's bound (test_official_parity.py)
HIDDEN_TOL = 1e-4  # absolute, for hidden values recovered from the official logits


@pytest.fixture(scope="module")
def official() -> dict[str, np.ndarray]:
    with np.load(DATA / "official_logits.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def word_embeddings() -> np.ndarray:
    """``E`` from the TP=1 shard file (fp16 there), float64; the TP=2 files hold its halves."""
    def load(ckpt: str, rank: int) -> torch.Tensor:
        obj = torch.load(DATA / ckpt / "1000" / f"mp_rank_{rank:02d}_model_states.pt", weights_only=True)
        tensor: torch.Tensor = obj["module"]["transformer.word_embeddings.weight"]
        return tensor

    e = load("tp1", 0)
    assert torch.equal(torch.cat([load("tp2", 0), load("tp2", 1)]), e)
    out: np.ndarray = e.double().numpy()
    assert out.shape == (512, 64) and np.linalg.matrix_rank(out) == 64
    return out


def check_rows(h: np.ndarray, e: np.ndarray, logits: np.ndarray) -> None:
    """``h @ E^T`` against official logits within the fixture's bound, and ``h`` against the
    hidden states the logits determine."""
    logits = logits.astype(np.float64)
    assert np.abs(h @ e.T - logits).max() <= FP32_TOL * float(logits.max() - logits.min())
    recovered = np.linalg.lstsq(e, logits.T, rcond=None)[0].T
    assert np.abs(h - recovered).max() <= HIDDEN_TOL


@pytest.mark.parametrize("ckpt", ["tp1", "tp2"])
def test_hidden_states_through_the_tied_output_layer_equal_official_logits(
        ckpt: str, official: dict[str, np.ndarray], word_embeddings: np.ndarray) -> None:
    """``load()`` (one rank; the TP=2 checkpoint merged) against the official TP=1 run, every
    stored prompt row (the long prompt: 1,114 ids, every 25th row and the last 16)."""
    with openllm_hub.load(DATA / ckpt, device="cpu") as model:
        for case in CASES:
            ids = official[f"{case}/ids"].tolist()
            assert model.tokenize(str(official[f"{case}/text"])) == ids
            h = model._hidden_states(ids).astype(np.float64)
            assert h.shape == (len(ids), 64)
            check_rows(h[official[f"{case}/prompt_rows"]], word_embeddings, official[f"{case}/tp1_fp32/prompt_logits"])
        assert len(official["gmask_long/ids"]) >= 1024


def test_embed_through_the_tied_output_layer_equals_mean_official_logits(
        official: dict[str, np.ndarray], word_embeddings: np.ndarray) -> None:
    """``embed(text) @ E^T`` is the mean of the official prompt logits (the map is linear)."""
    texts = [str(official[f"{case}/text"]) for case in SHORT]
    with openllm_hub.load(DATA / "tp1", device="cpu") as model:
        assert isinstance(model, GLM130BModel)
        cmds = model.tokenizer.commands
        assert model.tokenize(texts[0])[-2:] == [cmds["[gMASK]"], cmds["<sop>"]]
        assert model.tokenize(texts[1])[-2:] == [cmds["<eos>"], cmds["<sop>"]]  # [MASK] in the middle
        vectors = np.asarray(model.embed(texts))
    for case, vec in zip(SHORT, vectors, strict=True):
        logits = official[f"{case}/tp1_fp32/prompt_logits"].astype(np.float64)
        assert logits.shape[0] == len(official[f"{case}/ids"])
        assert np.abs(vec @ word_embeddings.T - logits.mean(0)).max() <= FP32_TOL * float(logits.max() - logits.min())


def test_tensor_parallel_ranks_embed(official: dict[str, np.ndarray], word_embeddings: np.ndarray) -> None:
    """Two tensor-parallel rank processes (the ``glm130b-run --nproc 2`` path) on the TP=2
    shards: the short prompts against the official TP=2 run, the 1,114-id prompt against one
    rank's embedding (which the test above checks row by row)."""
    texts = tuple(str(official[f"{case}/text"]) for case in CASES)
    res = spawn_many([(RunSpec(str(DATA / "tp2"), EngineOptions(dtype="fp32")), ProbeJob(embed=texts))], 2,
                     device="cpu", threads=1)[0]
    assert res["info"]["extra"]["tensor_parallel"] == 2
    vectors = np.asarray(res["embeddings"])
    for case, vec in zip(SHORT, vectors, strict=False):
        logits = official[f"{case}/tp2_fp32/prompt_logits"].astype(np.float64)
        assert np.abs(vec @ word_embeddings.T - logits.mean(0)).max() <= FP32_TOL * float(logits.max() - logits.min())
    with openllm_hub.load(DATA / "tp1", device="cpu") as model:
        one_rank = np.asarray(model.embed([texts[-1]])[0])
    assert np.abs(vectors[-1] - one_rank).max() <= HIDDEN_TOL


def test_embedding_between_generation_steps_changes_no_token() -> None:
    """The ranks read an embedding with a KV cache of its own: a sequence being generated
    (whose cache they hold) goes on as it would alone."""
    with openllm_hub.load(DATA / "tp1", device="cpu") as model:
        alone = model.generate("GLM-130B is a model", max_new_tokens=10, temperature=0.0).token_ids
        ids: list[int] = []
        for chunk in model.stream("GLM-130B is a model", max_new_tokens=10, temperature=0.0):
            ids.extend(chunk.token_ids)
            model.embed(["something else entirely"])
        assert tuple(ids) == alone
