"""Corpus of malformed and malicious torch-side inputs: safetensors files, HF folders, configs,
Meta checkpoints, LoRA adapters, ChatGLM / RWKV / GLM-130B checkpoints and non-finite weights.

Every case breaks one thing in a copy of a tiny, valid checkpoint (each base is built once per
module with the plugins' own tiny builders) and runs the loader, converter or merger that
reads it through the Python API: it must end in exactly one :class:`OpenLLMHubError` (never a
traceback of another type, never silent acceptance). A representative subset also runs
through the CLI: exit status 1, one stderr line starting ``openllm-hub: error:``, nothing else
on stderr (no traceback, no library warnings or load reports).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import openllm_hub
from openllm_hub.core.io import load_torch_checkpoint, read_json, read_safetensors_header
from openllm_hub.errors import OpenLLMHubError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the bases, built once ---------------------------------------------------------------------
@dataclass(frozen=True)
class Bases:
    hf: Path  # LLaMA HF folder, one safetensors file
    hf_bin: Path  # the same as pytorch_model.bin
    hf_sharded: Path  # two safetensors shards with their index
    meta: Path  # Meta params.json + consolidated.NN.pth
    adapter: Path  # a PEFT LoRA adapter for ``hf``
    glm1: Path  # ChatGLM-6B layout
    glm2: Path  # ChatGLM2 layout
    rwkv: Path  # RWKV-5.2 .pth
    rwkv4: Path  # RWKV-4 .pth
    rwkv_hf: Path  # the RWKV-4 as a transformers folder
    glm130b_cfg: Any  # GLM-130B tiny config, tokenizer in glm130b_tok
    glm130b_tok: Path


def _write_adapter(folder: Path, *, r: int = 4, alpha: float = 8.0) -> Path:
    """A PEFT LoRA adapter (the key layout and config PEFT's save_pretrained writes) on q/v."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for i in range(2):
        for mod in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            state[f"{key}.lora_A.weight"] = torch.randn(r, 64, generator=gen) * 0.01
            state[f"{key}.lora_B.weight"] = torch.randn(64, r, generator=gen) * 0.01
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": None, "inference_mode": True}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Bases:
    from openllm_hub_chatglm.tiny import build_checkpoint as build_glm
    from openllm_hub_glm130b.tiny import tiny_config, train_tokenizer
    from openllm_hub_llama.tiny import make_tiny_hf, make_tiny_meta
    from openllm_hub_rwkv.tiny import build_checkpoint as build_rwkv

    root = tmp_path_factory.mktemp("bases")
    hf = make_tiny_hf(root / "hf")
    hf_bin = make_tiny_hf(root / "hf_bin", fmt="bin")
    hf_sharded = make_tiny_hf(root / "hf_sharded", shards=2)
    meta = make_tiny_meta(root / "meta", n_shards=1, dtype="float32")
    adapter = _write_adapter(root / "adapter")
    glm1 = build_glm(root / "glm1", "chatglm", layers=1)
    glm2 = build_glm(root / "glm2", "chatglm2", layers=1)
    rwkv = build_rwkv(root / "tiny-rwkv.pth", "5.2", n_layer=2, n_embd=64)
    rwkv4 = build_rwkv(root / "tiny-rwkv4.pth", "4", n_layer=2, n_embd=64)
    rwkv_hf = openllm_hub.convert(rwkv4, root / "rwkv-hf", to="hf").path
    tok = train_tokenizer(root / "glm130b-tokenizer.model")
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
    return Bases(hf, hf_bin, hf_sharded, meta, adapter, glm1, glm2, rwkv, rwkv4, rwkv_hf,
                 tiny_config(tp=1, pieces=pieces, layers=2), tok)


# ---- tools for breaking files ----------------------------------------------------------------------
def copy(src: Path, dst_root: Path) -> Path:
    dst = dst_root / src.name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def st_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path: Path, header: Any, data: bytes, *, raw_header: bytes | None = None) -> None:
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def st_edit(path: Path, edit: Callable[[dict[str, Any]], object], data_edit: Callable[[bytes], bytes] | None = None,
            ) -> None:
    header, data = st_parts(path)
    edit(header)
    st_write(path, header, data_edit(data) if data_edit else data)


