"""Builders of tiny random LLaMA checkpoints in the real on-disk formats, for tests,
examples and benchmarks.

* :func:`make_tiny_hf` writes a HuggingFace folder exactly as a real LLaMA repository holds
  it: ``config.json`` (classic Llama-2 layout), ``generation_config.json``, safetensors or
  ``pytorch_model*.bin`` weights (sharded with the index file when ``shards > 1``), and the
  sentencepiece tokenizer files.
* :func:`make_tiny_meta` writes an original Meta checkpoint: ``params.json`` and
  ``consolidated.NN.pth`` model-parallel shards split the way Meta's code splits them, plus
  ``tokenizer.model``. With ``hf_twin`` it also writes the same weights as a HuggingFace
  folder, made with the q/k permutation of HuggingFace's own conversion script (written
  here independently of the converters in :mod:`openllm_hub_llama.checkpoint`).

Weights are drawn from a seeded generator with a large standard deviation so logits are far
from uniform and greedy decoding is informative. torch is imported inside the functions.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

DATA_DIR = Path(__file__).resolve().parent / "data"
TOKENIZER_FILE = "llama-spm-tokenizer.model"

DType = Literal["float32", "bfloat16", "float16"]


def fixture_tokenizer() -> Path:
    """The bundled original LLaMA sentencepiece tokenizer (32,000 pieces; see data/README.md)."""
    return DATA_DIR / TOKENIZER_FILE


@dataclass(frozen=True)
class TinySpec:
    """Dimensions of a tiny LLaMA."""

    vocab_size: int = 32000
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.head_dim % 2:
            raise ValueError("hidden_size must split into num_heads heads of even size")
        if self.num_heads % self.kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")

    def hf_config(self, dtype: str) -> dict[str, Any]:
        """config.json in the classic layout real Llama-2 repositories use (the converters' own
        :meth:`~openllm_hub_llama.checkpoint.LlamaHParams.hf_config`, without a pad token id)."""
        from openllm_hub_llama.checkpoint import LlamaHParams

        config = LlamaHParams(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                              intermediate_size=self.intermediate_size, num_layers=self.num_layers,
                              num_heads=self.num_heads, num_kv_heads=self.kv_heads, rms_norm_eps=self.rms_norm_eps,
                              rope_theta=self.rope_theta, max_position_embeddings=self.max_position_embeddings,
                              tie_word_embeddings=self.tie_word_embeddings, bos_token_id=1,
                              eos_token_id=2).hf_config(dtype)
        del config["pad_token_id"]
        return config


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, not {name!r}")
    return table[name]


def _random_weights(spec: TinySpec, seed: int, init_std: float) -> dict[str, torch.Tensor]:
    """Random float32 weights keyed by neutral names (``emb``, ``L.q`` ...), drawn in a fixed
    order from one seeded generator. Norm weights are ``1 + 0.2*N(0,1)`` so they matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, f, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim
    kv = spec.kv_heads * hd

    def normal(*shape: int, std: float = init_std) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm() -> torch.Tensor:
        return 1.0 + normal(h, std=0.2)

    w: dict[str, torch.Tensor] = {"emb": normal(spec.vocab_size, h)}
    for i in range(spec.num_layers):
        w[f"{i}.q"] = normal(h, h)
        w[f"{i}.k"] = normal(kv, h)
        w[f"{i}.v"] = normal(kv, h)
        w[f"{i}.o"] = normal(h, h)
        w[f"{i}.gate"] = normal(f, h)
        w[f"{i}.up"] = normal(f, h)
        w[f"{i}.down"] = normal(h, f)
        w[f"{i}.attn_norm"] = norm()
        w[f"{i}.ffn_norm"] = norm()
    w["norm"] = norm()
    if not spec.tie_word_embeddings:
        w["out"] = normal(spec.vocab_size, h)
    return w


_HF_LAYER = {
    "attn_norm": "input_layernorm", "down": "mlp.down_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
    "ffn_norm": "post_attention_layernorm", "k": "self_attn.k_proj", "o": "self_attn.o_proj",
    "q": "self_attn.q_proj", "v": "self_attn.v_proj",
}
_META_LAYER = {
    "attn_norm": "attention_norm", "down": "feed_forward.w2", "gate": "feed_forward.w1", "up": "feed_forward.w3",
    "ffn_norm": "ffn_norm", "k": "attention.wk", "o": "attention.wo", "q": "attention.wq", "v": "attention.wv",
}


def _hf_name(key: str) -> str:
    if key == "emb":
        return "model.embed_tokens.weight"
    if key == "norm":
        return "model.norm.weight"
    if key == "out":
        return "lm_head.weight"
    layer, part = key.split(".", 1)
    return f"model.layers.{layer}.{_HF_LAYER[part]}.weight"


def _meta_name(key: str) -> str:
    if key == "emb":
        return "tok_embeddings.weight"
    if key == "norm":
        return "norm.weight"
    if key == "out":
        return "output.weight"
    layer, part = key.split(".", 1)
    return f"layers.{layer}.{_META_LAYER[part]}.weight"


