"""Cross-check of this fixture against the official ChatGLM2/3 modeling code (see README.md).

Not run by the tests, and not in the project venv: the official ``modeling_chatglm.py`` /
``configuration_chatglm.py`` / ``tokenization_chatglm.py`` / ``quantization.py`` need an older
transformers (run with 4.33.3 and torch 2.13 in a scratch venv) and are not in this repository.
Usage::

    python check_official_code.py CHATGLM2_CODE_DIR CHATGLM3_CODE_DIR WORK_DIR

where the code dirs hold the four official files (THUDM/chatglm2-6b, THUDM/chatglm3-6b). For
each fixture checkpoint it copies the checkpoint and the official files to ``WORK_DIR``, adds
``auto_map`` and ``torch_dtype: float32`` to the copy's config.json (and ``auto_map`` to its
tokenizer_config.json), loads it with ``trust_remote_code``, builds the prompt ids with the
official tokenizer (ChatGLM2: ``build_prompt`` then ``tokenizer([prompt])``; ChatGLM3:
``build_chat_input``) and prints how they, the full-sequence fp32 logits and 8 greedy tokens
(``generate``, the official KV cache) compare with the stored ones.

The ``-32k`` checkpoints need the long-context releases' rotary, which the base releases'
files lack; :func:`patch_rope_ratio` applies it to the scratch copy (ChatGLM2-6B-32k:
``seq_idx = arange(seq_len) / rope_ratio``; ChatGLM3-6B-32k: ``base = base * rope_ratio``).
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parent


def _fixture_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patch_rope_ratio(code: Path, variant: str) -> None:
    """Give the scratch copy's RotaryEmbedding the 32k releases' ``rope_ratio``."""
    path = code / "modeling_chatglm.py"
    s = path.read_text(encoding="utf-8")

    def sub(old: str, new: str) -> None:
        nonlocal s
        assert old in s, old
        s = s.replace(old, new, 1)

    sub("def __init__(self, dim, original_impl=False, device=None, dtype=None):\n",
        "def __init__(self, dim, rope_ratio=1, original_impl=False, device=None, dtype=None):\n"
        "        self_rope_ratio = rope_ratio\n")
    sub("        self.original_impl = original_impl\n",
        "        self.original_impl = original_impl\n        self.rope_ratio = self_rope_ratio\n")
    if variant == "chatglm2":
        old = "seq_idx = torch.arange(seq_len, dtype=dtype, device=device)"
        sub(old, old + " / self.rope_ratio")
    else:
        old = "        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=device) / n_elem))"
        sub(old, "        base = base * self.rope_ratio\n" + old)
    sub("RotaryEmbedding(rotary_dim // 2, original_impl",
        "RotaryEmbedding(rotary_dim // 2, rope_ratio=config.rope_ratio, original_impl")
    path.write_text(s, encoding="utf-8")
    cfg = code / "configuration_chatglm.py"
    s = cfg.read_text(encoding="utf-8")
    sub("        self.seq_length = seq_length\n",
        "        self.seq_length = seq_length\n        self.rope_ratio = kwargs.pop('rope_ratio', 1)\n")
    cfg.write_text(s, encoding="utf-8")


def prepare(name: str, code: Path, work: Path) -> Path:
    dst = work / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(FIXTURE / name, dst)
    for f in code.glob("*.py"):
        shutil.copy(f, dst / f.name)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                       "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    cfg["torch_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    tok_cfg = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    return dst


def official_ids(tok: Any, variant: str, query: str, history: list[tuple[str, str]], system: str | None) -> list[int]:
    if variant == "chatglm2":
        return list(tok([tok.build_prompt(query, history)])["input_ids"][0])
    turns: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for q, r in history:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    return list(tok.build_chat_input(query, history=turns)["input_ids"][0].tolist())


def main(code2: Path, code3: Path, work: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mk = _fixture_module()
    print("transformers", transformers.__version__, "torch", torch.__version__)
    ref = np.load(FIXTURE / "reference_logits.npz")
    for name, variant, ratio, _ in mk.CHECKPOINTS:
        code = code2 if variant == "chatglm2" else code3
        if ratio:
            patched = work / f"code-{name}"
            shutil.rmtree(patched, ignore_errors=True)
            shutil.copytree(code, patched)
            patch_rope_ratio(patched, variant)
            code = patched
        folder = prepare(name, code, work)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).float().eval()
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        query = "你好，请讲一个 short story about a cat."
        system = None if variant == "chatglm2" else "You are a helpful assistant."
        cases = {"short": official_ids(tok, variant, query, [], system)}
        if f"{name}/long/ids" in ref:  # the same history as make_fixture.prompts()
            rng, history = random.Random(7), []
            while len(ids := official_ids(tok, variant, "What happened next?", history, None)) < 1030:
                history += mk._history(rng, 1)
            cases["long"] = ids
        for case, ids in cases.items():
            full, n = ref[f"{name}/{case}/ids"], int(ref[f"{name}/{case}/prompt_len"])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([full.tolist()])).logits[0].float().numpy()
                gen = model.generate(input_ids=torch.tensor([full[:n].tolist()]), max_new_tokens=8, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, n:].tolist()
            theirs = ref[f"{name}/{case}/logits"]
            diff = float(np.abs(logits - theirs).max())
            print(f"{name}/{case}: official ids == fixture ids: {ids == full[:n].tolist()} ({n} ids); "
                  f"max |official - fixture| = {diff:.3g} ({diff / float(theirs.max() - theirs.min()):.3g} of the "
                  f"range); argmax equal everywhere: {bool((logits.argmax(-1) == theirs.argmax(-1)).all())}; "
                  f"official greedy == fixture greedy: {gen == ref[f'{name}/{case}/greedy'].tolist()}")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