def _tensors(header: dict[str, Any]) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def cfg_edit(path: Path, **changes: Any) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg), encoding="utf-8")  # NaN/Infinity written as JS literals, as json does


_DROP = object()
DEEP = "[" * 200_000 + "]" * 200_000


def state_edit(path: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Rewrite a safetensors or .bin state dict with ``edit`` applied."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        sd = load_file(str(path))
        edit(sd)
        save_file(sd, str(path), metadata={"format": "pt"})
    else:
        sd = torch.load(path, weights_only=True)
        edit(sd)
        torch.save(sd, path)


def poison(name: str, value: float = float("nan")) -> Callable[[dict[str, torch.Tensor]], object]:
    def edit(sd: dict[str, torch.Tensor]) -> None:
        t = sd[name].clone()
        t.view(-1)[3] = value
        sd[name] = t
    return edit


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/openllm-hub-corpus-pwned",))


# ---- the cases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``make(bases, tmp)`` breaks a copy and returns (action, args); ``cli`` marks the CLI subset."""

    id: str
    make: Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]
    cli: bool = False


CASES: list[Case] = []


def case(id: str, *, cli: bool = False) -> Callable[[Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]], None]:
    def register(fn: Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]) -> None:
        CASES.append(Case(id, fn, cli))
    return register


def hf_with(st: Callable[[Path], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf, tmp)
        st(folder / "model.safetensors")
        return "load", (folder,)
    return make


# safetensors headers: the shared reader, through the LLaMA transformers loader --------------------------
def _first_two(header: dict[str, Any]) -> tuple[str, str]:
    names = _tensors(header)
    return names[0], names[1]


def _overlap(h: dict[str, Any]) -> None:
    a, b = _first_two(h)
    end = h[a]["data_offsets"][1]
    h[b]["data_offsets"] = [end - 4, h[b]["data_offsets"][1] - 4]


def _reverse(h: dict[str, Any]) -> None:
    a, _ = _first_two(h)
    h[a]["data_offsets"] = h[a]["data_offsets"][::-1]


def _gap(h: dict[str, Any]) -> None:
    for name in _tensors(h)[1:]:
        h[name]["data_offsets"] = [o + 8 for o in h[name]["data_offsets"]]


SAFETENSORS_BREAKS: dict[str, Callable[[Path], object]] = {
    "st-header-is-list": lambda p: st_write(p, [1, 2], st_parts(p)[1]),
    "st-header-is-string": lambda p: st_write(p, "hello", st_parts(p)[1]),
    "st-header-bad-json": lambda p: st_write(p, None, st_parts(p)[1], raw_header=b"{\"a\": [1, 2"),
    "st-header-not-utf8": lambda p: st_write(p, None, st_parts(p)[1], raw_header=b"{\"\xff\xfe\": 1}"),
    "st-header-deep-json": lambda p: st_write(p, None, st_parts(p)[1], raw_header=DEEP.encode()),
    "st-header-len-past-end": lambda p: p.write_bytes(struct.pack("<Q", 10**9) + p.read_bytes()[8:]),
    "st-header-len-2^63": lambda p: p.write_bytes(struct.pack("<Q", 2**63) + p.read_bytes()[8:]),
    "st-file-4-bytes": lambda p: p.write_bytes(b"\x01\x02\x03\x04"),
    "st-file-empty": lambda p: p.write_bytes(b""),
    "st-offsets-negative": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(data_offsets=[-8, 8])),
    "st-offsets-float": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(
        data_offsets=[0.5, h[_first_two(h)[0]]["data_offsets"][1]])),
    "st-offsets-strings": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(data_offsets=["0", "8"])),
    "st-offsets-three": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(data_offsets=[0, 4, 8])),
    "st-offsets-reversed": lambda p: st_edit(p, _reverse),
    "st-offsets-overlap": lambda p: st_edit(p, _overlap),
    "st-offsets-gap": lambda p: st_edit(p, _gap, lambda d: d + b"\0" * 8),
    "st-trailing-bytes": lambda p: st_edit(p, lambda h: None, lambda d: d + b"\0" * 64),
    "st-truncated": lambda p: p.write_bytes(p.read_bytes()[:-1000]),
    "st-shape-vs-bytes": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(
        shape=[*h[_first_two(h)[0]]["shape"][:-1], h[_first_two(h)[0]]["shape"][-1] + 1])),
    "st-shape-2^62-elements": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(shape=[2**31, 2**31])),
    "st-shape-negative": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(shape=[-1, 64])),
    "st-shape-string": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(shape="64x64")),
    "st-dtype-unknown": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].update(dtype="F128")),
    "st-dtype-missing": lambda p: st_edit(p, lambda h: h[_first_two(h)[0]].pop("dtype")),
    "st-entry-not-object": lambda p: st_edit(p, lambda h: h.update({_first_two(h)[0]: [0, 1]})),
    "st-metadata-not-strings": lambda p: st_edit(p, lambda h: h.update({"__metadata__": {"format": 1}})),
    "st-metadata-list": lambda p: st_edit(p, lambda h: h.update({"__metadata__": ["pt"]})),
}
for _id, _break in SAFETENSORS_BREAKS.items():
    case(_id, cli=_id == "st-offsets-overlap")(hf_with(_break))


