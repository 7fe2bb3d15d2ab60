"""Tiny GLM-130B-shaped checkpoints in the real on-disk layout, for tests and benchmarks.

:func:`build_tiny` trains a small real sentencepiece tokenizer (byte fallback, so any text
encodes), puts GLM's commands after its pieces, draws random weights of the GLM-130B shapes,
and writes them as ``mp_rank_NN_model_states.pt`` shards split the way SwissArmyTransformer
splits them, with ``latest`` and ``glm130b_config.json``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub_glm130b.partition import full_shapes, rule_of, take
from openllm_hub_glm130b.spec import GLMConfig, TokenizerSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

WORDS = ("the a cat dog sat on mat big small red blue house tree river mountain city people run walk see eat "
         "drink water food quick brown fox jumps over lazy and of to in is was it with for as at by from").split()
COMMAND_ORDER = ("[MASK]", "[gMASK]", "[sMASK]", "<eod>", "<sop>", "<eop>")


def train_tokenizer(path: Path, pieces: int = 320, seed: int = 0) -> Path:
    """Train a BPE sentencepiece model with byte fallback on a generated English corpus."""
    from openllm_hub.engines.spm_train import train_sentencepiece_file

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(2000)]
    return train_sentencepiece_file(path, lines, vocab_size=pieces, model_type="bpe", byte_fallback=True,
                                    character_coverage=1.0)


def train_char_tokenizer(path: Path, alphabet: str = "ab") -> Path:
    """A character-level sentencepiece model over ``alphabet`` (a handful of pieces, for tests
    that enumerate every sequence)."""
    from openllm_hub.engines.spm_train import train_sentencepiece_file

    rng = random.Random(0)
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 9))) for _ in range(200)]
    return train_sentencepiece_file(path, lines, vocab_size=len(alphabet) + 4, model_type="char",
                                    character_coverage=1.0)


def tiny_config(*, pieces: int = 320, layers: int = 3, hidden: int = 64, heads: int = 4, inner: int = 96,
                tp: int = 2, max_seq: int = 256, vocab_multiple: int = 8) -> GLMConfig:
    """Shapes of a tiny model whose tokenizer has ``pieces`` pieces (commands follow them,
    ``<eos>`` is sentencepiece's ``</s>``)."""
    commands = {name: pieces + i for i, name in enumerate(COMMAND_ORDER)}
    commands["<eos>"] = 2
    vocab = -(-(pieces + len(COMMAND_ORDER)) // vocab_multiple) * vocab_multiple
    return GLMConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, inner_hidden_size=inner,
                     vocab_size=vocab, max_sequence_length=max_seq, model_parallel_size=tp,
                     tokenizer=TokenizerSpec(type="sentencepiece", path="tokenizer.model", id_offset=0,
                                             commands=commands)).check()


def random_state(cfg: GLMConfig, seed: int = 0, dtype: torch.dtype | None = None,
                 gain: float = 3.0) -> dict[str, torch.Tensor]:
    """Unpartitioned (TP=1) weights. Matrices get ``gain / sqrt(fan_in)``: with DeepNorm's
    ``alpha``-scaled residual and a tied output layer, gain 1 makes a random model repeat its
    last input token forever; gain 3 gives varied, well-separated greedy choices."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in full_shapes(cfg).items():
        if key.endswith("layernorm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("word_embeddings.weight"):
            t = 0.5 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            t = gain * torch.randn(shape, generator=gen) / shape[1] ** 0.5
        out[key] = t.to(dtype or torch.float16)
    return out


def split_state(full: dict[str, torch.Tensor], world: int) -> list[dict[str, torch.Tensor]]:
    """The ``world`` shards of an unpartitioned state, as SwissArmyTransformer lays them out."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
    for key, value in full.items():
        rule = rule_of(key)
        assert rule is not None, key
        for r in range(world):
            shards[r][key] = take([value], rule, r, world)
    return shards


def build_tiny(dst: Path, *, tp: int = 2, seed: int = 0, tokenizer: Path | None = None, gain: float = 3.0,
               **shape: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write a tiny SAT checkpoint with ``tp`` shards into the new folder ``dst``; return it and the
    unpartitioned weights (the reference the shards were cut from)."""
    import shutil

    import sentencepiece as spm

    from openllm_hub_glm130b.checkpoint import write_sat

    dst.mkdir(parents=True)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, dst / "tokenizer.model")
    else:
        train_tokenizer(dst / "tokenizer.model")
    pieces = spm.SentencePieceProcessor(model_file=str(dst / "tokenizer.model")).get_piece_size()
    cfg = tiny_config(tp=tp, pieces=pieces, **shape)
    full = random_state(cfg, seed, gain=gain)
    write_sat(dst, cfg, split_state(full, tp), iteration="1000")
    return dst, full


# ---- openllm-hub tiny glm130b OUT ----------------------------------------------------------------
#: What ``openllm-hub tiny glm130b`` writes and its ``-o`` options.
TINY_FORMATS = ("sat",)
TINY_OPTIONS = {"tp": "tensor-parallel shards mp_rank_NN_model_states.pt (default 2; a divisor of the 4 heads)",
                "seed": "random seed of the weights (default 0)", "layers": "layers (default 3)"}


def write_tiny(dst: Path, fmt: str, options: Mapping[str, Any]) -> Path:
    """``openllm-hub tiny glm130b DST [-o tp=N]``: a SwissArmyTransformer checkpoint folder
    (``latest``, ``1000/mp_rank_NN_model_states.pt``, ``glm130b_config.json``) with a small
    sentencepiece tokenizer trained here; run it with ``run DST`` or ``run DST --nproc N``."""
    from openllm_hub.plugin import int_option

    path, _ = build_tiny(dst, tp=int_option(options, "tp", 2, minimum=1), seed=int_option(options, "seed", 0),
                         layers=int_option(options, "layers", 3, minimum=1))
    return path
