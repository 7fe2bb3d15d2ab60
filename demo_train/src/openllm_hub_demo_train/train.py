"""Train the demo LLaMA: transformers' ``LlamaForCausalLM`` and a plain torch loop on the CPU.

Documents are packed into one token stream, a few at a time between ``<s>`` and ``</s>``
(joined by newlines, so the model also knows text files of several stories); batches are
windows of that stream at seeded random offsets. AdamW with linear warm-up and cosine decay,
bf16 autocast (optional) over float32 master weights, gradient clipping at 1.0. Everything
is seeded, and one run needs no network.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub_llama.tiny import TinySpec, write_hf_tokenizer, write_hf_weights

from openllm_hub.core.io import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch


@dataclass(frozen=True)
class TrainConfig:
    """Model shape and optimisation settings (vocab_size comes from the tokenizer)."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    seq_len: int = 512
    batch_size: int = 4
    steps: int = 1300
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.1
    seed: int = 0
    # One thread: on a shared, busy 2-core machine two OpenMP threads spin at every barrier
    # and ran 4-5x slower than one (275 vs 1345 tokens/s measured with ~7 other jobs).
    threads: int = 1
    bf16: bool = True
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    save_dtype: str = "float16"
    docs_per_segment: tuple[int, int] = (1, 3)
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, TrainConfig] = {
    # the shipped model: ~3.9 M parameters; every matrix row length (256, 768) is a multiple of
    # 256, so llama.cpp's k-quants (q4_K_M ...) apply without fallbacks
    "demo": TrainConfig(),
    # a few seconds on CI: the same code path on a model of ~30 k parameters
    "tiny": TrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, seq_len=64,
                        batch_size=2, steps=3, warmup=1, log_every=1, bf16=False),
}


def model_spec(cfg: TrainConfig, vocab_size: int) -> TinySpec:
    return TinySpec(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                    num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                    tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=cfg.seq_len)


# ---- data ------------------------------------------------------------------------------------------------
def pack(docs: Sequence[str], encode: Callable[[str], list[int]], *, bos: int, eos: int, seed: int,
         docs_per_segment: tuple[int, int] = (1, 3)) -> npt.NDArray[np.int32]:
    """``<s> doc [\\n doc ...] </s>`` segments of 1-3 documents, concatenated in a seeded order."""
    import numpy as np

    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    out: list[int] = []
    i = 0
    lo, hi = docs_per_segment
    while i < len(order):
        k = rng.randint(lo, hi)
        text = "\n".join(docs[j] for j in order[i : i + k])
        out += [bos, *encode(text), eos]
        i += k
    return np.asarray(out, dtype=np.int32)


class Batches:
    """Seeded random windows of ``seq_len + 1`` ids from a packed stream."""

    def __init__(self, stream: npt.NDArray[np.int32], seq_len: int, batch_size: int, seed: int) -> None:
        if len(stream) <= seq_len + 1:
            raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one window of {seq_len + 1}")
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.rng = random.Random(seed)

    def next(self) -> torch.Tensor:
        import numpy as np
        import torch

        starts = [self.rng.randrange(len(self.stream) - self.seq_len - 1) for _ in range(self.batch_size)]
        rows = np.stack([self.stream[s : s + self.seq_len + 1] for s in starts])
        return torch.from_numpy(rows.astype(np.int64))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ---- evaluation -------------------------------------------------------------------------------------------