@case("st-is-a-directory")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    return "header", (tmp,)


@case("st-symlink-loop")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    (tmp / "a.safetensors").symlink_to(tmp / "b.safetensors")
    (tmp / "b.safetensors").symlink_to(tmp / "a.safetensors")
    return "header", (tmp / "a.safetensors",)


@case("st-name-too-long")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    return "header", (tmp / ("x" * 300 + ".safetensors"),)


@case("json-deep")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    (tmp / "deep.json").write_text(DEEP, encoding="utf-8")
    return "json", (tmp / "deep.json",)


@case("json-symlink-loop")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    (tmp / "a.json").symlink_to(tmp / "b.json")
    (tmp / "b.json").symlink_to(tmp / "a.json")
    return "json", (tmp / "a.json",)


@case("json-directory")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    return "json", (tmp,)


# torch checkpoints --------------------------------------------------------------------------------------
def bin_folder(write: Callable[[Path], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf_bin, tmp)
        write(folder / "pytorch_model.bin")
        return "load", (folder,)
    return make


case("bin-random-bytes", cli=True)(bin_folder(lambda p: p.write_bytes(os.urandom(4096))))
case("bin-empty")(bin_folder(lambda p: p.write_bytes(b"")))
case("bin-truncated-zip")(bin_folder(lambda p: p.write_bytes(p.read_bytes()[:-2048])))
case("bin-malicious-pickle", cli=True)(bin_folder(lambda p: torch.save({"x": _Evil()}, p)))
case("bin-random-pickle")(bin_folder(lambda p: p.write_bytes(b"\x80\x02" + os.urandom(512))))
case("bin-list-not-dict")(bin_folder(lambda p: torch.save([torch.zeros(2)], p)))
case("bin-nan-weight")(bin_folder(lambda p: state_edit(p, poison("model.layers.1.mlp.up_proj.weight"))))


@case("torch-directory")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    return "torch", (tmp,)


# HF folders: tensors against config.json, the shard index ------------------------------------------------
def hf_config(**changes: Any) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf, tmp)
        cfg_edit(folder / "config.json", **changes)
        return "load", (folder,)
    return make


case("cfg-hidden-size-string", cli=True)(hf_config(hidden_size="64"))
case("cfg-zero-heads")(hf_config(num_attention_heads=0))
case("cfg-hidden-not-divisible-by-heads")(hf_config(num_attention_heads=3))
case("cfg-unknown-torch-dtype")(hf_config(torch_dtype="float128"))
case("cfg-rope-theta-negative")(hf_config(rope_theta=-1))
case("cfg-rope-theta-zero")(hf_config(rope_theta=0))
case("cfg-vocab-size-fraction")(hf_config(vocab_size=32000.5))
case("cfg-kv-heads-not-dividing")(hf_config(num_key_value_heads=3))
case("cfg-rms-eps-negative")(hf_config(rms_norm_eps=-1e-6))
case("cfg-rms-eps-nan")(hf_config(rms_norm_eps=float("nan")))
case("cfg-max-positions-negative")(hf_config(max_position_embeddings=-5))
case("cfg-vocab-size-missing")(hf_config(vocab_size=_DROP))
case("cfg-layers-bool")(hf_config(num_hidden_layers=True))
case("cfg-num-layers-more-than-stored", cli=True)(hf_config(num_hidden_layers=3))
case("cfg-num-layers-fewer-than-stored")(hf_config(num_hidden_layers=1))
case("cfg-intermediate-size-wrong")(hf_config(intermediate_size=128))
case("cfg-tied-but-head-stored")(hf_config(tie_word_embeddings="yes"))


