"""RWKV-4 between BlinkDL's ``.pth`` layout and transformers' ``RwkvForCausalLM`` folders.

Name mapping (transformers' ``modeling_rwkv`` / ``convert_rwkv_checkpoint_to_hf``):

=====================================  ==============================================
``.pth``                               transformers
=====================================  ==============================================
``emb.weight``                         ``rwkv.embeddings.weight``
``blocks.0.ln0.*``                     ``rwkv.blocks.0.pre_ln.*``
``blocks.N.ln1.*`` / ``ln2.*``         ``rwkv.blocks.N.ln1.*`` / ``ln2.*``
``blocks.N.att.time_mix_k/v/r``        ``rwkv.blocks.N.attention.time_mix_key/value/receptance``
``blocks.N.att.{time_decay,...}``      ``rwkv.blocks.N.attention.{time_decay,...}``
``blocks.N.ffn.time_mix_k/r``          ``rwkv.blocks.N.feed_forward.time_mix_key/receptance``
``blocks.N.ffn.{key,...}.weight``      ``rwkv.blocks.N.feed_forward.{key,...}.weight``
``ln_out.*``                           ``rwkv.ln_out.*``
``head.weight``                        ``head.weight``
=====================================  ==============================================

Shapes are the same on both sides. Only RWKV-4 exists in transformers; other versions are
refused by name. The tokenizer travels as ``tokenizer.json`` when the model uses a tokenizers
JSON; World-vocabulary models need none (chosen from the vocabulary size).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.plugin import (
    ConversionError,
    ConvertRequest,
    CorruptFileError,
    NotFoundError,
    load_torch_checkpoint,
    read_json,
    read_safetensors_header,
    write_json,
)
from openllm_hub_rwkv.checkpoint import TensorMeta, read_pth_index
from openllm_hub_rwkv.spec import Arch, analyse, context_from_name
from openllm_hub_rwkv.tokenizer import JsonTokenizer, choose_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TIME_MIX = {"k": "key", "v": "value", "r": "receptance"}
_TO_HF = [
    (re.compile(r"^emb\.weight$"), "rwkv.embeddings.weight"),
    (re.compile(r"^blocks\.0\.ln0\.(weight|bias)$"), r"rwkv.blocks.0.pre_ln.\1"),
    (re.compile(r"^blocks\.(\d+)\.(ln1|ln2)\.(weight|bias)$"), r"rwkv.blocks.\1.\2.\3"),
    (re.compile(r"^blocks\.(\d+)\.att\.time_mix_([kvr])$"), None),
    (re.compile(r"^blocks\.(\d+)\.att\.(time_decay|time_first)$"), r"rwkv.blocks.\1.attention.\2"),
    (re.compile(r"^blocks\.(\d+)\.att\.(key|value|receptance|output)\.weight$"), r"rwkv.blocks.\1.attention.\2.weight"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.time_mix_([kr])$"), None),
    (re.compile(r"^blocks\.(\d+)\.ffn\.(key|value|receptance)\.weight$"), r"rwkv.blocks.\1.feed_forward.\2.weight"),
    (re.compile(r"^ln_out\.(weight|bias)$"), r"rwkv.ln_out.\1"),
    (re.compile(r"^head\.weight$"), "head.weight"),
]


def pth_name_to_hf(name: str) -> str:
    """The transformers name of a ``.pth`` tensor name (RWKV-4)."""
    for pattern, repl in _TO_HF:
        m = pattern.match(name)
        if m is None:
            continue
        if repl is None:  # time_mix_k/v/r -> time_mix_key/value/receptance
            part = "attention" if ".att." in name else "feed_forward"
            return f"rwkv.blocks.{m.group(1)}.{part}.time_mix_{_TIME_MIX[m.group(2)]}"
        return m.expand(repl)
    raise ConversionError(f"tensor {name!r} has no RWKV-4 counterpart in transformers", where="convert",
                          fix="only RWKV-4 checkpoints convert to transformers' RwkvForCausalLM")


def hf_name_to_pth(name: str) -> str:
    """The ``.pth`` name of a transformers tensor name (inverse of :func:`pth_name_to_hf`)."""
    rules = [
        (r"^rwkv\.embeddings\.weight$", "emb.weight"),
        (r"^rwkv\.blocks\.0\.pre_ln\.(weight|bias)$", r"blocks.0.ln0.\1"),
        (r"^rwkv\.blocks\.(\d+)\.(ln1|ln2)\.(weight|bias)$", r"blocks.\1.\2.\3"),
        (r"^rwkv\.blocks\.(\d+)\.attention\.time_mix_key$", r"blocks.\1.att.time_mix_k"),
        (r"^rwkv\.blocks\.(\d+)\.attention\.time_mix_value$", r"blocks.\1.att.time_mix_v"),
        (r"^rwkv\.blocks\.(\d+)\.attention\.time_mix_receptance$", r"blocks.\1.att.time_mix_r"),
        (r"^rwkv\.blocks\.(\d+)\.attention\.(time_decay|time_first)$", r"blocks.\1.att.\2"),
        (r"^rwkv\.blocks\.(\d+)\.attention\.(key|value|receptance|output)\.weight$", r"blocks.\1.att.\2.weight"),
        (r"^rwkv\.blocks\.(\d+)\.feed_forward\.time_mix_key$", r"blocks.\1.ffn.time_mix_k"),
        (r"^rwkv\.blocks\.(\d+)\.feed_forward\.time_mix_receptance$", r"blocks.\1.ffn.time_mix_r"),
        (r"^rwkv\.blocks\.(\d+)\.feed_forward\.(key|value|receptance)\.weight$", r"blocks.\1.ffn.\2.weight"),
        (r"^rwkv\.ln_out\.(weight|bias)$", r"ln_out.\1"),
        (r"^head\.weight$", "head.weight"),
    ]
    for pattern, repl in rules:
        m = re.match(pattern, name)
        if m is not None:
            return m.expand(repl)
    raise ConversionError(f"tensor {name!r} is not part of transformers' RwkvForCausalLM", where="convert")


def _cast(sd: dict[str, torch.Tensor], outtype: str | None) -> dict[str, torch.Tensor]:
    import torch

    if outtype in (None, "auto"):
        return sd
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[outtype]
    return {k: v.to(dtype) for k, v in sd.items()}


def hf_config(arch: Arch, *, context_length: int, dtype: str) -> dict[str, Any]:
    """``config.json`` of an RWKV-4 model for transformers' ``RwkvConfig``."""
    return {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.n_embd,
        "num_hidden_layers": arch.n_layer,
        "attention_hidden_size": arch.n_att,
        "intermediate_size": arch.n_ffn,
        "context_length": context_length,
        "layer_norm_epsilon": 1e-5,
        "rescale_every": 6,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": dtype,
    }