def stream_nll(model: Any, stream: npt.NDArray[np.int32], seq_len: int) -> tuple[float, int]:
    """Mean next-token NLL over consecutive non-overlapping windows of ``stream`` (float32)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(stream) - 1, seq_len):
            chunk = torch.from_numpy(stream[s : s + seq_len + 1].astype("int64"))[None]
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += chunk.shape[1] - 1
    model.train()
    return total / max(count, 1), count


# ---- training ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out_dir: Path
    parameters: int
    steps: int
    tokens_seen: int
    train_tokens: int
    train_docs: int
    heldout_docs: int
    final_loss: float  # mean training loss over the last 10% of steps
    heldout_nll: float
    heldout_perplexity: float
    heldout_tokens: int
    seconds: float
    log: list[dict[str, float]]


def train(train_docs: Sequence[str], heldout_docs: Sequence[str], tokenizer_model: str | Path, out_dir: str | Path,
          cfg: TrainConfig, *, force: bool = False, echo: Callable[[str], None] = print) -> TrainResult:
    """Train from scratch and write an HF folder (config, fp16 safetensors, tokenizer) to ``out_dir``."""
    import sentencepiece as spm
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    vocab = int(sp.get_piece_size())
    spec = model_spec(cfg, vocab)
    hf_cfg = spec.hf_config("float32")
    hf_cfg["initializer_range"] = cfg.init_std
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    def encode(text: str) -> list[int]:
        return list(sp.encode(text))

    t0 = time.time()
    stream = pack(train_docs, encode, bos=sp.bos_id(), eos=sp.eos_id(), seed=cfg.seed,
                  docs_per_segment=cfg.docs_per_segment)
    held = pack(heldout_docs, encode, bos=sp.bos_id(), eos=sp.eos_id(), seed=cfg.seed + 1,
                docs_per_segment=cfg.docs_per_segment)
    echo(f"[train] {n_params / 1e6:.2f} M parameters, vocab {vocab}; corpus {len(stream):,} tokens "
         f"({len(train_docs):,} documents), held-out {len(held):,} tokens; tokenized in {time.time() - t0:.1f}s")
    batches = Batches(stream, cfg.seq_len, cfg.batch_size, cfg.seed)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    log: list[dict[str, float]] = []
    losses: list[float] = []
    t_start = time.time()
    for step in range(cfg.steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = batches.next()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.time() - t_start
            tok_s = (step + 1) * cfg.batch_size * cfg.seq_len / el
            recent = sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:])
            row = {"step": step + 1, "loss": recent, "lr": lr, "seconds": el}
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                row["heldout_nll"] = stream_nll(model, held, cfg.seq_len)[0]
            log.append(row)
            echo(f"[train] step {step + 1}/{cfg.steps} loss {recent:.4f} lr {lr:.2e} {tok_s:.0f} tok/s "
                 f"{el / 60:.1f} min" + (f" held-out nll {row['heldout_nll']:.4f}" if "heldout_nll" in row else ""))
    seconds = time.time() - t_start
    nll, n_held = stream_nll(model, held, cfg.seq_len)
    tail = losses[-max(1, cfg.steps // 10):]
    result = TrainResult(Path(out_dir), n_params, cfg.steps, cfg.steps * cfg.batch_size * cfg.seq_len, len(stream),
                         len(train_docs), len(heldout_docs), sum(tail) / len(tail), nll, math.exp(nll), n_held,
                         seconds, log)
    echo(f"[train] done in {seconds / 60:.1f} min: final loss {result.final_loss:.4f}, held-out perplexity "
         f"{result.heldout_perplexity:.3f} over {n_held:,} tokens")
    save(model, spec, cfg, tokenizer_model, out_dir, result, force=force)
    return result


def save(model: Any, spec: TinySpec, cfg: TrainConfig, tokenizer_model: str | Path, out_dir: str | Path,
         result: TrainResult, *, force: bool = False) -> Path:
    """Write the HF folder atomically: config.json (classic Llama-2 layout), generation_config.json,
    model.safetensors in ``cfg.save_dtype`` (tied head dropped, as transformers saves it),
    tokenizer files and training.json (settings and measurements)."""
    import torch

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.save_dtype]
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    out = Path(out_dir)
    with atomic_output(out, force=force, is_dir=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(spec.hf_config(cfg.save_dtype), indent=2) + "\n")
        gen = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        write_hf_weights(tmp, state)
        write_hf_tokenizer(tmp, Path(tokenizer_model))
        info = {"config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
                "result": {k: v for k, v in asdict(replace(result, log=[])).items() if k not in ("out_dir", "log")},
                "log": result.log}
        (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    return out
