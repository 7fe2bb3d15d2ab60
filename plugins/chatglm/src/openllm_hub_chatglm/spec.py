"""What a ChatGLM checkpoint is: its variant (v1, v2, v3) and shapes, read from config.json.

ChatGLM-6B (v1) and ChatGLM2/3-6B share ``model_type: chatglm`` but differ in architecture;
v2 and v3 share the architecture and differ only in tokenizer specials and chat format,
which config.json does not record. :func:`read_spec` tells them apart from the config's
fields and the names the checkpoint was published under, and refuses what it cannot run
(GLM-4, P-tuning prefixes, unsupported flags) with a clear error. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openllm_hub.plugin import CorruptFileError, InvalidParameterError, UnknownFormatError

Variant = Literal["chatglm", "chatglm2", "chatglm3"]
VARIANTS: tuple[Variant, ...] = ("chatglm", "chatglm2", "chatglm3")

#: v2/v3 flags whose non-default value would need code this engine does not have.
_V2_REQUIRED = {
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "multi_query_attention": True,
}


@dataclass(frozen=True)
class GLMSpec:
    """The facts the engine needs about one checkpoint (names follow the official configs)."""

    variant: Variant
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    num_kv_heads: int
    ffn_size: int
    eps: float
    qkv_bias: bool
    linear_bias: bool
    max_length: int
    rope_ratio: float = 1.0
    tie_word_embeddings: bool = False
    quantization_bit: int = 0
    torch_dtype: str = "float16"
    # ChatGLM-6B (v1) special ids, used by its position ids and prefix attention
    mask_token_id: int | None = None
    gmask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def version(self) -> int:
        return VARIANTS.index(self.variant) + 1

    @property
    def residual_alpha(self) -> float:
        """v1's residual scale: the normalised input is added back times ``sqrt(2 * 28)``.

        The reference's ``GLMBlock`` computes ``sqrt(2 * num_layers)`` but ``ChatGLMModel``
        never passes ``num_layers`` to it, so its default of 28 always applies (the same
        value for the released 28-layer model; verified on golden data of a 1-layer model).
        """
        return math.sqrt(2 * 28)

    def parameter_count(self) -> int:
        """Parameters of the float model (embedding, layers, final norm, output layer)."""
        h, f, L = self.hidden_size, self.ffn_size, self.num_layers
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        if self.version == 1:
            per_layer = (4 * h + h * qkv_out + qkv_out + self.num_heads * self.head_dim * h + h
                         + h * f + f + f * h + h)
            final = 2 * h
        else:
            per_layer = (2 * h + h * qkv_out + (qkv_out if self.qkv_bias else 0) + self.num_heads * self.head_dim * h
                         + h * 2 * f + f * h)
            final = h
        out = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + L * per_layer + final + out


def _int(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CorruptFileError(f"config.json: {key!r} must be a positive integer, got {value!r}", where=where,
                               fix="restore config.json from the checkpoint's source")
    return value


def _opt_int(cfg: dict[str, Any], key: str, default: int, where: Path, *, low: int = 1) -> int:
    """An optional integer key (``default`` when absent or null), at least ``low``."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CorruptFileError(f"config.json: {key!r} must be an integer >= {low}, got {value!r}", where=where,
                               fix=f"correct {key} in config.json, or restore it from the checkpoint's source")
    return value


def _opt_float(cfg: dict[str, Any], key: str, default: float, where: Path, *, below: float | None = None) -> float:
    """An optional positive finite number (``default`` when absent or null), under ``below``."""
    value = cfg.get(key)
    if value is None:
        return default
    if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0
            or (below is not None and value >= below)):
        bound = f" below {below}" if below is not None else ""
        raise CorruptFileError(f"config.json: {key!r} must be a positive number{bound}, got {value!r}", where=where,
                               fix=f"correct {key} in config.json, or restore it from the checkpoint's source")
    return float(value)