def pth_state_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {pth_name_to_hf(k): v for k, v in sd.items()}


def convert_pth_to_hf(req: ConvertRequest) -> None:
    """Write an RWKV-4 ``.pth`` as a transformers folder at ``req.dst`` (an empty folder)."""
    from safetensors.torch import save_file

    index = read_pth_index(req.src)
    arch = analyse(index.tensors, where=req.src, extras=index.extras)
    if arch.version != "4":
        raise ConversionError(f"transformers has RWKV-4 only; this is RWKV-{arch.version}", where=req.src,
                              fix="run it with the rwkv engine (the default)")
    tok_option = str(req.options.get("tokenizer", "auto"))
    tokenizer = choose_tokenizer(tok_option, arch.vocab_size, req.src)
    sd = _cast(load_torch_checkpoint(req.src), req.outtype)
    hf = {k: v.contiguous() for k, v in pth_state_to_hf(sd).items()}
    dtype = str(next(iter(hf.values())).dtype).replace("torch.", "")
    ctx = int(req.options.get("context_length") or context_from_name(req.src) or 1024)
    save_file(hf, str(req.dst / "model.safetensors"), metadata={"format": "pt"})
    write_json(req.dst / "config.json", hf_config(arch, context_length=ctx, dtype=dtype))
    if isinstance(tokenizer, JsonTokenizer):
        shutil.copyfile(tokenizer.path, req.dst / "tokenizer.json")


def read_hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers folder (safetensors files, else pytorch_model*.bin)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    sd: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            read_safetensors_header(f)  # every header problem as one clear error naming the tensor
            try:
                sd.update(load_file(str(f)))
            except Exception as exc:  # noqa: BLE001 - safetensors raises several exception types
                raise CorruptFileError(f"unreadable safetensors file: {exc}", where=f) from None
        return sd
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise NotFoundError("no weights (model.safetensors or pytorch_model.bin) in the folder", where=folder)
    for f in bins:
        sd.update(load_torch_checkpoint(f))
    return sd


def pth_order(names: list[str], n_layer: int) -> list[str]:
    """The RWKV-LM trainer's key order for RWKV-4 names."""
    att = ["time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r", "key.weight", "value.weight",
           "receptance.weight", "output.weight"]
    ffn = ["time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight"]
    order = ["emb.weight"]
    for i in range(n_layer):
        b = f"blocks.{i}."
        order += [b + "ln1.weight", b + "ln1.bias", b + "ln2.weight", b + "ln2.bias"]
        if i == 0:
            order += [b + "ln0.weight", b + "ln0.bias"]
        order += [b + "att." + n for n in att] + [b + "ffn." + n for n in ffn]
    order += ["ln_out.weight", "ln_out.bias", "head.weight"]
    known = set(order)
    return [n for n in order if n in set(names)] + [n for n in names if n not in known]


def convert_hf_to_pth(req: ConvertRequest) -> None:
    """Write a transformers RWKV(-4) folder as a ChatRWKV ``.pth`` file at ``req.dst``."""
    import torch

    cfg = read_json(req.src / "config.json")
    if not isinstance(cfg, dict) or cfg.get("model_type") != "rwkv":
        got = cfg.get("model_type") if isinstance(cfg, dict) else cfg
        raise ConversionError(f"config.json has model_type {got!r}, not 'rwkv'", where=req.src / "config.json")
    n_layer = cfg.get("num_hidden_layers")
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer <= 0:
        raise CorruptFileError(f"config.json: 'num_hidden_layers' must be a positive integer, got {n_layer!r}",
                               where=req.src / "config.json", fix="restore config.json from the model's source")
    hf = read_hf_state(req.src)
    sd = {hf_name_to_pth(k): v for k, v in hf.items()}
    ordered = {k: sd[k].contiguous() for k in pth_order(list(sd), n_layer)}
    ordered = _cast(ordered, req.outtype)
    arch = analyse({k: TensorMeta(tuple(v.shape), str(v.dtype)) for k, v in ordered.items()}, where=req.src)
    if arch.n_layer != n_layer:
        raise ConversionError(f"config.json says {n_layer} layers, the weights have {arch.n_layer}", where=req.src)
    torch.save(ordered, req.dst)
