"""Malformed and malicious GGUF files: every one ends in one clear OpenLLMHubError.

The corpus is built from two real GGUF files made once per module by the plugins' own tiny
builders and converters (a LLaMA and a ChatGLM2): truncations at many offsets, each header
field corrupted, tensor-table edits, hyper-parameters out of range, missing, extra and
misshaped tensors, vocabulary problems, NaN/Inf weights, and things that are not files. Each
case goes through the Python API (load, and generation when a file loads; quantize) and,
for a representative subset, through the CLI (``info``, ``run``, ``quantize``, ``convert``):
one ``OpenLLMHubError`` and nothing else, never a traceback, a crash signal or an output
file, never silent acceptance.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.io import TMP_MARK
from openllm_hub.errors import CorruptFileError, OpenLLMHubError

# ---- the base files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LLaMA (f16, real 32,000-piece vocabulary) and a tiny ChatGLM2 (f32), each made
    once with the plugins' builders and ``openllm_hub.convert(..., to="gguf")``."""
    from openllm_hub_chatglm.tiny import build_checkpoint
    from openllm_hub_llama.tiny import make_tiny_hf

    root = tmp_path_factory.mktemp("gguf-bases")
    llama = openllm_hub.convert(make_tiny_hf(root / "llama-hf"), root / "llama.gguf", to="gguf",
                                outtype="f16").path
    glm = openllm_hub.convert(build_checkpoint(root / "glm-hf", "chatglm2"), root / "chatglm.gguf", to="gguf",
                              outtype="f32").path
    return {"llama": llama, "glm": glm}


# ---- an independent walk over the GGUF layout (positions of every field) ------------------------
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass
class KV:
    key_pos: int  # the key's length field
    type_pos: int
    value_pos: int
    vtype: int
    end: int


@dataclass
class TI:
    name_pos: int  # the name's length field
    ndims_pos: int
    dims_pos: int
    type_pos: int
    offset_pos: int
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass
class Layout:
    kv: dict[str, KV]
    tensors: dict[str, TI]
    tensor_table: int
    data_start: int


