"""Make the ChatGLM-6B (v1) reference fixture in this folder (see README.md): a tiny checkpoint
in the official layout and the logits that the OFFICIAL ``modeling_chatglm.py`` of
THUDM/chatglm-6b computes on it.

Two steps, in two environments (the official code is not in this repository):

1. ``checkpoint`` -- in the project venv, from the repository root::

       python plugins/chatglm/tests/data/official_glm1/make_fixture.py checkpoint

   writes ``chatglm/`` with the project's tiny builder (``openllm_hub_chatglm.tiny``: a trained
   sentencepiece ``ice_text.model`` with ChatGLM-6B's special pieces, official config.json and
   tokenizer_config.json fields, seeded random weights under the official key names, fp16).

2. ``reference CODE_DIR WORK_DIR`` -- in a scratch venv with the transformers version the
   ChatGLM-6B repository pins (``transformers==4.27.1``, torch, sentencepiece, numpy<2)::

       python plugins/chatglm/tests/data/official_glm1/make_fixture.py reference /path/to/official /tmp/work

   ``CODE_DIR`` holds the official ``modeling_chatglm.py``, ``configuration_chatglm.py``,
   ``tokenization_chatglm.py`` and ``quantization.py``. The checkpoint and those files are
   copied to ``WORK_DIR`` (adding ``auto_map`` to the copy's config.json and
   tokenizer_config.json, nothing else), loaded with ``trust_remote_code`` and ``.float()``
   (the official README's CPU recipe), and the official tokenizer builds the prompts as the
   official ``chat()`` builds them. It writes ``reference_logits.npz``.

Not run by the tests; the tests read what it wrote. Re-running rewrites every file (the
sentencepiece training is deterministic with one thread, the weights are seeded).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NAME = "chatglm"
SEED = 31
SEQ_LENGTH = 2048
GREEDY_STEPS = 8
OFFICIAL_FILES = ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py", "quantization.py")

SHORT_QUERY = "你好，请讲一个 short story about a cat."
LONG_QUERY = "What happened next?"
#: blank infilling: the text around one [MASK] (GLM's [MASK] mode: no [gMASK] in the prompt)
MASK_TEXT = ("The quick brown fox jumps over the lazy dog.", "The cat lived in a small house by the river.")

_WORDS = ("the a of to and in is was for on with model language chat answer question history round user "
          "story cat dog house river tree time once upon there lived small large quick brown fox jumps over "
          "lazy night day sun moon star code python function return value list print data test").split()
_HANZI = "你好世界中文测试问答我们他她它是的了在有和人这大为上个国不以会来到说时要就出也得里后自年生能对下过子"


def history(rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    """Seeded random English/Chinese chat rounds (query, response)."""
    def sentence() -> str:
        if rng.random() < 0.5:
            return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."
        return "".join(rng.choice(_HANZI) for _ in range(rng.randint(6, 16))) + "。"

    return [(sentence(), " ".join(sentence() for _ in range(rng.randint(2, 4)))) for _ in range(rounds)]


def chat_prompt(query: str, turns: list[tuple[str, str]]) -> str:
    """The prompt string of ChatGLM-6B's ``chat()`` (modeling_chatglm.py): the bare query
    without history, else ``[Round i]\\n问：...\\n答：...\\n`` rounds from 0."""
    if not turns:
        return query
    prompt = ""
    for i, (old_query, response) in enumerate(turns):
        prompt += f"[Round {i}]\n问：{old_query}\n答：{response}\n"
    return prompt + f"[Round {len(turns)}]\n问：{query}\n答："


# ---- step 1: the checkpoint (project venv) --------------------------------------------------------
def make_checkpoint() -> None:
    import torch
    from openllm_hub_chatglm.tiny import build_checkpoint, train_tokenizer

    folder = HERE / NAME
    shutil.rmtree(folder, ignore_errors=True)
    tok_file = train_tokenizer(HERE / "_ice_text.model", "chatglm")
    build_checkpoint(folder, "chatglm", hidden=64, layers=2, heads=4, ffn=256, seq_length=SEQ_LENGTH, seed=SEED,
                     tokenizer=tok_file, dtype=torch.float16)
    tok_file.unlink()
    print("wrote", folder, sorted(p.name for p in folder.iterdir()))


# ---- step 2: the official code (scratch venv) -----------------------------------------------------
def prepare(code: Path, work: Path) -> Path:
    """Copy the checkpoint and the official files to ``work``; add ``auto_map`` only."""
    dst = work / NAME
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(HERE / NAME, dst)
    for f in OFFICIAL_FILES:
        shutil.copy(code / f, dst / f)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                       "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                       "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    tok_cfg = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
    return dst


def official_cases(tok: Any) -> dict[str, dict[str, Any]]:
    """The prompts, as the official tokenizer builds them.

    * ``short``: ``chat(query)`` without history: ``tokenizer([query])`` (the tokenizer
      appends ``[gMASK] <sop>``).
    * ``history``: ``chat()`` with two rounds of history (``[Round 0]`` ... format).
    * ``long``: ``chat()`` with history grown round by round until the prompt has >= 1,030 ids.
    * ``mask``: blank infilling in GLM's ``[MASK]`` mode, which the official model supports
      (``get_position_ids``: the mask position is that of ``[gMASK]`` if present, else of
      ``[MASK]``) but its tokenizer never builds (it always appends ``[gMASK] <sop>``): the
      official tokenizer's ids of the text (``add_special_tokens=False``) around the
      ``[MASK]`` id, then ``<sop>``.
    """
    cases: dict[str, dict[str, Any]] = {}

    def chat_ids(text: str) -> list[int]:
        return [int(i) for i in tok([text], return_tensors="pt")["input_ids"][0].tolist()]

    text = chat_prompt(SHORT_QUERY, [])
    cases["short"] = {"ids": chat_ids(text), "text": text}
    rng = random.Random(5)
    text = chat_prompt("讲一个关于猫的故事。", history(rng, 2))
    cases["history"] = {"ids": chat_ids(text), "text": text}
    rng, turns = random.Random(7), []
    while True:
        turns += history(rng, 1)
        text = chat_prompt(LONG_QUERY, turns)
        ids = chat_ids(text)
        if len(ids) >= 1030:
            cases["long"] = {"ids": ids, "text": text}
            break
    left = tok(MASK_TEXT[0], add_special_tokens=False)["input_ids"]
    right = tok(MASK_TEXT[1], add_special_tokens=False)["input_ids"]
    mask_id, sop_id = tok.convert_tokens_to_ids("[MASK]"), tok.convert_tokens_to_ids("<sop>")
    cases["mask"] = {"ids": [*left, mask_id, *right, sop_id], "text": ""}
    return cases


def make_reference(code: Path, work: Path) -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    folder = prepare(code, work)
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).float().eval()
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    print(type(model).__name__, "transformers", transformers.__version__, "torch", torch.__version__)
    out: dict[str, Any] = {}
    for case, spec in official_cases(tok).items():
        ids = spec["ids"]
        with torch.no_grad():
            # the official generate path (prepare_inputs_for_generation: 2D positions, prefix
            # mask, KV cache); eos_token_id=None: always 8 tokens
            gen = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=GREEDY_STEPS, do_sample=False,
                                 eos_token_id=None)[0, len(ids):].tolist()
            full = ids + gen
            # one forward pass: ChatGLMModel.forward builds the mask and 2D positions itself
            logits = model(input_ids=torch.tensor([full])).logits[0].float().numpy()
        top2 = np.sort(logits, axis=-1)[:, -2:]
        print(f"{case}: {len(ids)} prompt ids, greedy {gen}, logit range [{logits.min():.2f}, {logits.max():.2f}], "
              f"smallest top-1 margin {(top2[:, 1] - top2[:, 0]).min():.2e}")
        out[f"{case}/ids"] = np.asarray(full, dtype=np.int64)
        out[f"{case}/prompt_len"] = np.asarray(len(ids), dtype=np.int64)
        out[f"{case}/greedy"] = np.asarray(gen, dtype=np.int64)
        out[f"{case}/logits"] = logits.astype(np.float32)
        out[f"{case}/text"] = np.asarray(spec["text"])
    # the tokenizer alone with the older releases' image-token offset (tokenizer_config.json
    # without num_image_tokens: the official default, 20000): ids of the chat prompts
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    del tok_cfg["num_image_tokens"]
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
    tok20k = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    for case in ("short", "history", "long"):
        text = str(out[f"{case}/text"])
        ids20k = [int(i) for i in tok20k([text], return_tensors="pt")["input_ids"][0].tolist()]
        assert [i - 20000 for i in ids20k] == out[f"{case}/ids"][: int(out[f"{case}/prompt_len"])].tolist()
        out[f"offset20000/{case}/ids"] = np.asarray(ids20k, dtype=np.int64)
    out["versions"] = np.asarray(f"official THUDM/chatglm-6b code, transformers {transformers.__version__}, "
                                 f"torch {torch.__version__}")
    np.savez_compressed(HERE / "reference_logits.npz", **out)
    print("wrote", HERE / "reference_logits.npz")


if __name__ == "__main__":
    if sys.argv[1:2] == ["checkpoint"]:
        make_checkpoint()
    elif sys.argv[1:2] == ["reference"] and len(sys.argv) == 4:
        make_reference(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