@case("cfg-not-an-object")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    folder = copy(b.hf, tmp)
    (folder / "config.json").write_text("[1, 2, 3]", encoding="utf-8")
    return "load", (folder,)


@case("cfg-deep-json")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    folder = copy(b.hf, tmp)
    (folder / "config.json").write_text('{"model_type": "llama", "x": ' + DEEP + "}", encoding="utf-8")
    return "load", (folder,)


@case("cfg-not-utf8")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    folder = copy(b.hf, tmp)
    (folder / "config.json").write_bytes(b'{"model_type": "llama", "x": "\xff\xfe"}')
    return "load", (folder,)


def hf_state(edit: Callable[[dict[str, torch.Tensor]], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf, tmp)
        state_edit(folder / "model.safetensors", edit)
        return "load", (folder,)
    return make


case("hf-missing-tensor", cli=True)(hf_state(lambda sd: sd.pop("model.layers.1.mlp.down_proj.weight")))
case("hf-missing-norm")(hf_state(lambda sd: sd.pop("model.norm.weight")))
case("hf-unexpected-tensor")(hf_state(lambda sd: sd.update({"model.layers.0.extra.weight": torch.zeros(4)})))
case("hf-extra-layer")(hf_state(lambda sd: sd.update(
    {k.replace("layers.1.", "layers.2."): v.clone() for k, v in list(sd.items()) if "layers.1." in k})))
case("hf-wrong-shape")(hf_state(lambda sd: sd.update(
    {"model.layers.0.self_attn.q_proj.weight": torch.zeros(32, 64)})))
case("hf-nan-weight", cli=True)(hf_state(poison("model.layers.0.self_attn.k_proj.weight")))
case("hf-inf-weight")(hf_state(poison("model.embed_tokens.weight", float("inf"))))
case("hf-nan-norm")(hf_state(poison("model.norm.weight")))


def sharded(edit: Callable[[Path], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf_sharded, tmp)
        edit(folder)
        return "load", (folder,)
    return make


def _index_edit(folder: Path, fn: Callable[[dict[str, Any]], object]) -> None:
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text(encoding="utf-8"))
    fn(data)
    index.write_text(json.dumps(data), encoding="utf-8")


def _wrong_shard(data: dict[str, Any]) -> None:
    wm = data["weight_map"]
    name = next(k for k, v in wm.items() if v.endswith("00001-of-00002.safetensors"))
    wm[name] = "model-00002-of-00002.safetensors"


case("index-wrong-shard", cli=True)(sharded(lambda f: _index_edit(f, _wrong_shard)))
case("index-outside-folder")(sharded(lambda f: _index_edit(f, lambda d: d["weight_map"].update(
    {next(iter(d["weight_map"])): "../model-00001-of-00002.safetensors"}))))
case("index-absolute-path")(sharded(lambda f: _index_edit(f, lambda d: d["weight_map"].update(
    {next(iter(d["weight_map"])): "/etc/passwd"}))))
case("index-weight-map-list")(sharded(lambda f: _index_edit(f, lambda d: d.update(weight_map=[1, 2]))))
case("index-shard-not-string")(sharded(lambda f: _index_edit(f, lambda d: d["weight_map"].update(
    {next(iter(d["weight_map"])): 7}))))
case("index-missing-shard-file")(sharded(lambda f: (f / "model-00002-of-00002.safetensors").unlink()))
case("index-deep-json")(sharded(lambda f: (f / "model.safetensors.index.json").write_text(DEEP)))
case("index-drops-a-tensor")(sharded(lambda f: _index_edit(f, lambda d: d["weight_map"].pop(
    "model.layers.0.mlp.up_proj.weight"))))


# HF -> GGUF / Meta converters: their config parsing ---------------------------------------------------------
def hf_convert(to: str, **changes: Any) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf, tmp)
        cfg_edit(folder / "config.json", **changes)
        return "convert", (folder, tmp / ("out.gguf" if to == "gguf" else "out"), to)
    return make


