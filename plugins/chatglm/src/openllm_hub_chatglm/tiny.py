"""Tiny ChatGLM checkpoints in the real on-disk layout, for tests and benchmarks.

The released tokenizers cannot be downloaded here, so :func:`train_tokenizer` trains a small
sentencepiece model (:mod:`openllm_hub.engines.spm_train`) under the same conventions: byte
fallback, identity normalisation (whitespace kept), a dummy-prefix space, and for ChatGLM-6B
the special pieces ``<n>``, ``<|tab|>``, ``<|blank_2..80|>``, ``[MASK] [gMASK] [sMASK]
<unused_0> <sop> <eop> <ENC> <dBLOCK>`` (the trainer puts user-defined pieces right after
the control pieces, where the release has them at the end; the tokenizer looks them up by
name, so ids differ but the layout rules are the same). :func:`build_checkpoint` writes
config.json (fields as in the official configs), the tokenizer files and random weights
under the official key names, as one file or ``*-000NN-of-000MM`` shards with an index, in
safetensors or ``pytorch_model*.bin``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub_chatglm.tokenizer import MAX_BLANK, V1_FILE, V1_SPECIALS, V2_FILE

if TYPE_CHECKING:  # pragma: no cover
    import torch

_WORDS = ("the a an of to and in is was for on with as by at from that this it be are or not have has "
          "model language chat token answer question history round user system assistant hello world "
          "story cat dog house river tree time once upon there lived small large quick brown fox jumps "
          "over lazy night day sun moon star code python function return value list dict print import "
          "def class self if else while true false none data test build website simple steps").split()
_HANZI = "你好世界中文测试问答我们他她它是的了在有和人这中大为上个国不以会来到说时要就出也得里后自年生能对下过子说"
_CODE = ("def f(x):\n    return x + 1\n", "for i in range(10):\n\tprint(i)\n", "x = f(1) + 2  # comment\n",
         "if a  ==  b:\n        pass\n", "{\"key\": [1, 2, 3]}\n")


def _corpus(seed: int = 0, lines: int = 1500) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        kind = i % 4
        if kind == 0:
            out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))).capitalize() + ".")
        elif kind == 1:
            out.append("".join(rng.choice(_HANZI) for _ in range(rng.randint(4, 16))) + "。")
        elif kind == 2:
            out.append(rng.choice(_CODE))
        else:
            out.append(f"[Round {rng.randint(0, 9)}] 问：{rng.choice(_HANZI)}{rng.choice(_HANZI)}？ 答："
                       f"{' '.join(rng.choice(_WORDS) for _ in range(3))} {rng.randint(0, 99999)}")
    return out


def train_tokenizer(path: Path, variant: str, vocab_size: int | None = None) -> Path:
    """Train a small sentencepiece model for ``variant`` (LLaMA's conventions, ChatGLM-6B's
    special pieces and ``<pad>``) and write it to ``path``."""
    from openllm_hub.engines.spm_train import LLAMA_CONVENTIONS, train_sentencepiece_file

    v1 = variant == "chatglm"
    lines = _corpus()
    if v1:  # the v1 tokenizer sees normalised text
        from openllm_hub_chatglm.tokenizer import V1Tokenizer

        lines = [V1Tokenizer.normalize(s) for s in lines]
    user = (["<n>", "<|tab|>", *(f"<|blank_{n}|>" for n in range(2, MAX_BLANK + 1)), *V1_SPECIALS] if v1 else [])
    settings = {**LLAMA_CONVENTIONS, "pad_id": 3 if v1 else -1, "unk_surface": " \u2047 "}
    return train_sentencepiece_file(path, lines, vocab_size=vocab_size or (640 if v1 else 512),
                                    user_defined_symbols=user, **settings)


def _pad(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def config_for(variant: str, vocab: int, *, hidden: int, layers: int, heads: int, kv_groups: int, ffn: int,
               seq_length: int, special_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """config.json as the official releases write it, with tiny shapes."""
    if variant == "chatglm":
        ids = special_ids or {}
        return {
            "_name_or_path": "THUDM/chatglm-6b", "architectures": ["ChatGLMModel"], "model_type": "chatglm",
            "bos_token_id": ids.get("<sop>"), "eos_token_id": ids.get("<eop>"), "mask_token_id": ids.get("[MASK]"),
            "gmask_token_id": ids.get("[gMASK]"), "pad_token_id": 3, "hidden_size": hidden,
            "inner_hidden_size": ffn, "layernorm_epsilon": 1e-5, "max_sequence_length": seq_length,
            "num_attention_heads": heads, "num_layers": layers, "position_encoding_2d": True,
            "torch_dtype": "float16", "use_cache": True, "vocab_size": vocab,
        }
    return {
        "_name_or_path": f"THUDM/{variant}-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True, "ffn_hidden_size": ffn, "fp32_residual_connection": False,
        "hidden_dropout": 0.0, "hidden_size": hidden, "kv_channels": hidden // heads, "layernorm_epsilon": 1e-5,
        "multi_query_attention": True, "multi_query_group_num": kv_groups, "num_attention_heads": heads,
        "num_layers": layers, "original_rope": True, "padded_vocab_size": vocab, "post_layer_norm": True,
        "rmsnorm": True, "seq_length": seq_length, "use_cache": True, "torch_dtype": "float16",
        "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }


def random_state_dict(cfg: dict[str, Any], seed: int = 0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Random weights under the official key names for ``cfg`` (scaled so outputs vary)."""
    import torch

    from openllm_hub_chatglm.spec import detect_generation

    g = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float32

    def rnd(*shape: int, std: float = 0.1, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std + mean).to(dtype)

    h = cfg["hidden_size"]
    sd: dict[str, torch.Tensor] = {}
    if detect_generation(cfg) == 1:
        v, f, layers = cfg["vocab_size"], cfg["inner_hidden_size"], cfg["num_layers"]
        sd["transformer.word_embeddings.weight"] = rnd(v, h, std=0.5)
        for i in range(layers):
            p = f"transformer.layers.{i}."
            for norm in ("input_layernorm", "post_attention_layernorm"):
                sd[p + norm + ".weight"], sd[p + norm + ".bias"] = rnd(h, mean=1.0), rnd(h)
            sd[p + "attention.query_key_value.weight"] = rnd(3 * h, h)
            sd[p + "attention.query_key_value.bias"] = rnd(3 * h)
            sd[p + "attention.dense.weight"], sd[p + "attention.dense.bias"] = rnd(h, h), rnd(h)
            sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"] = rnd(f, h), rnd(f)
            sd[p + "mlp.dense_4h_to_h.weight"], sd[p + "mlp.dense_4h_to_h.bias"] = rnd(h, f), rnd(h)
            sd[p + "attention.rotary_emb.inv_freq"] = torch.zeros(h // cfg["num_attention_heads"] // 4)
        # v1 adds the normalised input back times sqrt(2 * 28) and its output layer is the word
        # embedding matrix, so with final-norm weights near 1 a random network predicts its own
        # input token everywhere; weights of random sign remove that bias
        sd["transformer.final_layernorm.weight"], sd["transformer.final_layernorm.bias"] = rnd(h, std=1.0), rnd(h)
        # the official model ties its output layer to the word embeddings, so the checkpoints
        # it saves hold the same matrix twice
        sd["lm_head.weight"] = sd["transformer.word_embeddings.weight"].clone()
        return sd
    v, f, layers = cfg["padded_vocab_size"], cfg["ffn_hidden_size"], cfg["num_layers"]
    d, heads, groups = cfg["kv_channels"], cfg["num_attention_heads"], cfg["multi_query_group_num"]
    qkv = (heads + 2 * groups) * d
    sd["transformer.embedding.word_embeddings.weight"] = rnd(v, h, std=1.0)
    sd["transformer.rotary_pos_emb.inv_freq"] = torch.zeros(d // 4)
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = rnd(h, mean=1.0)
        sd[p + "self_attention.query_key_value.weight"], sd[p + "self_attention.query_key_value.bias"] = (
            rnd(qkv, h), rnd(qkv))
        sd[p + "self_attention.dense.weight"] = rnd(h, heads * d)
        sd[p + "post_attention_layernorm.weight"] = rnd(h, mean=1.0)
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * f, h)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(h, f)
    sd["transformer.encoder.final_layernorm.weight"] = rnd(h, mean=1.0)
    sd["transformer.output_layer.weight"] = rnd(v, h, std=0.5)
    return sd


def write_weights(folder: Path, sd: dict[str, torch.Tensor], *, fmt: str = "safetensors", shards: int = 1) -> None:
    """Write ``sd`` as HF weights: one file, or up to ``shards`` files of equal tensor counts
    with an index."""
    from openllm_hub.engines.hf_folder import write_hf_weights

    names = list(sd)
    per = -(-len(names) // shards)
    groups = [{k: sd[k] for k in names[i:i + per]} for i in range(0, len(names), per)]
    write_hf_weights(folder, groups, kind="safetensors" if fmt == "safetensors" else "bin")


def build_checkpoint(folder: Path, variant: str = "chatglm2", *, hidden: int = 64, layers: int = 2, heads: int = 4,
                     kv_groups: int = 2, ffn: int | None = None, seq_length: int = 512, seed: int = 0,
                     fmt: str = "safetensors", shards: int = 1, tokenizer: Path | None = None,
                     dtype: torch.dtype | None = None) -> Path:
    """Write a complete tiny ChatGLM checkpoint folder for ``variant`` and return it.

    ``tokenizer`` reuses an already trained tokenizer model file (training takes a second).
    """
    import shutil

    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    v1 = variant == "chatglm"
    tok_path = folder / (V1_FILE if v1 else V2_FILE)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, tok_path)
    else:
        train_tokenizer(tok_path, variant)
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    n = sp.get_piece_size()
    if v1:
        special = {t: sp.piece_to_id(t) for t in V1_SPECIALS}
        vocab = _pad(n)
        tok_cfg = {"name_or_path": "THUDM/chatglm-6b", "bos_token": "<sop>", "eos_token": "<eop>",
                   "end_token": "</s>", "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>",
                   "unk_token": "<unk>", "remove_space": False, "do_lower_case": False,
                   "tokenizer_class": "ChatGLMTokenizer", "num_image_tokens": 0}
    else:
        special = None
        vocab = _pad(n + (9 if variant == "chatglm3" else 5))
        tok_cfg = {"name_or_path": f"THUDM/{variant}-6b", "remove_space": False, "do_lower_case": False,
                   "tokenizer_class": "ChatGLMTokenizer"}
    cfg = config_for(variant, vocab, hidden=hidden, layers=layers, heads=heads, kv_groups=kv_groups,
                     ffn=ffn or (4 * hidden if v1 else 2 * hidden), seq_length=seq_length, special_ids=special)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
    write_weights(folder, random_state_dict(cfg, seed, dtype), fmt=fmt, shards=shards)
    return folder


# ---- openllm-hub tiny chatglm OUT ----------------------------------------------------------------
#: What ``openllm-hub tiny chatglm`` writes (the first is the default) and its ``-o`` options.
TINY_FORMATS = ("chatglm3", "chatglm2", "chatglm")
TINY_OPTIONS = {"seed": "random seed of the weights (default 0)",
                "layers": "transformer layers (default 2)",
                "shards": "safetensors shards, with the index file when > 1 (default 1)"}


def write_tiny(dst: Path, fmt: str, options: Mapping[str, Any]) -> Path:
    """``openllm-hub tiny chatglm DST --format chatglm|chatglm2|chatglm3``: a folder as the
    THUDM repositories hold it (config.json, tokenizer files, safetensors weights), with a small
    sentencepiece tokenizer trained here under the release's conventions."""
    from openllm_hub.plugin import int_option

    return build_checkpoint(dst, fmt, layers=int_option(options, "layers", 2, minimum=1),
                            seed=int_option(options, "seed", 0), shards=int_option(options, "shards", 1, minimum=1))
