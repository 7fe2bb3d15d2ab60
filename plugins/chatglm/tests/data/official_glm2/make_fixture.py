"""Make the ChatGLM2/3 reference fixture in this folder (see README.md): tiny checkpoints in
the official layout and the logits that transformers' own GLM implementation computes on them.

The reference is ``transformers.GlmForCausalLM`` (model_type ``glm``), configured ONLY by
transformers' own config parsing: this script writes a ``config.json`` in transformers' format
(``transformers_config()``: the official ChatGLM2/3 config fields renamed by hand, below) and
reads it with ``AutoConfig.from_pretrained``. Nothing of openllm_hub's config reader
(``openllm_hub_chatglm.spec``) or networks is used; the checkpoints are written by the
project's tiny builder (``openllm_hub_chatglm.tiny``: trained sentencepiece model, random
weights under the official key names, official config.json fields).

Run from the repository root in the project venv (transformers 5.24, torch 2.13)::

    python plugins/chatglm/tests/data/official_glm2/make_fixture.py

Not run by the tests; the tests read what it wrote. Re-running rewrites every file (the
sentencepiece training is deterministic with one thread, the weights are seeded).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

#: ChatGLM2/3's tokenizer appends these after the sentencepiece vocabulary, in this order
#: (tokenization_chatglm.py, SPTokenizer.__init__)
V2_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
V3_SPECIALS = [*V2_SPECIALS, "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]

#: the checkpoints: (folder, variant, rope_ratio or None, weight seed). rope_ratio as in the
#: long-context releases: ChatGLM2-6B-32k divides positions by it (16), ChatGLM3-6B-32k
#: multiplies the rotary base by it (50).
CHECKPOINTS = [
    ("chatglm2", "chatglm2", None, 21),
    ("chatglm2-32k", "chatglm2", 16.0, 22),
    ("chatglm3-32k", "chatglm3", 50.0, 23),
]
SEQ_LENGTH = 2048
GREEDY_STEPS = 8


# ---- transformers' side: config in its own format, and the documented weight mapping ----------
def transformers_config(official: dict[str, Any], variant: str) -> dict[str, Any]:
    """config.json for ``GlmForCausalLM`` from the official ChatGLM2/3 config.json fields.

    ChatGLM2/3 -> GLM field by field: padded_vocab_size -> vocab_size; ffn_hidden_size ->
    intermediate_size; num_layers -> num_hidden_layers; multi_query_group_num ->
    num_key_value_heads (multi_query_attention=true); kv_channels -> head_dim;
    layernorm_epsilon -> rms_norm_eps; add_qkv_bias -> attention_bias (GLM's o_proj and MLP
    never have biases, as ChatGLM2/3's add_bias_linear=false); seq_length ->
    max_position_embeddings. Rotary: ChatGLM's ``RotaryEmbedding(rotary_dim // 2)`` rotates
    half of each head -> partial_rotary_factor 0.5 with base 10000; ChatGLM3's rope_ratio
    multiplies the base (rope_theta = 10000 * rope_ratio); ChatGLM2's rope_ratio divides the
    positions, which is transformers' "linear" rope scaling with factor = rope_ratio.
    """
    assert official["add_bias_linear"] is False and official["multi_query_attention"] is True
    assert official["rmsnorm"] is True and official["post_layer_norm"] is True
    assert official["apply_residual_connection_post_layernorm"] is False
    ratio = official.get("rope_ratio")
    cfg: dict[str, Any] = {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "vocab_size": official["padded_vocab_size"],
        "hidden_size": official["hidden_size"],
        "intermediate_size": official["ffn_hidden_size"],
        "num_hidden_layers": official["num_layers"],
        "num_attention_heads": official["num_attention_heads"],
        "num_key_value_heads": official["multi_query_group_num"],
        "head_dim": official["kv_channels"],
        "hidden_act": "silu",
        "attention_bias": official["add_qkv_bias"],
        "attention_dropout": 0.0,
        "rms_norm_eps": official["layernorm_epsilon"],
        "max_position_embeddings": official["seq_length"],
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0 * (ratio if ratio and variant == "chatglm3" else 1.0),
        "tie_word_embeddings": False,
        "pad_token_id": official["pad_token_id"],
        "eos_token_id": official["eos_token_id"],
        "torch_dtype": "float32",
    }
    if ratio and variant == "chatglm2":
        cfg["rope_scaling"] = {"type": "linear", "factor": ratio}
    return cfg


def glm_state_dict(official_sd: dict[str, torch.Tensor], official: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The official ChatGLM2/3 tensors under GlmForCausalLM's names.

    The only layout change: the fused ``query_key_value`` (rows ``[heads*d | groups*d |
    groups*d]``, SelfAttention.forward's split) becomes q_proj/k_proj/v_proj. ``dense_h_to_4h``
    is ``gate_up_proj`` unchanged (both chunk it in two and apply silu to the first half);
    ``transformer.rotary_pos_emb.inv_freq`` is dropped (both recompute it).
    """
    d, heads, groups = official["kv_channels"], official["num_attention_heads"], official["multi_query_group_num"]
    out = {
        "model.embed_tokens.weight": official_sd["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": official_sd["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": official_sd["transformer.output_layer.weight"],
    }
    for i in range(official["num_layers"]):
        src, dst = f"transformer.encoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = torch.split(official_sd[f"{src}self_attention.query_key_value.{kind}"],
                                  [heads * d, groups * d, groups * d], dim=0)
            out[f"{dst}self_attn.q_proj.{kind}"] = q
            out[f"{dst}self_attn.k_proj.{kind}"] = k
            out[f"{dst}self_attn.v_proj.{kind}"] = v
        out[f"{dst}self_attn.o_proj.weight"] = official_sd[f"{src}self_attention.dense.weight"]
        out[f"{dst}mlp.gate_up_proj.weight"] = official_sd[f"{src}mlp.dense_h_to_4h.weight"]
        out[f"{dst}mlp.down_proj.weight"] = official_sd[f"{src}mlp.dense_4h_to_h.weight"]
        out[f"{dst}input_layernorm.weight"] = official_sd[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = official_sd[f"{src}post_attention_layernorm.weight"]
    return out


def load_reference(folder: Path) -> Any:
    """GlmForCausalLM for the checkpoint ``folder``: config from ``folder/transformers/``
    through AutoConfig, weights mapped and loaded strictly (every key both ways)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, GlmForCausalLM

    config = AutoConfig.from_pretrained(folder / "transformers")
    official = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    sd = load_file(str(folder / "model.safetensors"))
    model = GlmForCausalLM(config)
    model.load_state_dict(glm_state_dict(sd, official), strict=True)
    return model.float().eval()


# ---- prompts, built as the official tokenizers / chat() build them ------------------------------
class OfficialIds:
    """``tokenization_chatglm.py``'s ids: sentencepiece ``encode`` of plain text, specials
    numbered after the sentencepiece vocabulary, prompts prefixed with ``[gMASK] sop``."""

    def __init__(self, model_file: Path, variant: str) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        n = self.sp.vocab_size()
        self.special = {t: n + i for i, t in enumerate(V3_SPECIALS if variant == "chatglm3" else V2_SPECIALS)}

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def prefix(self) -> list[int]:
        return [self.special["[gMASK]"], self.special["sop"]]

    def chatglm2_prompt(self, query: str, history: list[tuple[str, str]]) -> tuple[str, list[int]]:
        """ChatGLM2-6B ``chat()``: ``build_prompt`` then ``tokenizer([prompt])``."""
        prompt = ""
        for i, (q, r) in enumerate(history):
            prompt += f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n"
        prompt += f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
        return prompt, self.prefix() + self.encode(prompt)

    def chatglm3_prompt(self, query: str, history: list[tuple[str, str]], system: str | None) -> list[int]:
        """ChatGLM3-6B ``chat()``: ``build_chat_input`` (role id, ``encode("\\n")``, text)."""
        ids: list[int] = []
        if system is not None:
            ids += [self.special["<|system|>"], *self.encode("\n"), *self.encode(system)]
        for q, r in history:
            ids += [self.special["<|user|>"], *self.encode("\n"), *self.encode(q)]
            ids += [self.special["<|assistant|>"], *self.encode("\n"), *self.encode(r)]
        ids += [self.special["<|user|>"], *self.encode("\n"), *self.encode(query)]
        ids += [self.special["<|assistant|>"]]
        return self.prefix() + ids


_WORDS = ("the a of to and in is was for on with model language chat answer question history round user "
          "story cat dog house river tree time once upon there lived small large quick brown fox jumps over "
          "lazy night day sun moon star code python function return value list print data test").split()
_HANZI = "你好世界中文测试问答我们他她它是的了在有和人这大为上个国不以会来到说时要就出也得里后自年生能对下过子"


def _history(rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    def sentence() -> str:
        if rng.random() < 0.5:
            return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."
        return "".join(rng.choice(_HANZI) for _ in range(rng.randint(6, 16))) + "。"

    return [(sentence(), " ".join(sentence() for _ in range(rng.randint(2, 4)))) for _ in range(rounds)]


def prompts(tok: OfficialIds, variant: str, long: bool) -> dict[str, dict[str, Any]]:
    """The cases of one checkpoint: a short chat turn, and (``long``) a multi-round chat of
    >= 1,024 ids (history grown round by round until it is)."""
    rng = random.Random(7)
    cases: dict[str, dict[str, Any]] = {}
    query = "你好，请讲一个 short story about a cat."
    if variant == "chatglm2":
        text, ids = tok.chatglm2_prompt(query, [])
        cases["short"] = {"ids": ids, "text": text}
    else:
        cases["short"] = {"ids": tok.chatglm3_prompt(query, [], "You are a helpful assistant."), "text": ""}
    if not long:
        return cases
    history: list[tuple[str, str]] = []
    while True:
        history += _history(rng, 1)
        if variant == "chatglm2":
            text, ids = tok.chatglm2_prompt("What happened next?", history)
        else:
            text, ids = "", tok.chatglm3_prompt("What happened next?", history, None)
        if len(ids) >= 1030:
            cases["long"] = {"ids": ids, "text": text}
            return cases


# ---- build ----------------------------------------------------------------------------------------
def build(name: str, variant: str, ratio: float | None, seed: int, long: bool) -> dict[str, np.ndarray]:
    from openllm_hub_chatglm.tiny import build_checkpoint, train_tokenizer

    folder = HERE / name
    shutil.rmtree(folder, ignore_errors=True)
    tok_file = train_tokenizer(HERE / f"_{name}.model", variant, vocab_size=400)
    build_checkpoint(folder, variant, hidden=64, layers=2, heads=4, kv_groups=2, ffn=128, seq_length=SEQ_LENGTH,
                     seed=seed, tokenizer=tok_file, dtype=torch.float16)
    tok_file.unlink()
    cfg_path = folder / "config.json"
    official = json.loads(cfg_path.read_text(encoding="utf-8"))
    if ratio is not None:
        official["rope_ratio"] = ratio
        official["_name_or_path"] = f"THUDM/{variant}-6b-32k"
        cfg_path.write_text(json.dumps(official, indent=2) + "\n", encoding="utf-8")
        tcfg = folder / "tokenizer_config.json"
        tok_cfg = json.loads(tcfg.read_text(encoding="utf-8"))
        tok_cfg["name_or_path"] = official["_name_or_path"]
        tcfg.write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    (folder / "transformers").mkdir()
    (folder / "transformers" / "config.json").write_text(
        json.dumps(transformers_config(official, variant), indent=2) + "\n", encoding="utf-8")

    model = load_reference(folder)
    tok = OfficialIds(folder / "tokenizer.model", variant)
    out: dict[str, np.ndarray] = {}
    for case, spec in prompts(tok, variant, long).items():
        ids = spec["ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_STEPS, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
            full = ids + gen
            logits = model(torch.tensor([full])).logits[0].float().numpy()
        top2 = np.sort(logits, axis=-1)[:, -2:]
        print(f"{name}/{case}: {len(ids)} prompt ids, greedy {gen}, logit range "
              f"[{logits.min():.2f}, {logits.max():.2f}], smallest top-1 margin {(top2[:, 1] - top2[:, 0]).min():.2e}")
        out[f"{name}/{case}/ids"] = np.asarray(full, dtype=np.int64)
        out[f"{name}/{case}/prompt_len"] = np.asarray(len(ids), dtype=np.int64)
        out[f"{name}/{case}/greedy"] = np.asarray(gen, dtype=np.int64)
        out[f"{name}/{case}/logits"] = logits.astype(np.float32)
        out[f"{name}/{case}/text"] = np.asarray(spec["text"])
    return out


def main() -> None:
    import transformers

    torch.manual_seed(0)
    arrays: dict[str, np.ndarray] = {}
    for name, variant, ratio, seed in CHECKPOINTS:
        arrays.update(build(name, variant, ratio, seed, long=name != "chatglm2-32k"))
    arrays["versions"] = np.asarray(f"transformers {transformers.__version__}, torch {torch.__version__}")
    np.savez_compressed(HERE / "reference_logits.npz", **arrays)  # type: ignore[arg-type]
    print("wrote", HERE / "reference_logits.npz")


if __name__ == "__main__":
    main()