case("convert-gguf-vocab-fraction", cli=True)(hf_convert("gguf", vocab_size=32000.5))
case("convert-gguf-hidden-string")(hf_convert("gguf", hidden_size="64"))
case("convert-gguf-intermediate-missing")(hf_convert("gguf", intermediate_size=_DROP))
case("convert-gguf-rope-theta-negative")(hf_convert("gguf", rope_theta=-1.0))
case("convert-meta-zero-heads")(hf_convert("meta", num_attention_heads=0))
case("convert-meta-rope-scaling-bad-factor")(hf_convert("meta", rope_scaling={"type": "linear", "factor": -2}))


@case("convert-gguf-overlapping-offsets")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    folder = copy(b.hf, tmp)
    st_edit(folder / "model.safetensors", _overlap)
    return "convert", (folder, tmp / "out.gguf", "gguf")


def hf_convert_state(to: str, edit: Callable[[dict[str, torch.Tensor]], object],
                     ) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.hf, tmp)
        state_edit(folder / "model.safetensors", edit)
        return "convert", (folder, tmp / ("out.gguf" if to == "gguf" else "out"), to)
    return make


case("convert-gguf-nan-weight")(hf_convert_state("gguf", poison("model.layers.1.self_attn.o_proj.weight")))
case("convert-meta-inf-weight")(hf_convert_state("meta", poison("lm_head.weight", float("-inf"))))
case("convert-gguf-missing-tensor")(hf_convert_state("gguf", lambda sd: sd.pop("model.layers.0.mlp.up_proj.weight")))


