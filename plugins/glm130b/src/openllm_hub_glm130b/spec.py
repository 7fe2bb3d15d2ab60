"""The model config of a GLM-130B-shaped checkpoint: ``glm130b_config.json``.

GLM-130B's SwissArmyTransformer checkpoints carry no config: the shapes come from the launch
script (``configs/model_glm_130b.sh``: ``--num-layers 70 --hidden-size 12288
--inner-hidden-size 32768 --vocab-size 150528 --num-attention-heads 96
--max-sequence-length 2048``). This plugin therefore reads a small JSON file next to the
``latest`` file. Its schema (every key but the five shape keys is optional)::

    {
      "model_type": "glm-130b",            # marks the folder as ours (detection)
      "num_layers": 70,
      "hidden_size": 12288,
      "num_attention_heads": 96,
      "inner_hidden_size": 32768,          # default 4 * hidden * 2 // 3 (SAT's GLU default)
      "vocab_size": 150528,                # rows of the word embedding (padded vocabulary)
      "max_sequence_length": 2048,
      "layernorm_epsilon": 1e-05,
      "model_parallel_size": 8,            # TP degree of the mp_rank_NN shards on disk
      "quantization_bit_width": null,      # 8 or 4 when the shards hold INT8/INT4 linears
      "dtype": "fp16",                     # dtype of the stored floating-point tensors
      "tokenizer": {                       # see openllm_hub_glm130b.tokenizer
        "type": "icetk" | "sentencepiece",
        "path": "tokenizer.model",         # sentencepiece: relative to the checkpoint folder
        "id_offset": 0,                    # added to sentencepiece ids (icetk: 20000)
        "commands": {"[MASK]": 150000, "[gMASK]": 150001, "[sMASK]": 150002,
                     "<sop>": 150004, "<eop>": 150005, "<eos>": 20002}
      }
    }

``openllm-hub glm130b-init-config CKPT`` writes the published GLM-130B values. Pure Python:
the planner reads this without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from openllm_hub.plugin import CorruptFileError, InvalidParameterError, NotFoundError, read_json

CONFIG_NAME = "glm130b_config.json"
MODEL_TYPE = "glm-130b"
#: The special tokens GLM-130B's generation code needs, by the names used here.
COMMANDS = ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<eos>")
DTYPES = ("fp16", "bf16", "fp32")

#: icetk's GLM-130B command ids (SwissArmyTransformer's _IceTokenizer: 150000 + index of
#: [MASK], [gMASK], [sMASK], eod, sop, eop, ENC, dBLOCK; eos is the text piece 20002).
ICETK_COMMANDS: dict[str, int] = {
    "[MASK]": 150000, "[gMASK]": 150001, "[sMASK]": 150002, "<eod>": 150003,
    "<sop>": 150004, "<eop>": 150005, "<eos>": 20002,
}


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer a checkpoint uses and where its special tokens sit."""

    type: str = "icetk"
    path: str | None = None
    id_offset: int = 0
    commands: dict[str, int] = field(default_factory=lambda: dict(ICETK_COMMANDS))


