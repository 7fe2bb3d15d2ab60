"""Build the official-code fixture in ``official/``: a tiny GLM-130B-shaped SAT checkpoint (TP=1
and TP=2) and the logits/greedy tokens of SwissArmyTransformer 0.2.12's ``GLM130B`` model on it.

NOT run by the tests or CI. It needs a scratch environment with the official packages (see
README.md beside this file for versions, the two scratch-only patches and the exact command):

* ``SAT`` = an installed ``SwissArmyTransformer==0.2.12`` (the version THUDM/GLM-130B pins);
* ``--glm130b`` = a folder holding THUDM/GLM-130B's ``evaluation/model.py`` (the generation
  loop ``batch_filling_sequence``) and ``generation/strategies.py`` (``BaseStrategy``).

Prompts are built the way GLM-130B's ``generate.py`` builds them (its ``fill_blanks``): text
pieces tokenized separately around each ``[MASK]``/``[sMASK]``/``[gMASK]``; ``[gMASK]`` appended
when the text has no mask; ``eos`` appended when the text does not end with a mask; ``sop``
last. Attention: bidirectional over everything before ``sop``, causal from ``sop`` on.
Position ids count up, except that for ``[MASK]``/``[sMASK]`` every position from ``sop`` on
is the mask's position. Generation runs through the official ``batch_filling_sequence`` (with
its KV-cache ``mems``) and ``BaseStrategy`` with ``top_k=1`` (greedy) and the end tokens
``[eop, eos]`` of ``generate.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ITERATION = "1000"
LAYERS, HIDDEN, HEADS, INNER, VOCAB, MAX_SEQ = 4, 64, 4, 160, 512, 2048
# GLM-130B's command layout (SAT's _IceTokenizer): the commands follow the text vocabulary in the
# order [MASK] [gMASK] [sMASK] eod sop eop ENC dBLOCK; eos is the text piece 2 (icetk: 20000 + 2).
COMMAND_NAMES = ("[MASK]", "[gMASK]", "[sMASK]", "<eod>", "<sop>", "<eop>")
EOS = 2
GEN_TOKENS = 8
WORDS = ("the a cat dog sat on mat big small red blue house tree river mountain city people run walk see eat "
         "drink water food quick brown fox jumps over lazy and of to in is was it with for as at by from").split()
LONG_EVERY = 25  # the long prompt's prompt-position logits are stored at every 25th position (size)


# ---- the checkpoint -------------------------------------------------------------------------
def random_state(model: torch.nn.Module, seed: int, gain: float = 3.0) -> dict[str, torch.Tensor]:
    """Seeded values for every parameter of an official TP=1 GLM130B (fp16, as released)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, p in model.state_dict().items():
        shape = tuple(p.shape)
        if key.endswith("inv_freq"):
            out[key] = p.clone()  # the buffer the official model registered
            continue
        if key.endswith("layernorm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("word_embeddings.weight"):
            t = 0.5 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            t = gain * torch.randn(shape, generator=gen) / shape[1] ** 0.5
        out[key] = t.half()
    return out


def split_for_tp2(full: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The two ranks' shards of a TP=1 state, cut as SAT's mpu layers hold them: vocab rows and
    column-parallel rows split in contiguous halves (query_key_value rows are grouped per head,
    so halves hold whole heads); GeGLU's dense_h_to_4h split per half ([x1 | x2] on each rank);
    row-parallel weights split by columns; everything else replicated. The official TP=2 run is
    checked against the official TP=1 run, which is what validates this cut."""
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    for key, t in full.items():
        if key.endswith(("word_embeddings.weight", "query_key_value.weight", "query_key_value.bias")):
            parts = list(t.chunk(2, dim=0))
        elif "dense_h_to_4h" in key:
            x1, x2 = t.chunk(2, dim=0)
            parts = [torch.cat((a, b), dim=0) for a, b in zip(x1.chunk(2, dim=0), x2.chunk(2, dim=0))]
        elif key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
            parts = list(t.chunk(2, dim=1))
        else:
            parts = [t, t]
        for r in range(2):
            shards[r][key] = parts[r].clone().contiguous()
    return shards


def write_checkpoint(root: Path, shards: list[dict[str, torch.Tensor]], tokenizer: Path, pieces: int) -> None:
    """SAT's on-disk layout (``latest`` + ``<iter>/mp_rank_NN_model_states.pt`` holding
    ``{"module": state_dict, ...}``) plus this project's ``glm130b_config.json`` and tokenizer."""
    (root / ITERATION).mkdir(parents=True)
    for rank, st in enumerate(shards):
        torch.save({"module": st, "iteration": int(ITERATION), "mp_world_size": len(shards), "dp_world_size": 1},
                   root / ITERATION / f"mp_rank_{rank:02d}_model_states.pt")
    (root / "latest").write_text(ITERATION)
    shutil.copyfile(tokenizer, root / "tokenizer.model")
    commands = {name: pieces + i for i, name in enumerate(COMMAND_NAMES)}
    commands["<eos>"] = EOS
    config = {"model_type": "glm-130b", "num_layers": LAYERS, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
              "inner_hidden_size": INNER, "vocab_size": VOCAB, "max_sequence_length": MAX_SEQ,
              "layernorm_epsilon": 1e-5, "model_parallel_size": len(shards), "dtype": "fp16",
              "tokenizer": {"type": "sentencepiece", "path": "tokenizer.model", "id_offset": 0, "commands": commands}}
    (root / "glm130b_config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---- prompts (GLM-130B generate.py's fill_blanks, first blank) ---------------------------------
def build_prompt(sp: Any, text: str, commands: dict[str, int]) -> tuple[list[int], int, bool]:
    """(ids ending in sop, mask position, use_gmask)."""
    import re

    pattern = r"\[[sg]?MASK\]"
    pieces, marks = re.split(pattern, text), re.findall(pattern, text)
    seq: list[int] = []
    for piece, mark in zip(pieces, marks):
        seq += sp.encode(piece)
        seq.append(commands[mark])
    seq += sp.encode(pieces[-1])
    if "MASK]" not in text:
        seq.append(commands["[gMASK]"])
        text += " [gMASK]"
    if not text.endswith("MASK]"):
        seq.append(EOS)
    mark = "[MASK]" if "[MASK]" in text else "[sMASK]" if "[sMASK]" in text else "[gMASK]"
    use_gmask = "[MASK]" not in text and "[sMASK]" not in text
    return [*seq, commands["<sop>"]], seq.index(commands[mark]), use_gmask


def masks_and_positions(seq: torch.Tensor, mask_position: int, gen: int, gmask: bool) -> tuple[torch.Tensor, ...]:
    """Padded tokens, the boolean mask (True = masked) and position ids for ``gen`` new tokens."""
    ctx = seq.shape[1]
    tokens = torch.nn.functional.pad(seq, (0, gen), value=-1)
    n = tokens.shape[1]
    keep = torch.ones(1, n, n).tril()
    keep[..., : ctx - 1] = 1
    positions = torch.arange(n)
    if not gmask:
        positions[ctx - 1 :] = mask_position
    return tokens, (keep.unsqueeze(1) < 0.5), positions.unsqueeze(0)


def prompt_texts(sp: Any) -> dict[str, str]:
    import random

    rng = random.Random(7)
    words = []
    while len(sp.encode(" ".join(words))) < 1110:
        words.append(rng.choice(WORDS))
    return {
        "gmask_short": "the quick brown fox jumps over the lazy dog and the cat sat on the mat",
        "mask_short": "the big red house by the river [MASK] people walk to the city",
        "mask_end": "a small blue tree on the mountain is [MASK]",
        "gmask_long": " ".join(words),
    }


# ---- the official run --------------------------------------------------------------------------
def patch_official() -> None:
    """The scratch-only patches (README.md): CPU device instead of ``torch.cuda.current_device()``,
    and the attention probabilities cast back to the compute dtype (``.type_as(value_layer)``)
    instead of a hard-coded ``.half()``, which is the same in the official fp16 mode and lets the
    fp32 mode run at all (``bmm`` of fp16 probabilities with fp32 values fails)."""
    import SwissArmyTransformer.model.official.glm130B_model as mod

    src = Path(mod.__file__).read_text()
    patches = (("device=torch.cuda.current_device(),", "device=torch.device('cpu'),"),
               ("attention_probs = attention_probs.half()", "attention_probs = attention_probs.type_as(value_layer)"))
    for old, new in patches:
        count = src.count(old)
        assert count >= 1, old
        src = src.replace(old, new)
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    import SwissArmyTransformer.model as pkg

    pkg.GLM130B = mod.GLM130B  # type: ignore[attr-defined]


def load_file_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sat_args(ckpt: Path | None, tp: int, fp16: bool) -> Any:
    from SwissArmyTransformer import get_args

    argv = ["--mode", "inference", "--device", "0", "--num-layers", str(LAYERS), "--hidden-size", str(HIDDEN),
            "--inner-hidden-size", str(INNER), "--vocab-size", str(VOCAB), "--num-attention-heads", str(HEADS),
            "--max-sequence-length", str(MAX_SEQ), "--layernorm-order", "post", "--model-parallel-size", str(tp),
            "--skip-init", "--distributed-backend", "gloo"]
    if ckpt is not None:
        argv += ["--load", str(ckpt)]
    if fp16:
        argv.append("--fp16")
    return get_args(argv)


def init_dist(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from SwissArmyTransformer import mpu

    mpu.initialize_model_parallel(world)


def run_rank(rank: int, world: int, port: int, ckpt: str, fp16: bool, glm_src: str, prompts: Any, out: str,
             eop: int) -> None:
    """One rank of an official run: load the checkpoint with SAT's load_checkpoint, then for each
    prompt the full prompt logits (one forward) and greedy generation via batch_filling_sequence."""
    torch.set_num_threads(1)
    patch_official()
    init_dist(rank, world, port)
    import numpy

    numpy.bool = bool  # type: ignore[attr-defined]  # strategies.py uses the alias numpy removed in 1.24
    from SwissArmyTransformer.model import GLM130B
    from SwissArmyTransformer.training import load_checkpoint

    evaluation = load_file_module("glm130b_evaluation_model", Path(glm_src) / "evaluation" / "model.py")
    strategies = load_file_module("glm130b_strategies", Path(glm_src) / "generation" / "strategies.py")
    args = sat_args(Path(ckpt), world, fp16)
    model = GLM130B(args)
    if fp16:
        model = model.half()  # initialize.py: GLM130B(args).half()
    else:  # fp32: the parameters only (the GLU mixin creates dense_h_to_4h in fp16 whatever the
        for p in model.parameters():  # dtype); buffers stay as SAT builds them (rotary inv_freq: fp16)
            p.data = p.data.float()
    load_checkpoint(model, args)
    model.eval()

    class Recording(strategies.BaseStrategy):  # type: ignore[misc]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.seen: list[np.ndarray] = []

        def forward(self, logits: torch.Tensor, tokens: torch.Tensor, mems: Any, temperature: Any = None) -> Any:
            self.seen.append(logits.reshape(-1).float().numpy().copy())
            return super().forward(logits, tokens, mems, temperature)

    results: dict[str, Any] = {}
    with torch.no_grad():
        for name, (ids, mask_position, gmask) in prompts.items():
            seq = torch.tensor([ids])
            _, mask, positions = masks_and_positions(seq, mask_position, GEN_TOKENS, gmask)
            ctx = len(ids)
            full, *_ = model(seq, positions[..., :ctx], mask[..., :ctx, :ctx])
            strategy = Recording(batch_size=1, temperature=1.0, top_k=1, end_tokens=[eop, EOS])
            def layout(s: torch.Tensor, mp: int = mask_position, g: bool = gmask) -> tuple[torch.Tensor, ...]:
                return masks_and_positions(s, mp, GEN_TOKENS, g)

            output, _ = evaluation.batch_filling_sequence(model, seq, torch.tensor([ctx]), strategy=strategy,
                                                          get_masks_and_position_ids=layout)
            row = output.reshape(-1).tolist()  # [batch 1, beams 1, length]
            gen = row[ctx:]
            gen = gen[: gen.index(-1)] if -1 in gen else gen
            results[name] = {"prompt_logits": full[0].float(),
                             "step_logits": torch.from_numpy(np.stack(strategy.seen)),
                             "greedy": torch.tensor(gen, dtype=torch.int64)}
    if rank == 0:
        torch.save(results, out)
    torch.distributed.barrier()


def spawn(world: int, ckpt: Path, fp16: bool, glm_src: Path, prompts: Any, port: int, tmp: Path,
          eop: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    out = tmp / f"run_tp{world}_{'fp16' if fp16 else 'fp32'}.pt"
    mp.spawn(run_rank, args=(world, port, str(ckpt), fp16, str(glm_src), prompts, str(out), eop),
             nprocs=world, join=True)
    # the ranks save tensors only, so the result loads without unpickling code
    saved: dict[str, dict[str, torch.Tensor]] = torch.load(out, weights_only=True)
    return {name: {k: v.numpy() for k, v in r.items()} for name, r in saved.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", type=Path, required=True, help="a sentencepiece model (tiny.train_tokenizer)")
    ap.add_argument("--glm130b", type=Path, required=True, help="folder with GLM-130B's evaluation/ and generation/")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "official")
    ap.add_argument("--seed", type=int, default=130)
    ap.add_argument("--gain", type=float, default=2.0, help="weight scale (see random_state)")
    a = ap.parse_args()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(a.tokenizer))
    pieces = sp.get_piece_size()
    commands = {name: pieces + i for i, name in enumerate(COMMAND_NAMES)}
    texts = prompt_texts(sp)
    prompts = {name: build_prompt(sp, text, commands) for name, text in texts.items()}

    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    tmp = a.out / "_tmp"
    tmp.mkdir()

    # the TP=1 state from the official model's own state_dict (keys incl. its rotary inv_freq buffer)
    patch_official()
    init_dist(0, 1, 29510)
    from SwissArmyTransformer.model import GLM130B

    full = random_state(GLM130B(sat_args(None, 1, True)).half(), a.seed, a.gain)
    torch.distributed.destroy_process_group()
    write_checkpoint(a.out / "tp1", [full], a.tokenizer, pieces)
    write_checkpoint(a.out / "tp2", split_for_tp2(full), a.tokenizer, pieces)

    arrays: dict[str, np.ndarray] = {"eop": np.asarray(commands["<eop>"]), "eos": np.asarray(EOS)}
    runs = {}
    port = 29520
    for world in (1, 2):
        for fp16 in (False, True):
            port += 1
            runs[(world, fp16)] = spawn(world, a.out / f"tp{world}", fp16, a.glm130b, prompts, port, tmp,
                                        commands["<eop>"])
    for name, (ids, _, _) in prompts.items():
        arrays[f"{name}/ids"] = np.asarray(ids, dtype=np.int64)
        arrays[f"{name}/text"] = np.asarray(texts[name])
        rows = np.arange(len(ids)) if len(ids) < 200 else np.unique(np.r_[np.arange(0, len(ids), LONG_EVERY),
                                                                          np.arange(len(ids) - 16, len(ids))])
        arrays[f"{name}/prompt_rows"] = rows
        for (world, fp16), res in runs.items():
            r = res[name]
            tag = f"{name}/tp{world}_{'fp16' if fp16 else 'fp32'}"
            arrays[f"{tag}/prompt_logits"] = r["prompt_logits"][rows].astype(np.float32)
            arrays[f"{tag}/step_logits"] = r["step_logits"].astype(np.float32)
            arrays[f"{tag}/greedy"] = r["greedy"]
        one, two = runs[(1, False)][name], runs[(2, False)][name]
        scale = float(one["prompt_logits"].max() - one["prompt_logits"].min())
        per_pos = np.abs(one["prompt_logits"] - two["prompt_logits"]).max(-1) / scale
        diff = float(per_pos.max())
        print(f"{name}: {len(ids)} ids, official TP=2 vs TP=1 fp32: {diff:.2e} of the logit scale; "
              f"greedy fp32 {one['greedy'].tolist()} fp16 {runs[(1, True)][name]['greedy'].tolist()}")
        assert diff < 1e-5 and one["greedy"].tolist() == two["greedy"].tolist(), "the TP=2 cut is not SAT's"
    shutil.rmtree(tmp)
    np.savez_compressed(a.out / "official_logits.npz", **arrays)
    print("wrote", a.out)


if __name__ == "__main__":
    sys.exit(main())