def _token(cfg: dict[str, Any], key: str, where: Path) -> int | None:
    """An optional special-token id: a non-negative integer (it need not lie inside the
    embedding: ChatGLM-6B only compares ids against it, and tiny test models keep the real ids)."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CorruptFileError(f"config.json: {key!r} must be a non-negative token id, got {value!r}", where=where,
                               fix=f"correct {key} in config.json, or restore it from the checkpoint's source")
    return value


def _names(path: Path, cfg: dict[str, Any]) -> str:
    """The names the checkpoint was published under (config and tokenizer config), lower-cased."""
    import json

    names = [str(cfg.get("_name_or_path", ""))]
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            data = json.loads(tok_cfg.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}
        if isinstance(data, dict):
            names.append(str(data.get("name_or_path", "")))
            names.append(str(data.get("chat_template", ""))[:2000])
    return " ".join(names).lower()


def detect_generation(cfg: dict[str, Any]) -> int | None:
    """1 for ChatGLM-6B configs, 2 for the ChatGLM2/3 architecture, None when neither."""
    if cfg.get("model_type") != "chatglm":
        return None
    if "padded_vocab_size" in cfg or "multi_query_attention" in cfg or "ffn_hidden_size" in cfg:
        return 2
    if "position_encoding_2d" in cfg or "inner_hidden_size" in cfg or "max_sequence_length" in cfg:
        return 1
    return None


def resolve_variant(path: Path, cfg: dict[str, Any], requested: str = "auto") -> Variant:
    """Which ChatGLM this is; ``requested`` (a load option) wins when it fits the architecture."""
    gen = detect_generation(cfg)
    names = _names(path, cfg)
    if "glm-4" in names or "glm4" in names or cfg.get("padded_vocab_size") == 151552:
        raise UnknownFormatError("GLM-4 checkpoints are not supported by the chatglm plugin (tiktoken tokenizer, "
                                 "different chat format)", where=path, fix="use a plugin for GLM-4")
    if gen is None:
        raise UnknownFormatError("config.json says model_type=chatglm but matches neither the ChatGLM-6B nor the "
                                 "ChatGLM2/3 layout (unknown ChatGLM variant)", where=path / "config.json",
                                 fix="this plugin runs ChatGLM-6B, ChatGLM2-6B and ChatGLM3-6B checkpoints")
    if requested != "auto":
        if requested not in VARIANTS:
            raise InvalidParameterError(f"unknown ChatGLM variant {requested!r}", where="variant",
                                        fix=f"use one of: auto, {', '.join(VARIANTS)}")
        if (requested == "chatglm") != (gen == 1):
            raise InvalidParameterError(
                f"variant={requested!r} does not fit this checkpoint (its config is the "
                f"{'ChatGLM-6B' if gen == 1 else 'ChatGLM2/3'} architecture)", where=path,
                fix="use variant='auto'")
        return requested
    if gen == 1:
        return "chatglm"
    if "chatglm3" in names or "<|user|>" in names:
        return "chatglm3"
    if "chatglm2" in names or "codegeex2" in names:
        return "chatglm2"
    raise UnknownFormatError(
        "cannot tell ChatGLM2 from ChatGLM3: they share one architecture and config.json names neither "
        "(unknown ChatGLM variant)", where=path / "config.json",
        fix="pass variant='chatglm2' or variant='chatglm3' to load(), or set _name_or_path in config.json")


def read_spec(path: Path, cfg: dict[str, Any], requested: str = "auto") -> GLMSpec:
    """Parse and check ``cfg`` (config.json of the folder ``path``)."""
    where = path / "config.json"
    if not isinstance(cfg, dict):
        raise CorruptFileError(f"config.json must hold a JSON object, not a {type(cfg).__name__}", where=where,
                               fix="restore config.json from the checkpoint's source")
    variant = resolve_variant(path, cfg, requested)
    if cfg.get("pre_seq_len") not in (None, 0):
        raise UnknownFormatError("P-tuning v2 checkpoints (pre_seq_len) are not supported", where=where,
                                 fix="merge or drop the prefix encoder, or use the original code")
    qbit = cfg.get("quantization_bit") or 0
    if qbit not in (0, 4, 8):
        raise UnknownFormatError(f"quantization_bit={qbit!r} is not supported (only 4 and 8)", where=where)
    if cfg.get("quantization_embeddings"):
        raise UnknownFormatError("checkpoints with quantized embeddings (chatglm-6b-int4-qe) are not supported",
                                 where=where, fix="use the int4/int8 checkpoint, or the fp16 one with quantize=...")
    dtype = str(cfg.get("torch_dtype") or "float16")
    if variant == "chatglm":
        if cfg.get("position_encoding_2d", True) is not True:
            raise UnknownFormatError("ChatGLM-6B configs with position_encoding_2d=false are not supported",
                                     where=where)
        hidden, heads = _int(cfg, "hidden_size", where), _int(cfg, "num_attention_heads", where)
        if hidden % heads or (hidden // heads) % 4:
            raise CorruptFileError("hidden_size must split into heads whose size divides by 4 (2D rotary)",
                                   where=where)
        vocab = _int(cfg, "vocab_size", where)
        return GLMSpec(
            variant=variant, vocab_size=vocab, hidden_size=hidden,
            num_layers=_int(cfg, "num_layers", where), num_heads=heads, head_dim=hidden // heads,
            num_kv_heads=heads, ffn_size=_opt_int(cfg, "inner_hidden_size", 4 * hidden, where),
            eps=_opt_float(cfg, "layernorm_epsilon", 1e-5, where, below=1.0), qkv_bias=True, linear_bias=True,
            max_length=_opt_int(cfg, "max_sequence_length", 2048, where), quantization_bit=qbit, torch_dtype=dtype,
            mask_token_id=_token(cfg, "mask_token_id", where),
            gmask_token_id=_token(cfg, "gmask_token_id", where),
            bos_token_id=_token(cfg, "bos_token_id", where),
            eos_token_id=_token(cfg, "eos_token_id", where),
            raw=dict(cfg),
        )
    for key, want in _V2_REQUIRED.items():
        if cfg.get(key, want) != want:
            raise UnknownFormatError(f"ChatGLM2/3 configs with {key}={cfg.get(key)!r} are not supported "
                                     "(unknown ChatGLM variant)", where=where)
    hidden, heads = _int(cfg, "hidden_size", where), _int(cfg, "num_attention_heads", where)
    head_dim = _opt_int(cfg, "kv_channels", hidden // heads, where)
    groups = _int(cfg, "multi_query_group_num", where)
    if heads % groups or head_dim % 4:
        raise CorruptFileError("num_attention_heads must divide into multi_query_group_num groups and kv_channels "
                               "by 4", where=where)
    vocab2: Any = cfg.get("padded_vocab_size") or cfg.get("vocab_size")
    if not isinstance(vocab2, int) or isinstance(vocab2, bool) or vocab2 <= 0:
        raise CorruptFileError(f"config.json: 'padded_vocab_size' must be a positive integer, got {vocab2!r}",
                               where=where, fix="restore config.json from the checkpoint's source")
    eos: Any = cfg.get("eos_token_id", 2)
    if "eos_token_id" in cfg and not isinstance(eos, list):
        eos = _token(cfg, "eos_token_id", where)  # a string or a negative id is refused
    return GLMSpec(
        variant=variant, vocab_size=vocab2, hidden_size=hidden, num_layers=_int(cfg, "num_layers", where),
        num_heads=heads, head_dim=head_dim, num_kv_heads=groups, ffn_size=_int(cfg, "ffn_hidden_size", where),
        eps=_opt_float(cfg, "layernorm_epsilon", 1e-5, where, below=1.0),
        qkv_bias=bool(cfg.get("add_qkv_bias", True) or cfg.get("add_bias_linear", False)),
        linear_bias=bool(cfg.get("add_bias_linear", False)), max_length=_opt_int(cfg, "seq_length", 8192, where),
        rope_ratio=_opt_float(cfg, "rope_ratio", 1.0, where), tie_word_embeddings=bool(cfg.get("tie_word_embeddings")),
        quantization_bit=qbit, torch_dtype=dtype,
        eos_token_id=eos if isinstance(eos, int) else None, raw=dict(cfg),
    )