def _hf_order(names: list[str]) -> list[str]:
    """The order transformers writes a LLaMA state dict in (embeddings, layers by index, norm, head)."""
    def key(n: str) -> tuple[int, int, str]:
        if n.startswith("model.embed_tokens"):
            return (0, 0, n)
        if n.startswith("model.layers."):
            return (1, int(n.split(".")[2]), n)
        if n.startswith("model.norm"):
            return (2, 0, n)
        return (3, 0, n)

    return sorted(names, key=key)


def _split_contiguous(names: list[str], sizes: Mapping[str, int], n: int) -> list[list[str]]:
    """Cut ``names`` (in order) into ``n`` non-empty runs of roughly equal byte size."""
    if n < 1 or n > len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {n} shards")
    total = sum(sizes[x] for x in names) or 1
    groups: list[list[str]] = [[] for _ in range(n)]
    acc, prev = 0, 0
    for i, name in enumerate(names):
        target = min(n - 1, acc * n // total)
        g = 0 if i == 0 else max(prev, min(prev + 1, target))
        g = max(g, n - (len(names) - i))  # leave a name for every later shard
        groups[g].append(name)
        acc += sizes[name]
        prev = g
    return groups


def write_hf_weights(path: Path, state: Mapping[str, torch.Tensor], *, shards: int = 1,
                     fmt: Literal["safetensors", "bin"] = "safetensors") -> None:
    """Write ``state`` as HuggingFace weight files (with the index json when sharded), in
    transformers' order and cut into ``shards`` runs of about equal size."""
    from openllm_hub.engines import hf_folder

    names = _hf_order(list(state))
    sizes = {n: state[n].numel() * state[n].element_size() for n in names}
    groups = _split_contiguous(names, sizes, shards)
    hf_folder.write_hf_weights(path, [{n: state[n] for n in group} for group in groups], kind=fmt)


def write_hf_tokenizer(path: Path, tokenizer_model: Path) -> None:
    """tokenizer.model plus the tokenizer_config.json / special_tokens_map.json of Llama-2 repos."""
    shutil.copyfile(tokenizer_model, path / "tokenizer.model")
    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _write_hf_folder(path: Path, spec: TinySpec, state: Mapping[str, torch.Tensor], *, dtype: str, shards: int,
                     fmt: Literal["safetensors", "bin"], tokenizer_model: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(spec.hf_config(dtype), indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_hf_weights(path, state, shards=shards, fmt=fmt)
    write_hf_tokenizer(path, tokenizer_model)


def make_tiny_hf(path: str | Path, *, vocab_size: int = 32000, hidden_size: int = 64, intermediate_size: int = 176,
                 num_layers: int = 2, num_heads: int = 4, num_kv_heads: int | None = None,
                 tie_word_embeddings: bool = False, rope_theta: float = 10000.0, rms_norm_eps: float = 1e-6,
                 max_position_embeddings: int = 2048, dtype: DType = "float32", shards: int = 1,
                 fmt: Literal["safetensors", "bin"] = "safetensors", seed: int = 0, init_std: float = 0.4,
                 tokenizer_model: str | Path | None = None) -> Path:
    """Write a random LLaMA as a HuggingFace folder at ``path`` (created if missing); returns it.

    Weight names and layout are what ``LlamaForCausalLM.save_pretrained`` writes; transformers
    loads exactly these values (tied embeddings: no ``lm_head.weight``). ``vocab_size`` may
    exceed the tokenizer's 32,000 pieces (like models with added tokens) or be smaller only
    for tests of the mismatch error.
    """
    spec = TinySpec(vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
                    tie_word_embeddings, rope_theta, rms_norm_eps, max_position_embeddings)
    spec.validate()
    tdt = _torch_dtype(dtype)
    raw = _random_weights(spec, seed, init_std)
    state = {_hf_name(k): v.to(tdt) for k, v in raw.items()}
    out = Path(path)
    _write_hf_folder(out, spec, state, dtype=dtype, shards=shards, fmt=fmt,
                     tokenizer_model=Path(tokenizer_model) if tokenizer_model else fixture_tokenizer())
    return out


# ---- Meta layout -------------------------------------------------------------------------------
def meta_params(spec: TinySpec) -> dict[str, Any]:
    """params.json of a Meta checkpoint with these dimensions, keys in Meta's order (vocab_size -1,
    n_kv_heads only for GQA, rope_theta only when not the default)."""
    from openllm_hub_llama.checkpoint import meta_params_json

    return meta_params_json(spec.hidden_size, spec.intermediate_size, spec.num_heads, spec.kv_heads,
                            spec.num_layers, spec.rms_norm_eps, spec.rope_theta)


#: Meta model-parallel split dimension per tensor kind (None: replicated on every shard).
META_SPLIT_DIM: dict[str, int | None] = {
    "tok_embeddings": 1, "attention.wo": 1, "feed_forward.w2": 1,
    "attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "feed_forward.w1": 0, "feed_forward.w3": 0,
    "output": 0, "attention_norm": None, "ffn_norm": None, "norm": None,
}


def meta_split_dim(name: str) -> int | None:
    """Split dimension of a Meta tensor name (``layers.3.attention.wq.weight`` -> 0)."""
    core = name.removesuffix(".weight")
    if core.startswith("layers."):
        core = core.split(".", 2)[2]
    if core not in META_SPLIT_DIM:
        raise KeyError(name)
    return META_SPLIT_DIM[core]


def _hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HuggingFace's convert_llama_weights_to_hf permutation (Meta -> HF rotary layout):
    ``w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)``."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def make_tiny_meta(path: str | Path, *, n_shards: int = 2, vocab_size: int = 32000, hidden_size: int = 64,
                   intermediate_size: int = 176, num_layers: int = 2, num_heads: int = 4,
                   num_kv_heads: int | None = None, rope_theta: float = 10000.0, rms_norm_eps: float = 1e-6,
                   dtype: DType = "bfloat16", seed: int = 0, init_std: float = 0.4,
                   tokenizer_model: str | Path | None = None, hf_twin: str | Path | None = None) -> Path:
    """Write a random LLaMA as an original Meta checkpoint at ``path``; returns it.

    ``consolidated.NN.pth`` shards hold the tensors split for model parallelism exactly as
    Meta's code does (see :data:`META_SPLIT_DIM`); splits follow ``torch.tensor_split`` so an
    odd vocabulary splits unevenly. Meta checkpoints never tie the output to the embeddings.
    With ``hf_twin`` the same weights are also written as a HuggingFace safetensors folder
    (q/k rows permuted as HuggingFace's conversion script does), for comparisons.
    """
    import torch

    spec = TinySpec(vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
                    False, rope_theta, rms_norm_eps, 2048)
    spec.validate()
    tdt = _torch_dtype(dtype)
    raw = {k: v.to(tdt) for k, v in _random_weights(spec, seed, init_std).items()}
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(meta_params(spec)) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for key, tensor in raw.items():
        name = _meta_name(key)
        dim = meta_split_dim(name)
        if dim is None:
            for s in shards:
                s[name] = tensor.clone()
        else:
            for s, piece in zip(shards, torch.tensor_split(tensor, n_shards, dim=dim), strict=True):
                s[name] = piece.clone()
    for i, s in enumerate(shards):
        torch.save(s, out / f"consolidated.{i:02d}.pth")
    tok = Path(tokenizer_model) if tokenizer_model else fixture_tokenizer()
    shutil.copyfile(tok, out / "tokenizer.model")
    if hf_twin is not None:
        hf_state: dict[str, torch.Tensor] = {}
        for key, tensor in raw.items():
            if key.endswith(".q"):
                tensor = _hf_permute(tensor, spec.num_heads)
            elif key.endswith(".k"):
                tensor = _hf_permute(tensor, spec.kv_heads)
            hf_state[_hf_name(key)] = tensor.contiguous()
        _write_hf_folder(Path(hf_twin), spec, hf_state, dtype=dtype, shards=1, fmt="safetensors", tokenizer_model=tok)
    return out


# ---- openllm-hub tiny llama OUT ------------------------------------------------------------------
#: What ``openllm-hub tiny llama`` writes (the first is the default) and its ``-o`` options.
TINY_FORMATS = ("gguf", "hf", "meta")
TINY_OPTIONS = {"seed": "random seed of the weights (default 0)",
                "layers": "decoder layers (default 2)",
                "shards": "weight files: hf safetensors shards (default 1), meta consolidated.NN.pth (default 2)",
                "outtype": "gguf tensor type: f32 (default), f16, bf16 or q8_0"}
GGUF_TINY_OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def write_tiny(dst: Path, fmt: str, options: Mapping[str, Any]) -> Path:
    """``openllm-hub tiny llama DST --format FMT``: a random 64-wide LLaMA with the real 32,000-piece
    tokenizer as an HF folder, a Meta checkpoint, or a GGUF file (the HF folder through the
    plugin's own hf -> gguf converter)."""
    import tempfile

    from openllm_hub.plugin import choice_option, int_option

    seed, layers = int_option(options, "seed", 0), int_option(options, "layers", 2, minimum=1)
    if fmt == "meta":
        return make_tiny_meta(dst, n_shards=int_option(options, "shards", 2, minimum=1), num_layers=layers, seed=seed)
    if fmt == "hf":
        return make_tiny_hf(dst, num_layers=layers, seed=seed, shards=int_option(options, "shards", 1, minimum=1))
    from openllm_hub_llama.convert_gguf import write_gguf

    outtype = choice_option(options, "outtype", GGUF_TINY_OUTTYPES)
    with tempfile.TemporaryDirectory(prefix="openllm-hub-tiny-") as tmp:
        write_gguf(make_tiny_hf(Path(tmp) / "hf", num_layers=layers, seed=seed), dst, outtype, name="tiny-llama")
    return dst