def walk(data: bytes) -> Layout:
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype in _FIXED:
            pos += _FIXED[vtype]
        elif vtype == 8:
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        else:
            etype, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype in _FIXED:
                pos += _FIXED[etype] * n
            else:
                for _ in range(n):
                    skip(etype)

    kvs: dict[str, KV] = {}
    for _ in range(n_kv):
        start = pos
        (n,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        (vtype,) = struct.unpack_from("<I", data, pos)
        type_pos = pos
        pos += 4
        skip(vtype)
        kvs[key] = KV(start, type_pos, type_pos + 4, vtype, pos)
    table = pos
    tis: dict[str, TI] = {}
    for _ in range(n_tensors):
        start = pos
        (n,) = struct.unpack_from("<Q", data, pos)
        name = data[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        (nd,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from(f"<{nd}Q", data, pos + 4)
        ttype, offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * nd)
        tis[name] = TI(start, pos, pos + 4, pos + 4 + 8 * nd, pos + 8 + 8 * nd, tuple(dims), ttype, offset)
        pos += 4 + 8 * nd + 12
    return Layout(kvs, tis, table, (pos + 31) // 32 * 32)


def put(data: bytes, pos: int, fmt: str, value: Any) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def nth_tensor(lay: Layout, i: int) -> TI:
    return list(lay.tensors.values())[i]


# ---- rebuilding a file with edited metadata or tensors (gguf's reader and writer) --------------
DROP = object()


def rebuild(base: Path, dst: Path, *, kv: dict[str, Any] | None = None, tensors: dict[str, Any] | None = None,
            extra: dict[str, np.ndarray] | None = None) -> None:
    """Copy ``base`` to ``dst`` with key/values replaced (``key: (value, GGUFValueType[, sub type])`` or
    ``DROP``), tensors replaced (``name: array`` or ``DROP``) and ``extra`` tensors appended."""
    import gguf

    kv, tensors, extra = kv or {}, tensors or {}, extra or {}
    r = gguf.GGUFReader(base)
    arch_field = kv.get("general.architecture")
    arch = arch_field[0] if isinstance(arch_field, tuple) else r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in kv:
            continue
        vtype = field.types[0]
        w.add_key_value(key, field.contents(), vtype, field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for key, spec in kv.items():
        if spec is DROP or key == "general.architecture":
            continue
        w.add_key_value(key, spec[0], spec[1], spec[2] if len(spec) > 2 else None)
    for t in r.tensors:
        new = tensors.get(t.name)
        if new is DROP:
            continue
        if new is None:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
        else:
            w.add_tensor(t.name, np.asarray(new))
    for name, arr in extra.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_array(base: Path, name: str) -> np.ndarray:
    import gguf

    t = next(t for t in gguf.GGUFReader(base).tensors if t.name == name)
    return np.array(t.data, dtype=np.float32)


# ---- the cases ---------------------------------------------------------------------------------
Maker = Callable[[Path, Path], None]  # (base file, destination) -> writes the bad file


@dataclass(frozen=True)
class Case:
    id: str
    base: str  # "glm" | "llama"
    make: Maker
    cli: tuple[str, ...] = ()  # CLI commands to run on it as well
    match: str | None = None  # a text the error must contain (API)


def raw(edit: Callable[[bytes, Layout], bytes]) -> Maker:
    def make(base: Path, dst: Path) -> None:
        data = base.read_bytes()
        dst.write_bytes(edit(data, walk(data)))

    return make


def cut(where: Callable[[bytes, Layout], int]) -> Maker:
    return raw(lambda d, lay: d[:where(d, lay)])


def edit_kv(**kv: Any) -> Maker:
    return lambda base, dst: rebuild(base, dst, kv={k.replace("__", "."): v for k, v in kv.items()})


def hp(name: str, value: Any, vtype: str = "UINT32") -> Maker:
    """Set ``{arch}.<name>`` (arch read from the base) to ``value`` of gguf type ``vtype``."""
    import gguf

    def make(base: Path, dst: Path) -> None:
        arch = gguf.GGUFReader(base).fields["general.architecture"].contents()
        spec = DROP if value is DROP else (value, getattr(gguf.GGUFValueType, vtype))
        rebuild(base, dst, kv={f"{arch}.{name}": spec})

    return make


def hp_raw(key: str, value: int) -> Maker:
    """Overwrite the uint32 value of ``key`` in place (no rewrite of the file)."""
    def edit(data: bytes, lay: Layout) -> bytes:
        assert lay.kv[key].vtype == 4
        return put(data, lay.kv[key].value_pos, "<I", value)

    return raw(edit)


def nonfinite_raw(name: str, value: float, index: int = 40) -> Maker:
    """Overwrite one value of an F32/F16 tensor in place."""
    def edit(data: bytes, lay: Layout) -> bytes:
        t = lay.tensors[name]
        fmt, width = {0: ("<f", 4), 1: ("<e", 2)}[t.ggml_type]
        return put(data, lay.data_start + t.offset + index * width, fmt, value)

    return raw(edit)


def drop(*names: str) -> Maker:
    return lambda base, dst: rebuild(base, dst, tensors=dict.fromkeys(names, DROP))


def nonfinite(name: str, value: float, index: int | slice = 40) -> Maker:
    def make(base: Path, dst: Path) -> None:
        a = tensor_array(base, name)
        a.reshape(-1)[index] = value
        rebuild(base, dst, tensors={name: a})

    return make


def tokens(transform: Callable[[list[str]], Any], vtype: str = "STRING") -> Maker:
    import gguf

    def make(base: Path, dst: Path) -> None:
        toks = list(gguf.GGUFReader(base).fields["tokenizer.ggml.tokens"].contents())
        rebuild(base, dst, kv={"tokenizer.ggml.tokens": (transform(toks), gguf.GGUFValueType.ARRAY,
                                                         getattr(gguf.GGUFValueType, vtype))})

    return make


def dup_key(data: bytes, lay: Layout) -> bytes:
    """Rename a key to another of the same length: a duplicate key."""
    by_len: dict[int, list[str]] = {}
    for k in lay.kv:
        by_len.setdefault(len(k), []).append(k)
    a, b = next(v for v in by_len.values() if len(v) > 1)[:2]
    pos = lay.kv[b].key_pos + 8
    return data[:pos] + a.encode() + data[pos + len(a):]


def rename_tensor(old: str, new: str) -> Maker:
    def edit(data: bytes, lay: Layout) -> bytes:
        assert len(old) == len(new)
        pos = lay.tensors[old].name_pos + 8
        return data[:pos] + new.encode() + data[pos + len(new):]

    return raw(edit)


def set_dim(name: str, dim: int, value: int) -> Maker:
    return raw(lambda d, lay: put(d, lay.tensors[name].dims_pos + 8 * dim, "<Q", value))


def _glm_cases() -> Iterator[Case]:
    g = "glm"
    # truncations at many offsets
    for i, where in enumerate([lambda d, lay: 0, lambda d, lay: 3, lambda d, lay: 7, lambda d, lay: 15,
                               lambda d, lay: 23, lambda d, lay: 24, lambda d, lay: 64, lambda d, lay: 700,
                               lambda d, lay: lay.kv["tokenizer.ggml.tokens"].value_pos + 500,
                               lambda d, lay: lay.tensor_table + 3, lambda d, lay: lay.data_start - 7,
                               lambda d, lay: lay.data_start, lambda d, lay: lay.data_start + 1000,
                               lambda d, lay: len(d) // 2, lambda d, lay: len(d) - 1]):
        yield Case(f"truncated-{i}", g, cut(where), cli=("info", "quantize") if i % 3 == 0 else ())
    # header fields
    yield Case("magic-GGUG", g, raw(lambda d, lay: b"GGUG" + d[4:]), cli=("info",))
    yield Case("magic-zero", g, raw(lambda d, lay: b"\0\0\0\0" + d[4:]))
    for v in (0, 1, 4, 0xFFFFFFFF):
        yield Case(f"version-{v}", g, raw(lambda d, lay, v=v: put(d, 4, "<I", v)), cli=("run",) if v == 1 else ())
    for label, fn in [("plus1", lambda n: n + 1), ("minus1", lambda n: n - 1), ("zero", lambda n: 0),
                      ("2^63", lambda n: 2**63), ("max", lambda n: 2**64 - 1)]:
        yield Case(f"n_tensors-{label}", g,
                   raw(lambda d, lay, fn=fn: put(d, 8, "<Q", fn(struct.unpack_from("<Q", d, 8)[0]))),
                   cli=("run", "quantize") if label == "minus1" else ())
        yield Case(f"n_kv-{label}", g,
                   raw(lambda d, lay, fn=fn: put(d, 16, "<Q", fn(struct.unpack_from("<Q", d, 16)[0]))),
                   cli=("info",) if label == "plus1" else ())
    # key/value section
    yield Case("key-length-huge", g, raw(lambda d, lay: put(d, 24, "<Q", 2**63)))
    yield Case("key-empty", g, raw(lambda d, lay: put(d, 24, "<Q", 0)))
    yield Case("key-not-utf8", g, raw(lambda d, lay: d[:32] + b"\xff" + d[33:]), cli=("info",))
    yield Case("key-duplicate", g, raw(dup_key), cli=("run",))
    yield Case("value-type-unknown", g, raw(lambda d, lay: put(d, lay.kv["general.name"].type_pos, "<I", 99)))
    yield Case("value-type-array", g, raw(lambda d, lay: put(d, lay.kv["general.name"].type_pos, "<I", 9)))
    yield Case("string-length-huge", g, raw(lambda d, lay: put(d, lay.kv["general.name"].value_pos, "<Q", 2**40)))
    yield Case("architecture-unknown", g, edit_kv(general__architecture=("mystery", None)), cli=("info",))
    tok = "tokenizer.ggml.tokens"
    yield Case("array-count-2^62", g, raw(lambda d, lay: put(d, lay.kv[tok].value_pos + 4, "<Q", 2**62)),
               cli=("info",))
    yield Case("array-float-count-2^62", g,
               raw(lambda d, lay: put(d, lay.kv["tokenizer.ggml.scores"].value_pos + 4, "<Q", 2**62)))
    yield Case("array-element-type-unknown", g, raw(lambda d, lay: put(d, lay.kv[tok].value_pos, "<I", 77)))
    yield Case("array-of-arrays", g, raw(lambda d, lay: put(d, lay.kv[tok].value_pos, "<I", 9)))
    yield Case("array-count-plus1", g,
               raw(lambda d, lay: put(d, lay.kv["tokenizer.ggml.scores"].value_pos + 4, "<Q",
                                      struct.unpack_from("<Q", d, lay.kv["tokenizer.ggml.scores"].value_pos + 4)[0]
                                      + 1)))
    import gguf

    U32 = gguf.GGUFValueType.UINT32
    for a in (0, 3, 2**31 + 1):
        yield Case(f"alignment-{a}", g, edit_kv(general__alignment=(a, U32)), cli=("run",) if a == 0 else ())
    yield Case("alignment-string", g, edit_kv(general__alignment=("32", gguf.GGUFValueType.STRING)))
    # tensor table
    yield Case("tensor-offset-plus32", g, raw(lambda d, lay: put(d, nth_tensor(lay, 3).offset_pos, "<Q",
                                                                  nth_tensor(lay, 3).offset + 32)), cli=("run",))
    yield Case("tensor-offset-10MB", g, raw(lambda d, lay: put(d, nth_tensor(lay, -1).offset_pos, "<Q",
                                                                nth_tensor(lay, -1).offset + 10_000_000)))
    yield Case("tensor-offset-2^63", g, raw(lambda d, lay: put(d, nth_tensor(lay, 2).offset_pos, "<Q", 2**63)))
    yield Case("tensor-offset-unaligned", g, raw(lambda d, lay: put(d, nth_tensor(lay, 5).offset_pos, "<Q",
                                                                     nth_tensor(lay, 5).offset + 1)))
    for nd in (0, 5, 2**31):
        yield Case(f"tensor-ndims-{nd}", g, raw(lambda d, lay, nd=nd: put(d, nth_tensor(lay, 0).ndims_pos, "<I", nd)))
    yield Case("tensor-dim-zero", g, set_dim("token_embd.weight", 1, 0))
    yield Case("tensor-dim-2^62", g, set_dim("token_embd.weight", 1, 2**62), cli=("info", "quantize"))
    yield Case("tensor-dims-overflow-product", g,
               raw(lambda d, lay: put(put(d, lay.tensors["output.weight"].dims_pos, "<Q", 2**40),
                                      lay.tensors["output.weight"].dims_pos + 8, "<Q", 2**40)))
    yield Case("tensor-dim-doubled", g, set_dim("blk.0.ffn_down.weight", 1, 128), cli=("run",))
    yield Case("tensor-type-unknown", g, raw(lambda d, lay: put(d, nth_tensor(lay, 1).type_pos, "<I", 99)))
    yield Case("tensor-type-removed-q4_2", g, raw(lambda d, lay: put(d, nth_tensor(lay, 1).type_pos, "<I", 4)))
    yield Case("tensor-type-f32-as-f16", g,
               raw(lambda d, lay: put(d, lay.tensors["output.weight"].type_pos, "<I", 1)), cli=("run",))
    yield Case("tensor-type-f32-as-i32", g,
               raw(lambda d, lay: put(d, lay.tensors["blk.0.ffn_up.weight"].type_pos, "<I", 26)), cli=("run",))
    yield Case("tensor-type-f32-as-f16-sized-i16", g,
               raw(lambda d, lay: put(put(d, lay.tensors["output.weight"].type_pos, "<I", 25),
                                      lay.tensors["output.weight"].dims_pos, "<Q", 128)))
    yield Case("tensor-type-q8_0-odd-rows", g,
               raw(lambda d, lay: put(d, lay.tensors["blk.0.attn_qkv.bias"].type_pos, "<I", 8)))
    yield Case("tensor-name-empty", g, raw(lambda d, lay: put(d, nth_tensor(lay, 0).name_pos, "<Q", 0)))
    yield Case("tensor-name-length-huge", g, raw(lambda d, lay: put(d, nth_tensor(lay, 4).name_pos, "<Q", 2**40)))
    yield Case("tensor-name-length-100", g, raw(lambda d, lay: put(d, nth_tensor(lay, 4).name_pos, "<Q", 100)))
    yield Case("tensor-name-duplicate", g, rename_tensor("blk.1.attn_norm.weight", "blk.0.attn_norm.weight"),
               cli=("run",))
    yield Case("tensor-block-beyond-count", g, rename_tensor("blk.1.attn_norm.weight", "blk.7.attn_norm.weight"))
    yield Case("trailing-garbage", g, raw(lambda d, lay: d + os.urandom(4096)), cli=("quantize",))
    # hyper-parameters out of range
    for name, value, vtype, cli in [
        ("block_count", 513, "UINT32", ("run", "quantize")), ("block_count", 100000, "UINT32", ()),
        ("block_count", 0, "UINT32", ()), ("block_count", 3, "UINT32", ("run",)), ("block_count", 1, "UINT32", ()),
        ("block_count", 2**40, "UINT64", ()), ("block_count", -2, "INT32", ()), ("block_count", "2", "STRING", ()),
        ("block_count", 2.0, "FLOAT32", ()), ("block_count", DROP, "", ()),
        ("attention.head_count", 0, "UINT32", ("run", "quantize")), ("attention.head_count", 3, "UINT32", ()),
        ("attention.head_count", 70000, "UINT32", ()), ("attention.head_count_kv", 3, "UINT32", ()),
        ("attention.head_count_kv", 0, "UINT32", ()), ("embedding_length", 128, "UINT32", ("run",)),
        ("embedding_length", 0, "UINT32", ()), ("embedding_length", 2**40, "UINT64", ()),
        ("embedding_length", DROP, "", ()), ("context_length", 0, "UINT32", ()),
        ("context_length", 2**40, "UINT64", ()), ("feed_forward_length", 0, "UINT32", ()),
        ("feed_forward_length", 99, "UINT32", ()), ("attention.layer_norm_rms_epsilon", math.nan, "FLOAT32", ()),
        ("attention.layer_norm_rms_epsilon", -1.0, "FLOAT32", ()),
        ("attention.layer_norm_rms_epsilon", 0.0, "FLOAT32", ()), ("rope.freq_base", -1.0, "FLOAT32", ()),
        ("rope.freq_base", math.inf, "FLOAT32", ("run",)), ("rope.dimension_count", 1000, "UINT32", ()),
    ]:
        label = "drop" if value is DROP else str(value).replace(".", "_")
        yield Case(f"hparam-{name}-{label}-{vtype or 'x'}", g, hp(name, value, vtype or "UINT32"), cli=cli)
    # vocabulary
    yield Case("vocab-missing", g, edit_kv(tokenizer__ggml__tokens=DROP), cli=("run", "quantize"))
    yield Case("vocab-model-missing", g, edit_kv(tokenizer__ggml__model=DROP))
    yield Case("vocab-one-token-short", g, tokens(lambda t: t[:-1]), cli=("run",))
    yield Case("vocab-count-zero", g, raw(lambda d, lay: put(d, lay.kv[tok].value_pos + 4, "<Q", 0)))
    yield Case("vocab-one-token", g, tokens(lambda t: t[:1]))
    yield Case("vocab-of-integers", g, tokens(lambda t: list(range(len(t))), "INT32"))
    # two ids with one spelling: llama.cpp's vocabulary loader aborts the process on it
    yield Case("vocab-spelling-twice", g, tokens(lambda t: [*t[:-1], t[-2]]), cli=("run",), match="both spelled")
    yield Case("vocab-scores-short", g,
               edit_kv(tokenizer__ggml__scores=([0.0] * 10, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)))
    yield Case("vocab-token-types-out-of-range", g,
               lambda base, dst: rebuild(base, dst, kv={"tokenizer.ggml.token_type": (
                   [99] * len(gguf.GGUFReader(base).fields["tokenizer.ggml.tokens"].contents()),
                   gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)}))
    # missing, extra and misshaped tensors
    for name in ("token_embd.weight", "output_norm.weight", "output.weight", "blk.1.attn_qkv.weight",
                 "blk.0.ffn_down.weight"):
        yield Case(f"missing-{name}", g, drop(name), cli=("run", "quantize") if name == "output.weight" else ())
    yield Case("extra-tensor", g, lambda base, dst: rebuild(
        base, dst, extra={"mystery.weight": np.ones(64, np.float32)}), cli=("run",))
    yield Case("extra-block-tensor", g,
               lambda base, dst: rebuild(base, dst, extra={"blk.5.attn_norm.weight": np.ones(64, np.float32)}))
    yield Case("misshaped-qkv-transposed", g, lambda base, dst: rebuild(
        base, dst, tensors={"blk.0.attn_qkv.weight": tensor_array(base, "blk.0.attn_qkv.weight").T.copy()}))
    yield Case("misshaped-output-rows", g, lambda base, dst: rebuild(
        base, dst, tensors={"output.weight": tensor_array(base, "output.weight")[:-64].copy()}), cli=("run",))
    yield Case("norm-as-f16", g, lambda base, dst: rebuild(
        base, dst, tensors={"output_norm.weight": tensor_array(base, "output_norm.weight").astype(np.float16)}))
    # non-finite weights: refused at the first logits (generation) and by the quantizer
    yield Case("nan-output", g, nonfinite("output.weight", math.nan), cli=("run", "quantize"), match="output.weight")
    yield Case("inf-ffn-up", g, nonfinite("blk.0.ffn_up.weight", math.inf, slice(None)), match="blk.0.ffn_up.weight")
    yield Case("nan-norm", g, nonfinite("output_norm.weight", math.nan, 3), match="output_norm.weight")
    yield Case("nan-embedding", g, nonfinite("token_embd.weight", math.nan, slice(None)), match="token_embd.weight")


def _llama_cases() -> Iterator[Case]:
    import gguf

    ll = "llama"
    yield Case("llama-truncated-tail", ll, cut(lambda d, lay: len(d) - 64), cli=("run",))
    yield Case("llama-n_tensors-minus1", ll,
               raw(lambda d, lay: put(d, 8, "<Q", struct.unpack_from("<Q", d, 8)[0] - 1)), cli=("run",))
    yield Case("llama-block_count-513", ll, hp_raw("llama.block_count", 513), cli=("run",))
    yield Case("llama-head_count-0", ll, hp_raw("llama.attention.head_count", 0))
    yield Case("llama-vocab_size-mismatch", ll, hp_raw("llama.vocab_size", 31999))
    yield Case("llama-vocab-spelling-twice", ll, tokens(lambda t: [t[0], t[0], *t[2:]]), cli=("run", "quantize"),
               match="both spelled")
    yield Case("llama-missing-attn_k", ll, drop("blk.1.attn_k.weight"), cli=("quantize",))
    yield Case("llama-vocab-missing", ll, edit_kv(tokenizer__ggml__tokens=DROP, tokenizer__ggml__scores=DROP,
                                                  tokenizer__ggml__token_type=DROP), cli=("quantize",))
    yield Case("llama-embedding-vs-vocab", ll, lambda base, dst: rebuild(
        base, dst, kv={**{k: (v, gguf.GGUFValueType.ARRAY, st) for k, v, st in _short_vocab(base, 8)},
                       "llama.vocab_size": DROP}), cli=("run",))
    yield Case("llama-nan-f16", ll, nonfinite_raw("output.weight", math.nan), cli=("run",), match="output.weight")
    yield Case("llama-f16-as-i16", ll, raw(lambda d, lay: put(d, lay.tensors["blk.0.attn_q.weight"].type_pos,
                                                              "<I", 25)), cli=("run",))
    yield Case("llama-head_count-per-layer-short", ll, lambda base, dst: rebuild(
        base, dst, kv={"llama.attention.head_count": ([4], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32)}))
    yield Case("llama-inf-f16-norm", ll, nonfinite_raw("blk.1.ffn_norm.weight", math.inf, 7),
               match="blk.1.ffn_norm.weight")


def _short_vocab(base: Path, n: int) -> list[tuple[str, list[Any], Any]]:
    """Token list, scores and types all ``n`` entries short: consistent, but not with token_embd."""
    import gguf

    f = gguf.GGUFReader(base).fields
    T = gguf.GGUFValueType
    return [(key, list(f[key].contents())[:-n], sub) for key, sub in (
        ("tokenizer.ggml.tokens", T.STRING), ("tokenizer.ggml.scores", T.FLOAT32),
        ("tokenizer.ggml.token_type", T.INT32))]


CASES = [*_glm_cases(), *_llama_cases()]


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 60 and len(CLI_RUNS) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def corpus(bases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case's file, written once."""
    root = tmp_path_factory.mktemp("gguf-corpus")
    out = {}
    for case in CASES:
        path = root / f"{case.id}.gguf"
        case.make(bases[case.base], path)
        out[case.id] = path
    return out


# ---- the API -----------------------------------------------------------------------------------
def _one_error(fn: Callable[[], Any]) -> OpenLLMHubError:
    with pytest.raises(OpenLLMHubError) as e:
        fn()
    err = e.value
    assert err.what and "\n" not in err.render(), err.render()
    return err


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_api(case: Case, corpus: dict[str, Path], tmp_path: Path) -> None:
    path = corpus[case.id]

    def load_and_run() -> None:
        with openllm_hub.load(path, device="cpu", threads=1) as m:
            m.generate("Once upon a time", max_new_tokens=4, temperature=0.0)

    err = _one_error(load_and_run)
    if case.match:
        assert isinstance(err, CorruptFileError) and case.match in err.render(), err.render()
    out = tmp_path / "q.gguf"
    _one_error(lambda: openllm_hub.quantize(path, out, "q8_0", threads=1))
    assert list(tmp_path.iterdir()) == [], "quantize left an output or a temporary behind"


def test_the_bases_work(bases: dict[str, Path], tmp_path: Path) -> None:
    """The unedited files load, generate and quantize (so every refusal above is the edit's)."""
    for name, path in bases.items():
        with openllm_hub.load(path, device="cpu", threads=1) as m:
            assert m.generate("Once upon a time", max_new_tokens=4, temperature=0.0).usage.completion_tokens > 0
        q = openllm_hub.quantize(path, tmp_path / f"{name}-q8_0.gguf", "q8_0", threads=1)
        with openllm_hub.load(q, device="cpu", threads=1) as m:
            assert m.info.quantization == "q8_0"


def test_not_a_file(tmp_path: Path, bases: dict[str, Path]) -> None:
    """A folder, a dangling link, an empty file, random bytes after the magic and a FIFO named .gguf
    (symlink loops in general are the CLI-input corpus's)."""
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling.gguf"
    dangling.symlink_to(tmp_path / "nowhere.gguf")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(5000))
    for p in (folder, dangling, empty, noise, fifo):
        _one_error(lambda p=p: openllm_hub.load(p, device="cpu", threads=1))
        _one_error(lambda p=p: openllm_hub.quantize(p, tmp_path / "out.gguf", "q4_0"))
        _cli_one_error("info", str(p))
    assert not (tmp_path / "out.gguf").exists()


def test_runtime_guards(bases: dict[str, Path]) -> None:
    """Threads beyond any use, a context whose KV cache cannot exist, a context past llama.cpp's
    32-bit count: refused with the reason, before llama.cpp allocates anything."""
    glm = bases["glm"]
    err = _one_error(lambda: openllm_hub.load(glm, device="cpu", threads=100000))
    assert "threads=100000" in err.render()
    err = _one_error(lambda: openllm_hub.load(glm, device="cpu", threads=1, n_ctx=10**9))
    assert "KV cache" in err.render() and "GiB" in err.render() and err.where == "n_ctx"
    err = _one_error(lambda: openllm_hub.load(glm, device="cpu", threads=1, n_ctx=2**40))
    assert "n_ctx" in err.render()
    _cli_one_error("run", str(glm), "-p", "hi", "-n", "2", "-t", "100000")
    _cli_one_error("run", str(glm), "-p", "hi", "-n", "2", "-c", str(10**9))


# ---- the CLI -----------------------------------------------------------------------------------
def _cli_one_error(*argv: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "OPENLLM_HUB_NO_PROGRESS": "1"}
    env.pop("OPENLLM_HUB_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "openllm_hub.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("openllm-hub: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


CLI_RUNS = [(c, cmd) for c in CASES for cmd in c.cli]


@pytest.mark.parametrize(("case", "command"), CLI_RUNS, ids=[f"{c.id}-{cmd}" for c, cmd in CLI_RUNS])
def test_cli(case: Case, command: str, corpus: dict[str, Path], tmp_path: Path) -> None:
    path = str(corpus[case.id])
    if command == "info":
        _cli_one_error("info", path)
    elif command == "run":
        _cli_one_error("run", path, "-p", "Once upon a time", "-n", "4", "--temp", "0", "-t", "1")
    else:
        _cli_one_error("quantize", path, str(tmp_path / "q.gguf"), "q8_0", "-t", "1")
        assert not [p for p in tmp_path.iterdir() if p.name == "q.gguf" or p.name.startswith(TMP_MARK)]


def test_cli_convert_from_gguf(corpus: dict[str, Path], tmp_path: Path) -> None:
    """GGUF files are no converter's source: a damaged one and a good one are refused alike."""
    for case_id in ("truncated-14", "hparam-block_count-513-UINT32", "nan-output"):
        _cli_one_error("convert", str(corpus[case_id]), str(tmp_path / "out"), "--to", "hf")
    assert list(tmp_path.iterdir()) == []