# Meta checkpoints -----------------------------------------------------------------------------------------
def meta(edit: Callable[[Path], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.meta, tmp)
        edit(folder)
        return "convert", (folder, tmp / "out", "hf")
    return make


case("meta-heads-string", cli=True)(meta(lambda f: cfg_edit(f / "params.json", n_heads="4")))
case("meta-dim-zero")(meta(lambda f: cfg_edit(f / "params.json", dim=0)))
case("meta-norm-eps-negative")(meta(lambda f: cfg_edit(f / "params.json", norm_eps=-1.0)))
case("meta-rope-theta-nan")(meta(lambda f: cfg_edit(f / "params.json", rope_theta=float("nan"))))
case("meta-kv-heads-not-dividing")(meta(lambda f: cfg_edit(f / "params.json", n_kv_heads=3)))
case("meta-vocab-size-fraction")(meta(lambda f: cfg_edit(f / "params.json", vocab_size=32000.5)))
case("meta-params-deep")(meta(lambda f: (f / "params.json").write_text(DEEP)))
case("meta-params-list")(meta(lambda f: (f / "params.json").write_text("[]")))
case("meta-shard-random-bytes")(meta(lambda f: (f / "consolidated.00.pth").write_bytes(os.urandom(2048))))
case("meta-shard-empty")(meta(lambda f: (f / "consolidated.00.pth").write_bytes(b"")))
case("meta-nan-weight")(meta(lambda f: state_edit(f / "consolidated.00.pth", poison("layers.1.attention.wv.weight"))))


# LoRA adapters (merge-lora) -------------------------------------------------------------------------------
def lora(edit: Callable[[Path], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        adapter = copy(b.adapter, tmp)
        edit(adapter)
        return "merge", (b.hf, adapter, tmp / "merged")
    return make


A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
case("lora-alpha-nan")(lora(lambda a: cfg_edit(a / "adapter_config.json", lora_alpha=float("nan"))))
case("lora-alpha-inf")(lora(lambda a: cfg_edit(a / "adapter_config.json", lora_alpha=float("inf"))))
case("lora-alpha-zero")(lora(lambda a: cfg_edit(a / "adapter_config.json", lora_alpha=0)))
case("lora-alpha-negative")(lora(lambda a: cfg_edit(a / "adapter_config.json", lora_alpha=-16)))
case("lora-alpha-string")(lora(lambda a: cfg_edit(a / "adapter_config.json", lora_alpha="16")))
case("lora-r-zero")(lora(lambda a: cfg_edit(a / "adapter_config.json", r=0)))
case("lora-r-negative")(lora(lambda a: cfg_edit(a / "adapter_config.json", r=-4)))
case("lora-r-string")(lora(lambda a: cfg_edit(a / "adapter_config.json", r="4")))
case("lora-nan-in-A")(lora(lambda a: state_edit(a / "adapter_model.safetensors", poison(A_KEY))))
case("lora-nan-in-B", cli=True)(lora(lambda a: state_edit(a / "adapter_model.safetensors", poison(B_KEY))))
case("lora-inf-in-B")(lora(lambda a: state_edit(a / "adapter_model.safetensors", poison(B_KEY, float("-inf")))))
case("lora-overlapping-offsets")(lora(lambda a: st_edit(a / "adapter_model.safetensors", _overlap)))
case("lora-truncated")(lora(lambda a: (a / "adapter_model.safetensors").write_bytes(
    (a / "adapter_model.safetensors").read_bytes()[:-100])))
case("lora-config-deep")(lora(lambda a: (a / "adapter_config.json").write_text(DEEP)))
case("lora-config-list")(lora(lambda a: (a / "adapter_config.json").write_text("[]")))


def _adapter_bin(a: Path, content: bytes) -> None:
    (a / "adapter_model.safetensors").unlink()
    (a / "adapter_model.bin").write_bytes(content)


case("lora-bin-random-bytes")(lora(lambda a: _adapter_bin(a, os.urandom(1024))))
case("lora-bin-empty")(lora(lambda a: _adapter_bin(a, b"")))


# ChatGLM ----------------------------------------------------------------------------------------------------
def glm(which: str, edit: Callable[[Path], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.glm1 if which == "v1" else b.glm2, tmp)
        edit(folder)
        return "load", (folder,)
    return make


case("glm-num-image-tokens-negative", cli=True)(glm("v1", lambda f: cfg_edit(f / "tokenizer_config.json",
                                                                          num_image_tokens=-5)))
case("glm-num-image-tokens-string")(glm("v1", lambda f: cfg_edit(f / "tokenizer_config.json",
                                                               num_image_tokens="0")))
case("glm-v1-inner-hidden-string")(glm("v1", lambda f: cfg_edit(f / "config.json", inner_hidden_size="256")))
case("glm-v1-mask-token-negative")(glm("v1", lambda f: cfg_edit(f / "config.json", mask_token_id=-1)))
case("glm-v1-max-sequence-length-negative")(glm("v1", lambda f: cfg_edit(f / "config.json",
                                                                      max_sequence_length=-1)))
case("glm-hidden-size-string")(glm("v2", lambda f: cfg_edit(f / "config.json", hidden_size="64")))
case("glm-layernorm-eps-string")(glm("v2", lambda f: cfg_edit(f / "config.json", layernorm_epsilon="abc")))
case("glm-seq-length-negative")(glm("v2", lambda f: cfg_edit(f / "config.json", seq_length=-1)))
case("glm-kv-channels-zero")(glm("v2", lambda f: cfg_edit(f / "config.json", kv_channels=0)))
case("glm-rope-ratio-negative")(glm("v2", lambda f: cfg_edit(f / "config.json", rope_ratio=-1)))
case("glm-eos-string")(glm("v2", lambda f: cfg_edit(f / "config.json", eos_token_id="2")))
case("glm-config-list")(glm("v2", lambda f: (f / "config.json").write_text('["chatglm"]')))
case("glm-nan-weight", cli=True)(glm("v2", lambda f: state_edit(
    f / "model.safetensors", poison("transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"))))
case("glm-inf-embedding")(glm("v2", lambda f: state_edit(
    f / "model.safetensors", poison("transformer.embedding.word_embeddings.weight", float("inf")))))
case("glm-overlapping-offsets")(glm("v2", lambda f: st_edit(f / "model.safetensors", _overlap)))
case("glm-missing-tensor")(glm("v2", lambda f: state_edit(
    f / "model.safetensors", lambda sd: sd.pop("transformer.encoder.final_layernorm.weight"))))


# RWKV -------------------------------------------------------------------------------------------------------
def rwkv(edit: Callable[[dict[str, torch.Tensor]], object], *, v4: bool = False,
         ) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        path = copy(b.rwkv4 if v4 else b.rwkv, tmp)
        state_edit(path, edit)
        return "load", (path,)
    return make


def _reshape(name: str, shape: tuple[int, ...]) -> Callable[[dict[str, torch.Tensor]], object]:
    return lambda sd: sd.update({name: torch.zeros(shape)})


case("rwkv-block1-receptance-wrong-shape", cli=True)(rwkv(_reshape("blocks.1.att.receptance.weight", (64, 32))))
case("rwkv-block0-time-mix-wrong-shape")(rwkv(_reshape("blocks.0.att.time_mix_k", (1, 1, 32))))
case("rwkv-block1-ln2-wrong-shape")(rwkv(_reshape("blocks.1.ln2.bias", (63,))))
case("rwkv-block1-ffn-receptance-wrong-shape")(rwkv(_reshape("blocks.1.ffn.receptance.weight", (64, 65))))
case("rwkv-block1-gate-wrong-shape")(rwkv(_reshape("blocks.1.att.gate.weight", (32, 64))))
case("rwkv-block1-decay-differs")(rwkv(_reshape("blocks.1.att.time_decay", (3, 5))))
case("rwkv-ln-out-wrong-shape")(rwkv(_reshape("ln_out.weight", (65,))))
case("rwkv-nan-weight")(rwkv(poison("blocks.1.ffn.value.weight")))
case("rwkv-inf-head")(rwkv(poison("head.weight", float("inf"))))
case("rwkv4-nan-weight")(rwkv(poison("blocks.0.att.key.weight"), v4=True))
case("rwkv4-block1-output-wrong-shape")(rwkv(_reshape("blocks.1.att.output.weight", (64, 60)), v4=True))


@case("rwkv-random-bytes")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    (tmp / "x.pth").write_bytes(b"PK" + os.urandom(4000))
    return "load", (tmp / "x.pth",)


def rwkv_hf(edit: Callable[[Path], object], action: str = "load",
            ) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        folder = copy(b.rwkv_hf, tmp)
        edit(folder)
        return (action, (folder,)) if action == "load" else ("convert", (folder, tmp / "out.pth", "rwkv-pth"))
    return make


case("rwkv-hf-missing-tensor", cli=True)(rwkv_hf(lambda f: state_edit(
    f / "model.safetensors", lambda sd: sd.pop("rwkv.blocks.1.attention.key.weight"))))
case("rwkv-hf-nan-weight")(rwkv_hf(lambda f: state_edit(
    f / "model.safetensors", poison("rwkv.blocks.0.feed_forward.value.weight"))))
case("rwkv-hf-vocab-size-string")(rwkv_hf(lambda f: cfg_edit(f / "config.json", vocab_size="65536")))
case("rwkv-hf-overlapping-offsets")(rwkv_hf(lambda f: st_edit(f / "model.safetensors", _overlap)))
case("rwkv-convert-layers-string")(rwkv_hf(lambda f: cfg_edit(f / "config.json", num_hidden_layers="2"),
                                           action="convert"))
case("rwkv-convert-truncated")(rwkv_hf(lambda f: (f / "model.safetensors").write_bytes(
    (f / "model.safetensors").read_bytes()[:-64]), action="convert"))


@case("rwkv-state-file-overlapping-offsets")
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    from safetensors.torch import save_file

    state = tmp / "state.safetensors"
    save_file({"s0.ids": torch.zeros(4, dtype=torch.int64), "s0.logits": torch.zeros(8)}, str(state),
              metadata={"format": "openllm-hub-rwkv-state"})
    st_edit(state, _overlap)
    return "rwkv_state", (b.rwkv, state)


# GLM-130B ---------------------------------------------------------------------------------------------------
@case("glm130b-nan-weight", cli=True)
def _(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
    from openllm_hub_glm130b.checkpoint import write_sat
    from openllm_hub_glm130b.tiny import random_state, split_state

    dst = tmp / "glm130b"
    dst.mkdir()
    shutil.copyfile(b.glm130b_tok, dst / "tokenizer.model")
    full = random_state(b.glm130b_cfg, 0)
    name = next(k for k in full if k.endswith("dense_h_to_4h.weight"))
    full[name] = full[name].clone()
    full[name].view(-1)[5] = float("nan")
    write_sat(dst, b.glm130b_cfg, split_state(full, 1), iteration="1000")
    return "load", (dst,)


def glm130b(edit: Callable[[dict[str, Any]], object]) -> Callable[[Bases, Path], tuple[str, tuple[Any, ...]]]:
    def make(b: Bases, tmp: Path) -> tuple[str, tuple[Any, ...]]:
        from openllm_hub_glm130b.checkpoint import write_sat
        from openllm_hub_glm130b.tiny import random_state, split_state

        dst = tmp / "glm130b"
        dst.mkdir()
        shutil.copyfile(b.glm130b_tok, dst / "tokenizer.model")
        write_sat(dst, b.glm130b_cfg, split_state(random_state(b.glm130b_cfg, 0), 1), iteration="1000")
        cfg_path = dst / "glm130b_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        edit(cfg)
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        return "load", (dst,)
    return make


case("glm130b-hidden-size-string")(glm130b(lambda c: c.update(hidden_size="64")))
case("glm130b-layernorm-eps-string")(glm130b(lambda c: c.update(layernorm_epsilon="abc")))
case("glm130b-layernorm-eps-nan")(glm130b(lambda c: c.update(layernorm_epsilon=float("nan"))))
case("glm130b-commands-list")(glm130b(lambda c: c["tokenizer"].update(commands=[1, 2])))
case("glm130b-id-offset-string")(glm130b(lambda c: c["tokenizer"].update(id_offset="20000")))
case("glm130b-heads-zero")(glm130b(lambda c: c.update(num_attention_heads=0)))


# ---- running them -----------------------------------------------------------------------------------------
def run_api(action: str, args: tuple[Any, ...]) -> None:
    if action == "load":
        with openllm_hub.load(args[0], device="cpu") as model:
            model.generate("Hello", max_new_tokens=2)
    elif action == "convert":
        openllm_hub.convert(args[0], args[1], to=args[2], outtype="f32" if args[2] == "gguf" else None)
    elif action == "merge":
        openllm_hub.merge_lora(args[0], [args[1]], args[2])
    elif action == "rwkv_state":
        with openllm_hub.load(args[0], device="cpu") as model:
            model.load_state(args[1])  # type: ignore[attr-defined]
    elif action == "header":
        read_safetensors_header(args[0])
    elif action == "json":
        read_json(args[0])
    elif action == "torch":
        load_torch_checkpoint(args[0])
    else:  # pragma: no cover
        raise AssertionError(action)


def cli_args(action: str, args: tuple[Any, ...]) -> list[str]:
    if action == "load":
        return ["info", str(args[0]), "--device", "cpu"]
    if action == "convert":
        return ["convert", str(args[0]), str(args[1]), "--to", args[2],
                *(["--outtype", "f32"] if args[2] == "gguf" else [])]
    if action == "merge":
        return ["merge-lora", str(args[0]), str(args[1]), "-o", str(args[2])]
    raise AssertionError(action)  # pragma: no cover


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 70
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(c.cli for c in CASES) >= 15


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_api_one_clean_error(c: Case, bases: Bases, tmp_path: Path) -> None:
    action, args = c.make(bases, tmp_path)
    pwned = Path("/tmp/openllm-hub-corpus-pwned")
    pwned.unlink(missing_ok=True)
    try:
        run_api(action, args)
    except OpenLLMHubError as exc:
        text = str(exc)
        assert "\n" not in text.strip(), text
        assert exc.where, f"the error names no file: {text}"
    except BaseException as exc:  # noqa: BLE001 - the point of the corpus: anything else is a bug
        pytest.fail(f"{c.id}: {type(exc).__name__} instead of an OpenLLMHubError: {exc}")
    else:
        pytest.fail(f"{c.id}: accepted silently")
    assert not pwned.exists(), "code from a checkpoint ran"
    if action in ("convert", "merge"):
        out = args[2] if action == "merge" else args[1]
        assert not Path(out).exists(), "a failed writer left its output"
        assert not [p for p in Path(out).parent.iterdir() if ".openllm-hub-tmp-" in p.name]


CLI_CASES = [c for c in CASES if c.cli]


@pytest.mark.parametrize("c", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_one_line(c: Case, bases: Bases, tmp_path: Path) -> None:
    action, args = c.make(bases, tmp_path)
    if action not in ("load", "convert", "merge"):  # pragma: no cover
        pytest.fail("CLI cases run info, convert or merge-lora")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENLLM_HUB_NO_PROGRESS": "1"}
    env.pop("OPENLLM_HUB_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "openllm_hub.cli", *cli_args(action, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("openllm-hub: error: "), proc.stderr