@dataclass(frozen=True)
class GLMConfig:
    """Shapes and storage of a GLM-130B-shaped model (see the module docstring)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    inner_hidden_size: int = 0
    max_sequence_length: int = 2048
    layernorm_epsilon: float = 1e-5
    model_parallel_size: int = 1
    quantization_bit_width: int | None = None
    dtype: str = "fp16"
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)

    def __post_init__(self) -> None:
        if self.inner_hidden_size == 0 and isinstance(self.hidden_size, int):  # check() reports other types
            object.__setattr__(self, "inner_hidden_size", 4 * self.hidden_size * 2 // 3)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def n_params(self) -> int:
        """Parameters (the tied output layer is counted once)."""
        h, i = self.hidden_size, self.inner_hidden_size
        per_layer = (3 * h * h + 3 * h) + (h * h + h) + (2 * i * h + 2 * i) + (i * h + h) + 4 * h
        return self.num_layers * per_layer + self.vocab_size * h + 2 * h

    def check(self, where: str | Path = CONFIG_NAME) -> GLMConfig:
        """Raise InvalidParameterError on values no GLM-130B-shaped model can have."""
        positive = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "inner_hidden_size",
                    "max_sequence_length", "model_parallel_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}", where=where)
        if self.hidden_size % self.num_attention_heads:
            raise InvalidParameterError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}",
                where=where)
        if self.head_dim % 2:
            raise InvalidParameterError(f"the head size {self.head_dim} must be even for rotary embeddings",
                                        where=where)
        eps = self.layernorm_epsilon
        if not isinstance(eps, int | float) or isinstance(eps, bool) or not 0 < eps < 1:
            raise InvalidParameterError(f"layernorm_epsilon must be a number in (0, 1), got {eps!r}", where=where)
        if self.quantization_bit_width not in (None, 4, 8):
            raise InvalidParameterError(f"quantization_bit_width must be null, 8 or 4, got "
                                        f"{self.quantization_bit_width!r}", where=where)
        if self.dtype not in DTYPES:
            raise InvalidParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}", where=where)
        missing = [c for c in COMMANDS if c not in self.tokenizer.commands]
        if missing:
            raise InvalidParameterError(f"tokenizer.commands lacks {', '.join(missing)}", where=where,
                                        fix=f"give the ids of {', '.join(COMMANDS)}")
        bad = {k: v for k, v in self.tokenizer.commands.items() if not 0 <= int(v) < self.vocab_size}
        if bad:
            raise InvalidParameterError(f"tokenizer command ids outside the vocabulary: {bad}", where=where)
        return self

    def check_world(self, world: int, where: str = "tensor parallelism") -> None:
        """Refuse a TP degree that does not divide the heads, the vocabulary or the MLP."""
        if world < 1:
            raise InvalidParameterError(f"the world size must be at least 1, got {world}", where=where)
        for name, value in (("num_attention_heads", self.num_attention_heads), ("vocab_size", self.vocab_size),
                            ("inner_hidden_size", self.inner_hidden_size), ("hidden_size", self.hidden_size)):
            if value % world:
                divisors = [d for d in range(1, self.num_attention_heads + 1)
                            if self.num_attention_heads % d == 0 and self.vocab_size % d == 0
                            and self.inner_hidden_size % d == 0 and self.hidden_size % d == 0]
                raise InvalidParameterError(
                    f"a tensor-parallel world of {world} ranks does not divide {name}={value}",
                    where=where, fix=f"use a world size in {divisors}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {"model_type": MODEL_TYPE, **d}

    def with_(self, **changes: Any) -> GLMConfig:
        return replace(self, **changes)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str | Path = CONFIG_NAME) -> GLMConfig:
        if not isinstance(data, dict):
            raise CorruptFileError("the config must be a JSON object", where=where)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(k for k in data if k not in known and k != "model_type")
        if unknown:
            raise InvalidParameterError(f"unknown config keys: {', '.join(unknown)}", where=where,
                                        fix=f"valid keys: model_type, {', '.join(sorted(known))}")
        required = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size")
        missing = [k for k in required if k not in data]
        if missing:
            raise InvalidParameterError(f"the config lacks {', '.join(missing)}", where=where)
        values = dict(data)
        values.pop("model_type", None)
        tok = values.pop("tokenizer", None)
        _check_values(values, where)
        spec = TokenizerSpec()
        if tok is not None:
            if not isinstance(tok, dict) or set(tok) - {"type", "path", "id_offset", "commands"}:
                raise InvalidParameterError("tokenizer must be an object with type, path, id_offset, commands",
                                            where=where)
            spec = _tokenizer_spec(tok, where)
        try:
            cfg = cls(tokenizer=spec, **values)
        except TypeError as exc:
            raise InvalidParameterError(f"invalid config: {exc}", where=where) from None
        return cfg.check(where)


#: Bounds of the config's numbers: far beyond any real GLM, small enough that a typo (or a
#: hostile file) cannot make a check loop over billions of ranks or layers.
LIMITS: dict[str, tuple[int, int]] = {
    "num_layers": (1, 10_000), "hidden_size": (1, 1 << 20), "num_attention_heads": (1, 1 << 16),
    "vocab_size": (1, 1 << 24), "inner_hidden_size": (0, 1 << 22), "max_sequence_length": (1, 1 << 24),
    "model_parallel_size": (1, 4096),
}


def _check_values(values: dict[str, Any], where: str | Path) -> None:
    """Types and bounds of the config's numbers and names (before the dataclass sees them)."""
    for name, (lo, hi) in LIMITS.items():
        if name in values:
            v = values[name]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise InvalidParameterError(f"{name} must be an integer from {lo} to {hi}, got {v!r}", where=where,
                                            fix="run `openllm-hub glm130b-init-config` for the published values")
    eps = values.get("layernorm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise InvalidParameterError(f"layernorm_epsilon must be a number between 0 and 1, got {eps!r}", where=where)
    qbits = values.get("quantization_bit_width")
    if isinstance(qbits, bool):
        raise InvalidParameterError(f"quantization_bit_width must be null, 8 or 4, got {qbits!r}", where=where)
    if not isinstance(values.get("dtype", "fp16"), str):
        raise InvalidParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {values['dtype']!r}", where=where)


def _tokenizer_spec(tok: dict[str, Any], where: str | Path) -> TokenizerSpec:
    """The ``tokenizer`` object, its types checked (names are strings, ids integers)."""
    def _id(value: Any, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 31:
            raise InvalidParameterError(f"tokenizer.{what} must be a non-negative integer, got {value!r}",
                                        where=where)
        return value

    kind, path = tok.get("type", "icetk"), tok.get("path")
    if not isinstance(kind, str):
        raise InvalidParameterError(f"tokenizer.type must be a string, got {kind!r}", where=where)
    if path is not None and (not isinstance(path, str) or not path or "\0" in path):
        raise InvalidParameterError(f"tokenizer.path must be a file name, got {path!r}", where=where)
    commands = tok.get("commands") or ICETK_COMMANDS
    if not isinstance(commands, dict):
        raise InvalidParameterError(f"tokenizer.commands must be an object of name -> id, got {commands!r}",
                                    where=where)
    return TokenizerSpec(type=kind, path=path, id_offset=_id(tok.get("id_offset", 0), "id_offset"),
                         commands={str(k): _id(v, f"commands[{k!r}]") for k, v in commands.items()})


def read_config(folder: str | Path) -> GLMConfig:
    """Read ``glm130b_config.json`` from a checkpoint folder (or the file itself)."""
    p = Path(folder)
    path = p if p.is_file() else p / CONFIG_NAME
    if not path.is_file():
        raise NotFoundError(
            f"no {CONFIG_NAME}: GLM-130B checkpoints carry no shapes, so this plugin needs the config file",
            where=path,
            fix=f"run `openllm-hub glm130b-init-config {p}` to write the published GLM-130B config "
                "(or write one with num_layers, hidden_size, num_attention_heads, vocab_size)")
    return GLMConfig.from_json(read_json(path), where=path)


#: The published GLM-130B (configs/model_glm_130b.sh of THUDM/GLM-130B).
GLM_130B = GLMConfig(num_layers=70, hidden_size=12288, num_attention_heads=96, inner_hidden_size=32768,
                     vocab_size=150528, max_sequence_length=2048, model_parallel_size=8,
                     tokenizer=TokenizerSpec(type="icetk", id_offset=20000))
