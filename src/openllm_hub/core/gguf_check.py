"""Validating GGUF files at the boundary, once, before llama.cpp (or any writer) sees them.

llama.cpp trusts much of a GGUF file: a hyper-parameter out of range aborts the process inside
its loader (``GGML_ASSERT``), a tensor table one entry short shifts every tensor by a few bytes
and runs (garbage out, exit 0), a vocabulary whose score array is shorter than its token list
is read past its end. So every GGUF is checked here first, in pure Python (no gguf package, no
engine), reading only the header and the tensor table:

* :func:`read_gguf_layout` -- the structure: magic, version, counts against the file size,
  every key/value (types, lengths, UTF-8, duplicates), the alignment, every tensor's name,
  dimensions, GGML type, offset (tensors lie in table order, each at the next aligned offset,
  as llama.cpp requires) and size against the file: data past the end (truncated) or
  unexplained bytes after the last tensor (a tensor table that lost entries) are refused;
* :func:`check_hparams` -- the ``{arch}.*`` hyper-parameters that are present, against the
  bounds llama.cpp can run (at most 512 blocks, heads that divide the width, finite positive
  epsilons and rope bases, ...);
* :func:`check_model` -- what loading needs on top: a vocabulary (token list, scores and
  types of equal length) and, for the architectures in :data:`ARCHITECTURES` (``llama``,
  ``chatglm``, ``qwen2``, ``qwen3``, ``gemma2``, ``gemma3``, ``phi3``), every tensor llama.cpp will ask
  for with the shape it will ask for (``token_embd`` against the vocabulary, ``blk.N.*`` for
  every ``N < block_count``, ...); other architectures get the structure and hyper-parameter
  checks, and llama.cpp checks their tensors.

:func:`check_gguf` runs them (cached per file state, so detection, the memory planner and the
engine share one reading). :func:`find_nonfinite` names the first float tensor holding NaN or
Inf (numpy memory map; only called once a model produced non-finite logits).

Every problem is a :class:`~openllm_hub.errors.CorruptFileError` naming the file, the key or
tensor, and the fix.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from openllm_hub.errors import CorruptFileError, InvalidParameterError, NotFoundError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
#: llama.cpp's ``GGML_MAX_NAME`` (64, with the terminating NUL) and ``GGML_MAX_DIMS``.
MAX_TENSOR_NAME = 63
MAX_DIMS = 4
#: llama.cpp's ``LLAMA_MAX_LAYERS``: more blocks abort its loader with a GGML_ASSERT.
MAX_LAYERS = 512
#: The fewest bytes a key/value and a tensor-info entry take (for counts against the file size).
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8

# GGUF metadata value types (gguf spec): struct format of the fixed-size ones
_FIXED_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_INT_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_FLOAT_TYPES = {6, 12}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

#: GGML tensor types llama.cpp 0.3.x reads: id -> (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
_F32, _F16, _BF16 = 0, 1, 30
#: Types llama.cpp stores but cannot multiply with as model weights (intermediate and integer types):
#: a weight of one of these aborts inside ggml at the first forward pass.
NOT_WEIGHT_TYPES = {9, 15, 24, 25, 26, 27, 28}

FIX_REDOWNLOAD = "download or convert the file again (openllm-hub convert SRC OUT.gguf --to gguf)"


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF tensor table. ``ne`` is in GGML order (``ne[0]`` is the row length,
    i.e. the reverse of numpy's shape); ``offset`` is relative to the data section."""

    name: str
    ne: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


@dataclass(frozen=True)
class GGUFLayout:
    """What :func:`read_gguf_layout` read: metadata (arrays longer than ``max_array`` elided to
    ``{"__array_len__": n}``, plus ``__version__`` and ``__n_tensors__``, as
    :func:`openllm_hub.core.detect.read_gguf_metadata` gives it), each array's element type
    and length (and the range of integer arrays), the tensor table, and where the data
    section starts."""

    path: Path
    version: int
    metadata: dict[str, Any]
    arrays: dict[str, tuple[int, int]]
    ranges: dict[str, tuple[int, int]]  # (min, max) of each integer array
    types: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int
    file_size: int
    by_name: dict[str, TensorInfo] = field(default_factory=dict, compare=False, repr=False)
    #: the first spelling ``tokenizer.ggml.tokens`` holds twice: (first id, second id, spelling)
    repeated_token: tuple[int, int, str] | None = None

    def __post_init__(self) -> None:
        self.by_name.update((t.name, t) for t in self.tensors)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def is_adapter(self) -> bool:
        return self.metadata.get("general.type") == "adapter"


# ---- reading -----------------------------------------------------------------------------------
class _Reader:
    """Reads the header with every length checked against the bytes left in the file."""

    def __init__(self, fh: BinaryIO, size: int, path: Path) -> None:
        self.fh, self.size, self.path, self.pos = fh, size, path, 0

    def fail(self, what: str, fix: str = FIX_REDOWNLOAD) -> CorruptFileError:
        return CorruptFileError(what, where=self.path, fix=fix)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"GGUF header is truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"the file has {self.size - self.pos} left")
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank while being read
            raise self.fail(f"GGUF header is truncated at offset {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"GGUF header is truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"the file has {self.size - self.pos} left")
        self.fh.seek(n, os.SEEK_CUR)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8 (bytes {raw[:24]!r})") from None


#: The vocabulary's spellings, which must be unique: llama.cpp maps each to its id and aborts
#: the whole process (GGML_ASSERT in llama_vocab's loader) when two ids share one.
_TOKENS_KEY = "tokenizer.ggml.tokens"


def _read_value(r: _Reader, vtype: int, key: str, max_array: int, arrays: dict[str, tuple[int, int]],
                ranges: dict[str, tuple[int, int]], repeats: dict[str, tuple[int, int, str]]) -> Any:
    if vtype in _FIXED_FMT:
        return r.unpack(_FIXED_FMT[vtype], f"the value of {key!r}")
    if vtype == _STRING:
        return r.string(f"the value of {key!r}")
    if vtype == _ARRAY:
        etype = r.unpack("<I", f"the element type of {key!r}")
        count = r.unpack("<Q", f"the length of {key!r}")
        if etype == _ARRAY:
            raise r.fail(f"GGUF key {key!r} is an array of arrays, which llama.cpp does not read")
        if etype not in _FIXED_FMT and etype != _STRING:
            raise r.fail(f"GGUF key {key!r} has arrays of unknown type {etype}")
        arrays[key] = (etype, count)
        if etype in _FIXED_FMT:
            width = struct.calcsize(_FIXED_FMT[etype])
            if count > (r.size - r.pos) // width:
                raise r.fail(f"GGUF header is truncated: array {key!r} claims {count} elements of {width} bytes, "
                             f"the file has {r.size - r.pos} bytes left")
            if etype in _INT_TYPES and count:  # integer arrays are cheap to read: keep their range
                import numpy as np

                raw = r.take(count * width, f"array {key!r}")
                values = np.frombuffer(raw, dtype=np.dtype(_FIXED_FMT[etype]))
                ranges[key] = (int(values.min()), int(values.max()))
                return [int(v) for v in values] if count <= max_array else {"__array_len__": count}
            if count > max_array:
                r.skip(count * width, f"array {key!r}")
                return {"__array_len__": count}
            return list(struct.unpack(f"<{count}{_FIXED_FMT[etype][1]}", r.take(count * width, f"array {key!r}")))
        if count > (r.size - r.pos) // 8:
            raise r.fail(f"GGUF header is truncated: array {key!r} claims {count} strings, "
                         f"the file has {r.size - r.pos} bytes left")
        if key == _TOKENS_KEY:
            return _read_tokens(r, key, count, max_array, repeats)
        items = [r.string(f"element {i} of {key!r}") for i in range(count)] if count <= max_array else None
        if items is None:
            for i in range(count):
                n = r.unpack("<Q", f"the length of element {i} of {key!r}")
                r.skip(n, f"element {i} of {key!r}")
            return {"__array_len__": count}
        return items
    raise r.fail(f"GGUF key {key!r} has unknown value type {vtype}")


def _read_tokens(r: _Reader, key: str, count: int, max_array: int,
                 repeats: dict[str, tuple[int, int, str]]) -> Any:
    """The vocabulary's spellings, each read to find the first one held twice (``repeats``);
    kept as a list only when short. An empty spelling is not compared: llama.cpp renames it
    ``[EMPTY_<id>]``."""
    seen: dict[bytes, int] = {}
    items: list[str] = []
    for i in range(count):
        n = r.unpack("<Q", f"the length of element {i} of {key!r}")
        raw = r.take(n, f"element {i} of {key!r}")
        if count <= max_array:
            try:
                items.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise r.fail(f"element {i} of {key!r} is not valid UTF-8 (bytes {raw[:24]!r})") from None
        if raw and key not in repeats:
            first = seen.setdefault(raw, i)
            if first != i:
                repeats[key] = (first, i, raw.decode("utf-8", "replace"))
    return items if count <= max_array else {"__array_len__": count}


def read_gguf_layout(path: str | Path, *, max_array: int = 64) -> GGUFLayout:
    """Read and check a GGUF file's structure (see the module docstring); raise
    :class:`CorruptFileError` naming the key or tensor at the first problem."""
    p = Path(path)
    try:
        fh = p.open("rb")
    except FileNotFoundError:
        raise NotFoundError("GGUF file not found", where=p) from None
    except IsADirectoryError:
        raise InvalidParameterError("a folder, not a GGUF file", where=p, fix="pass the .gguf file itself") from None
    except OSError as exc:
        raise InvalidParameterError(f"cannot read the GGUF file: {exc.strerror or exc}", where=p,
                                    fix="check that the file exists and is readable") from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            return _read_layout(_Reader(fh, size, p), max_array)
        except OSError as exc:
            raise InvalidParameterError(f"cannot read the GGUF file: {exc.strerror or exc}", where=p,
                                        fix="check that the file is a regular readable file") from None


def _read_layout(r: _Reader, max_array: int) -> GGUFLayout:
    magic = r.take(4, "the magic")
    if magic != GGUF_MAGIC:
        raise r.fail(f"not a GGUF file (wrong magic {magic!r})", fix="pass a .gguf file")
    version = r.unpack("<I", "the version")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version} (llama.cpp reads versions 2 and 3)",
                     fix="reconvert the file with a current converter")
    n_tensors = r.unpack("<Q", "the tensor count")
    n_kv = r.unpack("<Q", "the key/value count")
    left = r.size - r.pos
    if n_kv > left // _MIN_KV_BYTES:
        raise r.fail(f"GGUF header claims {n_kv} key/values, more than a {r.size}-byte file can hold")
    if n_tensors > left // _MIN_TENSOR_INFO_BYTES:
        raise r.fail(f"GGUF header claims {n_tensors} tensors, more than a {r.size}-byte file can hold")
    meta: dict[str, Any] = {"__version__": version, "__n_tensors__": n_tensors}
    arrays: dict[str, tuple[int, int]] = {}
    ranges: dict[str, tuple[int, int]] = {}
    types: dict[str, int] = {}
    repeats: dict[str, tuple[int, int, str]] = {}
    for i in range(n_kv):
        key = r.string(f"key {i}")
        if not key:
            raise r.fail(f"GGUF key {i} has an empty name")
        if key in types:
            raise r.fail(f"GGUF key {key!r} appears twice")
        vtype = r.unpack("<I", f"the type of {key!r}")
        types[key] = vtype
        meta[key] = _read_value(r, vtype, key, max_array, arrays, ranges, repeats)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in meta:
        alignment = meta["general.alignment"]
        if types["general.alignment"] != 4 or alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"general.alignment is {alignment!r} ({_TYPE_NAMES.get(types['general.alignment'])}); "
                         "llama.cpp needs a power of two (uint32)")
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    expected = 0
    for i in range(n_tensors):
        name = r.string(f"the name of tensor {i}")
        if not name or len(name.encode()) > MAX_TENSOR_NAME:
            raise r.fail(f"tensor {i} has a name of {len(name.encode())} bytes {name[:40]!r} "
                         f"(llama.cpp allows 1 to {MAX_TENSOR_NAME})")
        if name in seen:
            raise r.fail(f"tensor {name!r} appears twice in the tensor table")
        seen.add(name)
        n_dims = r.unpack("<I", f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (llama.cpp allows 1 to {MAX_DIMS})")
        ne = tuple(r.unpack("<Q", f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        ttype = r.unpack("<I", f"the type of tensor {name!r}")
        offset = r.unpack("<Q", f"the offset of tensor {name!r}")
        if ttype not in GGML_TYPES:
            raise r.fail(f"tensor {name!r} has unknown GGML type {ttype}")
        tname, block, block_bytes = GGML_TYPES[ttype]
        if any(d < 1 for d in ne):
            raise r.fail(f"tensor {name!r} has an empty dimension: {list(ne)}")
        n_el = 1
        for d in ne:
            n_el *= d
            if n_el > r.size * max(block, 1):  # cannot fit in the file whatever the type: also no overflow later
                raise r.fail(f"tensor {name!r} of shape {list(ne)} ({_big(ne)} elements) cannot fit in a "
                             f"{r.size}-byte file")
        if ne[0] % block:
            raise r.fail(f"tensor {name!r} has rows of {ne[0]} values, not a multiple of {tname}'s block of {block}")
        nbytes = n_el // block * block_bytes
        if offset != expected:
            raise r.fail(f"tensor {name!r} has offset {offset}, expected {expected} (the tensor table is corrupt)")
        tensors.append(TensorInfo(name, ne, ttype, offset, nbytes))
        expected = offset + _pad(nbytes, alignment)
    data_start = _pad(r.pos, alignment)
    layout = GGUFLayout(r.path, version, meta, arrays, ranges, types, tuple(tensors), alignment, data_start, r.size,
                        repeated_token=repeats.get(_TOKENS_KEY))
    _check_data_extent(r, layout)
    return layout


def _big(ne: tuple[int, ...]) -> str:
    n = math.prod(ne)
    return f"2^{n.bit_length() - 1}" if n > 2**40 else str(n)


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _check_data_extent(r: _Reader, layout: GGUFLayout) -> None:
    """The tensors' data against the file's size: all of it inside the file, and nothing but
    alignment padding after the last tensor."""
    if not layout.tensors:
        if r.size - r.pos >= layout.alignment:
            raise r.fail(f"{r.size - r.pos} bytes follow a header that lists no tensors "
                         "(the tensor count is wrong)")
        return
    for t in layout.tensors:
        end = layout.data_start + t.offset + t.nbytes
        if end > r.size:
            raise CorruptFileError(
                "tensor data runs past the end of the file (truncated or corrupt)", where=r.path,
                fix=f"{FIX_REDOWNLOAD} (tensor {t.name!r} data is not within the file bounds: it ends at byte "
                    f"{end}, the file has {r.size})")
    last = layout.tensors[-1]
    end = layout.data_start + last.offset + last.nbytes
    if r.size - end >= layout.alignment:
        raise r.fail(f"{r.size - end} bytes follow the last tensor {last.name!r}: the header's tensor count "
                     f"({len(layout.tensors)}) or the tensor table is wrong, so every tensor would be read "
                     "from the wrong place")


# ---- hyper-parameters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Bound:
    low: float
    high: float
    kind: str = "int"  # int | float
    per_layer: bool = False  # may be an array with one value per block
    low_open: bool = False  # low excluded (epsilons, bases)


#: ``{arch}.<key>`` -> the range llama.cpp runs. Absent keys are the loader's to default or require.
HPARAM_BOUNDS: dict[str, _Bound] = {
    "block_count": _Bound(1, MAX_LAYERS),
    "context_length": _Bound(1, 2**26),
    "embedding_length": _Bound(1, 2**17),
    "feed_forward_length": _Bound(1, 2**20, per_layer=True),
    "attention.head_count": _Bound(1, 2**12, per_layer=True),
    "attention.head_count_kv": _Bound(1, 2**12, per_layer=True),
    "attention.key_length": _Bound(1, 2**16),
    "attention.value_length": _Bound(1, 2**16),
    "rope.dimension_count": _Bound(0, 2**16),
    "vocab_size": _Bound(1, 2**24),
    "expert_count": _Bound(0, 512),
    "expert_used_count": _Bound(0, 512),
    "attention.layer_norm_rms_epsilon": _Bound(0, 1, "float", low_open=True),
    "attention.layer_norm_epsilon": _Bound(0, 1, "float", low_open=True),
    "rope.freq_base": _Bound(0, 1e12, "float", low_open=True),
    "rope.scaling.factor": _Bound(0, 1e6, "float", low_open=True),
}


def _hp_fail(layout: GGUFLayout, key: str, what: str) -> CorruptFileError:
    return CorruptFileError(f"GGUF hyper-parameter {key} {what}", where=layout.path,
                            fix="fix the converter's config (or convert the checkpoint again); llama.cpp cannot run "
                                "this value")


def hparam(layout: GGUFLayout, name: str) -> int | None:
    """The integer hyper-parameter ``{arch}.<name>`` (the first layer's for per-layer arrays)."""
    value = layout.metadata.get(f"{layout.architecture}.{name}")
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_hparams(layout: GGUFLayout) -> None:
    """The ``{arch}.*`` hyper-parameters present in the file, within :data:`HPARAM_BOUNDS`, and
    consistent (heads divide the width, KV heads divide the heads)."""
    meta = layout.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise CorruptFileError("the GGUF file names no general.architecture", where=layout.path, fix=FIX_REDOWNLOAD)
    types = layout.types
    for name, b in HPARAM_BOUNDS.items():
        key = f"{arch}.{name}"
        if key not in meta:
            continue
        vtype = types[key]
        values: list[Any]
        if vtype == _ARRAY and b.per_layer:
            etype, count = layout.arrays[key]
            value = meta[key]
            if isinstance(value, dict) or etype not in _INT_TYPES:
                raise _hp_fail(layout, key, f"is an array of {count} {_TYPE_NAMES.get(etype)} values; "
                                            f"expected at most {MAX_LAYERS} integers")
            values = value
            layers = hparam(layout, "block_count")
            if layers is not None and count != layers:
                raise _hp_fail(layout, key, f"has {count} per-layer values for {layers} blocks")
        else:
            allowed = _INT_TYPES if b.kind == "int" else _FLOAT_TYPES
            if vtype not in allowed:
                raise _hp_fail(layout, key, f"has type {_TYPE_NAMES.get(vtype, vtype)}; expected "
                                            f"{'an integer' if b.kind == 'int' else 'a float'}")
            values = [meta[key]]
        for v in values:
            bad = not math.isfinite(v) or v > b.high or (v <= b.low if b.low_open else v < b.low)
            if name == "attention.head_count_kv" and vtype == _ARRAY and v == 0:
                bad = False  # per-layer 0: a layer without attention (hybrid architectures)
            if bad:
                low, high = (f"{b.low:g}", f"{b.high:g}") if b.kind == "float" else (int(b.low), int(b.high))
                rng = f"{'(' if b.low_open else '['}{low}, {high}]"
                raise _hp_fail(layout, key, f"is {v!r}, outside {rng}")
    embd, heads, kv = (hparam(layout, "embedding_length"), hparam(layout, "attention.head_count"),
                       hparam(layout, "attention.head_count_kv"))
    if embd and heads and hparam(layout, "attention.key_length") is None and embd % heads:
        raise _hp_fail(layout, f"{arch}.embedding_length", f"({embd}) is not a multiple of the head count ({heads})")
    if heads and kv and heads % kv:
        raise _hp_fail(layout, f"{arch}.attention.head_count_kv", f"({kv}) does not divide the head count ({heads})")
    rope, head_dim = hparam(layout, "rope.dimension_count"), _head_dim(layout)
    if rope is not None and head_dim and rope > head_dim:
        raise _hp_fail(layout, f"{arch}.rope.dimension_count", f"({rope}) exceeds the head size ({head_dim})")
    used, experts = hparam(layout, "expert_used_count"), hparam(layout, "expert_count")
    if used and (experts or 0) < used:
        raise _hp_fail(layout, f"{arch}.expert_used_count", f"({used}) exceeds the expert count ({experts or 0})")


def _head_dim(layout: GGUFLayout) -> int | None:
    key = hparam(layout, "attention.key_length")
    if key:
        return key
    embd, heads = hparam(layout, "embedding_length"), hparam(layout, "attention.head_count")
    return embd // heads if embd and heads else None


# ---- vocabulary and tensors of a model -------------------------------------------------------------
def vocab_size(layout: GGUFLayout) -> int:
    """The number of tokens in ``tokenizer.ggml.tokens`` (0 when absent)."""
    return layout.arrays.get("tokenizer.ggml.tokens", (0, 0))[1]


def check_vocabulary(layout: GGUFLayout) -> int:
    """A vocabulary llama.cpp can read: a token list, and scores, token types (and their
    values) of the same length. Returns the vocabulary size."""
    meta, path = layout.metadata, layout.path
    model = meta.get("tokenizer.ggml.model")
    if model in ("none", "no_vocab"):
        return 0
    fix = "convert the checkpoint again with its tokenizer (openllm-hub convert SRC OUT.gguf --to gguf)"
    if not isinstance(model, str) or "tokenizer.ggml.tokens" not in meta:
        raise CorruptFileError("the GGUF file has no vocabulary (tokenizer.ggml.model / tokenizer.ggml.tokens "
                               "missing)", where=path, fix=fix)
    etype, n = layout.arrays.get("tokenizer.ggml.tokens", (-1, 0))
    if etype != _STRING or n < 1:
        raise CorruptFileError("tokenizer.ggml.tokens is not a non-empty list of strings", where=path, fix=fix)
    for key, want in (("tokenizer.ggml.scores", _FLOAT_TYPES), ("tokenizer.ggml.token_type", _INT_TYPES)):
        if key in meta:
            et, count = layout.arrays.get(key, (-1, -1))
            if count != n or et not in want:
                raise CorruptFileError(f"{key} has {count} entries ({_TYPE_NAMES.get(et, '?')}) for {n} tokens",
                                       where=path, fix=fix)
    if layout.repeated_token is not None:
        first, second, text = layout.repeated_token
        raise CorruptFileError(f"tokens {first} and {second} of tokenizer.ggml.tokens are both spelled {text!r}; "
                               "llama.cpp needs every spelling once (it would abort the process)", where=path,
                               fix=fix)
    low, high = layout.ranges.get("tokenizer.ggml.token_type", (0, 0))
    if low < 0 or high > 6:
        raise CorruptFileError(f"tokenizer.ggml.token_type holds values outside 0..6 ({low}..{high})", where=path,
                               fix=fix)
    size = hparam(layout, "vocab_size")
    if size is not None and size != n:
        raise CorruptFileError(f"{layout.architecture}.vocab_size is {size} but the vocabulary has {n} tokens",
                               where=path, fix=fix)
    return n


@dataclass(frozen=True)
class Dims:
    """A model's sizes, from its hyper-parameters, for the shape rules of :data:`ARCHITECTURES`."""

    vocab: int
    embd: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    head_k: int
    head_v: int
    experts: int

    @property
    def q(self) -> int:
        return self.head_k * self.heads

    @property
    def k(self) -> int:
        return self.head_k * self.kv_heads

    @property
    def v(self) -> int:
        return self.head_v * self.kv_heads


#: A tensor rule: (name, GGML-order shape from the model's Dims, required). ``{i}`` is the block.
Rule = tuple[str, Callable[[Dims], tuple[int, ...]], bool]


@dataclass(frozen=True)
class Architecture:
    """The tensors llama.cpp loads for one architecture: whole-model ones and per block.
    ``alternatives`` lists groups of per-block names of which one full group must be there
    (e.g. fused ``attn_qkv`` or separate ``attn_q``/``attn_k``/``attn_v``)."""

    model: tuple[Rule, ...]
    block: tuple[Rule, ...]
    alternatives: tuple[tuple[tuple[Rule, ...], ...], ...] = ()
    dense_ffn: tuple[Rule, ...] = ()  # required unless the model has experts
    optional: tuple[str, ...] = ()  # further names llama.cpp accepts (shapes not checked here)

    def names(self, layers: int) -> set[str]:
        """Every tensor name llama.cpp may load for a model of ``layers`` blocks."""
        per_block = [r[0] for r in (*self.block, *self.dense_ffn)]
        per_block += [r[0] for group in self.alternatives for option in group for r in option]
        per_block += [n for n in self.optional if "{i}" in n]
        out = {r[0] for r in self.model} | {n for n in self.optional if "{i}" not in n}
        out.update(n.format(i=i) for i in range(layers) for n in per_block)
        return out


_E: Callable[[Dims], tuple[int, ...]] = lambda d: (d.embd,)  # noqa: E731 - small shape tables read best inline

#: Pieces shared by the llama-like tables below: embedding, final norm, optional output
#: (absent when tied), the attention of a block, and its SwiGLU feed-forward.
_LLAMA_LIKE_MODEL: tuple[Rule, ...] = (("token_embd.weight", lambda d: (d.embd, d.vocab), True),
                                       ("output_norm.weight", _E, True),
                                       ("output.weight", lambda d: (d.embd, d.vocab), False))
_ATTN_BLOCK: tuple[Rule, ...] = (("blk.{i}.attn_norm.weight", _E, True),
                                 ("blk.{i}.attn_q.weight", lambda d: (d.embd, d.q), True),
                                 ("blk.{i}.attn_k.weight", lambda d: (d.embd, d.k), True),
                                 ("blk.{i}.attn_v.weight", lambda d: (d.embd, d.v), True),
                                 ("blk.{i}.attn_output.weight", lambda d: (d.q, d.embd), True))
_SWIGLU: tuple[Rule, ...] = (("blk.{i}.ffn_gate.weight", lambda d: (d.embd, d.ffn), True),
                             ("blk.{i}.ffn_down.weight", lambda d: (d.ffn, d.embd), True),
                             ("blk.{i}.ffn_up.weight", lambda d: (d.embd, d.ffn), True))

#: llama.cpp's tensors (names and GGML-order shapes) of the architectures this project writes
#: (llama, chatglm) or tests against transformers (qwen2, qwen3, gemma2, gemma3, phi3: tests/test_any_gguf.py).
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(
        model=(("token_embd.weight", lambda d: (d.embd, d.vocab), True),
               ("output_norm.weight", _E, True),
               ("output.weight", lambda d: (d.embd, d.vocab), False)),
        block=(("blk.{i}.attn_norm.weight", _E, True),
               ("blk.{i}.attn_q.weight", lambda d: (d.embd, d.q), True),
               ("blk.{i}.attn_k.weight", lambda d: (d.embd, d.k), True),
               ("blk.{i}.attn_v.weight", lambda d: (d.embd, d.v), True),
               ("blk.{i}.attn_output.weight", lambda d: (d.q, d.embd), True),
               ("blk.{i}.ffn_norm.weight", _E, True)),
        dense_ffn=(("blk.{i}.ffn_gate.weight", lambda d: (d.embd, d.ffn), True),
                   ("blk.{i}.ffn_down.weight", lambda d: (d.ffn, d.embd), True),
                   ("blk.{i}.ffn_up.weight", lambda d: (d.embd, d.ffn), True)),
        optional=("rope_freqs.weight", "blk.{i}.attn_rot_embd", "blk.{i}.attn_q.bias", "blk.{i}.attn_k.bias",
                  "blk.{i}.attn_v.bias", "blk.{i}.attn_output.bias", "blk.{i}.ffn_gate_inp.weight",
                  "blk.{i}.ffn_gate_exps.weight", "blk.{i}.ffn_down_exps.weight", "blk.{i}.ffn_up_exps.weight"),
    ),
    "qwen2": Architecture(
        model=_LLAMA_LIKE_MODEL,
        block=(*_ATTN_BLOCK, ("blk.{i}.attn_q.bias", lambda d: (d.q,), False),
               ("blk.{i}.attn_k.bias", lambda d: (d.k,), False), ("blk.{i}.attn_v.bias", lambda d: (d.v,), False),
               ("blk.{i}.ffn_norm.weight", _E, True), *_SWIGLU),
        optional=("rope_freqs.weight",),
    ),
    "qwen3": Architecture(
        model=_LLAMA_LIKE_MODEL,
        block=(*_ATTN_BLOCK, ("blk.{i}.attn_q_norm.weight", lambda d: (d.head_k,), True),
               ("blk.{i}.attn_k_norm.weight", lambda d: (d.head_k,), True),
               ("blk.{i}.ffn_norm.weight", _E, True), *_SWIGLU),
        optional=("rope_freqs.weight",),
    ),
    # tied: llama.cpp reuses token_embd as the output (an output.weight would be one tensor too many)
    "gemma2": Architecture(
        model=_LLAMA_LIKE_MODEL[:2],
        block=(*_ATTN_BLOCK, ("blk.{i}.post_attention_norm.weight", _E, True), ("blk.{i}.ffn_norm.weight", _E, True),
               *_SWIGLU, ("blk.{i}.post_ffw_norm.weight", _E, True)),
    ),
    "gemma3": Architecture(
        model=_LLAMA_LIKE_MODEL,
        block=(*_ATTN_BLOCK, ("blk.{i}.attn_q_norm.weight", lambda d: (d.head_k,), True),
               ("blk.{i}.attn_k_norm.weight", lambda d: (d.head_k,), True),
               ("blk.{i}.post_attention_norm.weight", _E, True), ("blk.{i}.ffn_norm.weight", _E, True),
               *_SWIGLU, ("blk.{i}.post_ffw_norm.weight", _E, True)),
    ),
    "phi3": Architecture(
        model=_LLAMA_LIKE_MODEL,
        block=(("blk.{i}.attn_norm.weight", _E, True),
               ("blk.{i}.attn_output.weight", lambda d: (d.q, d.embd), True),
               ("blk.{i}.ffn_norm.weight", _E, True),
               ("blk.{i}.ffn_up.weight", lambda d: (d.embd, 2 * d.ffn), True),  # gate and up, fused
               ("blk.{i}.ffn_down.weight", lambda d: (d.ffn, d.embd), True)),
        alternatives=((
            (("blk.{i}.attn_qkv.weight", lambda d: (d.embd, d.q + d.k + d.v), True),),
            (("blk.{i}.attn_q.weight", lambda d: (d.embd, d.q), True),
             ("blk.{i}.attn_k.weight", lambda d: (d.embd, d.k), True),
             ("blk.{i}.attn_v.weight", lambda d: (d.embd, d.v), True)),
        ),),
        optional=("rope_factors_long.weight", "rope_factors_short.weight"),
    ),
    "chatglm": Architecture(
        model=(("token_embd.weight", lambda d: (d.embd, d.vocab), True),
               ("output_norm.weight", _E, True),
               ("output.weight", lambda d: (d.embd, d.vocab), True)),
        block=(("blk.{i}.attn_norm.weight", _E, True),
               ("blk.{i}.attn_output.weight", lambda d: (d.q, d.embd), True),
               ("blk.{i}.ffn_norm.weight", _E, True),
               ("blk.{i}.ffn_up.weight", lambda d: (d.embd, 2 * d.ffn), True),
               ("blk.{i}.ffn_down.weight", lambda d: (d.ffn, d.embd), True)),
        alternatives=((
            (("blk.{i}.attn_qkv.weight", lambda d: (d.embd, d.q + d.k + d.v), True),
             ("blk.{i}.attn_qkv.bias", lambda d: (d.q + d.k + d.v,), False)),
            (("blk.{i}.attn_q.weight", lambda d: (d.embd, d.q), True),
             ("blk.{i}.attn_k.weight", lambda d: (d.embd, d.k), True),
             ("blk.{i}.attn_v.weight", lambda d: (d.embd, d.v), True),
             ("blk.{i}.attn_q.bias", lambda d: (d.q,), False),
             ("blk.{i}.attn_k.bias", lambda d: (d.k,), False),
             ("blk.{i}.attn_v.bias", lambda d: (d.v,), False)),
        ),),
    ),
}

_REQUIRED_HPARAMS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                     "context_length")


def model_dims(layout: GGUFLayout, n_vocab: int) -> Dims:
    """The sizes the tensor rules use; the keys every llama.cpp decoder requires must be there."""
    arch = layout.architecture
    for name in _REQUIRED_HPARAMS:
        if hparam(layout, name) is None:
            raise CorruptFileError(f"the GGUF file lacks the hyper-parameter {arch}.{name}", where=layout.path,
                                   fix=FIX_REDOWNLOAD)
    heads = hparam(layout, "attention.head_count") or 1
    embd = hparam(layout, "embedding_length") or 1
    head_k = hparam(layout, "attention.key_length") or embd // heads
    return Dims(vocab=n_vocab, embd=embd, layers=hparam(layout, "block_count") or 0,
                ffn=hparam(layout, "feed_forward_length") or 0, heads=heads,
                kv_heads=hparam(layout, "attention.head_count_kv") or heads, head_k=head_k,
                head_v=hparam(layout, "attention.value_length") or head_k, experts=hparam(layout, "expert_count") or 0)


def _shape_problem(t: TensorInfo, want: tuple[int, ...]) -> str | None:
    if t.ggml_type in NOT_WEIGHT_TYPES:
        return f"tensor {t.name!r} is stored as {t.type_name}, which llama.cpp cannot compute with as a weight"
    if t.ne != want:
        return f"tensor {t.name!r} has shape {list(t.ne)}, expected {list(want)} from the hyper-parameters"
    if len(t.ne) == 1 and t.ggml_type != _F32:
        return f"tensor {t.name!r} is a vector stored as {t.type_name}; llama.cpp needs F32 vectors"
    return None


def check_tensors(layout: GGUFLayout, n_vocab: int) -> None:
    """Every tensor llama.cpp will ask for, with the shape it will ask for (architectures of
    :data:`ARCHITECTURES`; other architectures: only ``blk.N`` indices against the block count)."""
    arch = ARCHITECTURES.get(layout.architecture)
    fix = FIX_REDOWNLOAD
    layers = hparam(layout, "block_count")
    for t in layout.tensors:
        if t.name.startswith("blk.") and layers is not None:
            idx = t.name.split(".")[1]
            if not idx.isdigit() or int(idx) >= layers:
                raise CorruptFileError(f"tensor {t.name!r} belongs to no block (the model has {layers})",
                                       where=layout.path, fix=fix)
    if arch is None:  # an architecture this module has no table for: llama.cpp checks the rest
        return
    dims = model_dims(layout, n_vocab)
    if n_vocab == 0:  # a vocabulary-less model: the embedding decides
        embd = layout.by_name.get("token_embd.weight")
        dims = Dims(**{**dims.__dict__, "vocab": embd.ne[-1] if embd else 0})

    def check(rule: Rule, i: int | None = None) -> bool:
        name, shape, required = rule
        name = name.format(i=i)
        t = layout.by_name.get(name)
        if t is None:
            if required:
                raise CorruptFileError(f"tensor {name!r} is missing ({layout.architecture} with {dims.layers} blocks)",
                                       where=layout.path, fix=fix)
            return False
        problem = _shape_problem(t, shape(dims))
        if problem:
            if name == "token_embd.weight" and t.ne[:1] == (dims.embd,):
                problem = (f"tensor 'token_embd.weight' has {t.ne[-1]} rows but the vocabulary has "
                           f"{dims.vocab} tokens")
            raise CorruptFileError(problem, where=layout.path, fix=fix)
        return True

    known = arch.names(dims.layers)
    unknown = [t.name for t in layout.tensors if t.name not in known]
    if unknown:
        raise CorruptFileError(f"tensor {unknown[0]!r} is not one of llama.cpp's {layout.architecture} tensors"
                               + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                               where=layout.path, fix=fix)
    for rule in arch.model:
        check(rule)
    for i in range(dims.layers):
        for rule in arch.block:
            check(rule, i)
        if not dims.experts:
            for rule in arch.dense_ffn:
                check(rule, i)
        for group in arch.alternatives:
            for option in group:
                if all(r[0].format(i=i) in layout.by_name for r in option if r[2]):
                    for rule in option:
                        check(rule, i)
                    break
            else:
                names = " or ".join("+".join(r[0].format(i=i) for r in o if r[2]) for o in group)
                raise CorruptFileError(f"block {i} lacks its tensors {names}", where=layout.path, fix=fix)


def check_model(layout: GGUFLayout) -> None:
    """What loading a model file needs beyond the structure: hyper-parameters, vocabulary and
    tensors (adapters, ``general.type=adapter``, are checked for their hyper-parameters only)."""
    check_hparams(layout)
    if layout.is_adapter:
        return
    check_tensors(layout, check_vocabulary(layout))


# ---- the cached entry point ------------------------------------------------------------------------
_CACHE: dict[tuple[str, int, int, int, bool], GGUFLayout] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def check_gguf(path: str | Path, *, model: bool = True) -> GGUFLayout:
    """Read and validate the GGUF file ``path``: its structure and hyper-parameters always;
    with ``model`` also the vocabulary and the architecture's tensors (:func:`check_model`).
    Results are cached per file state (path, size, modification time, inode), so the checks
    run once however many readers ask."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise NotFoundError("GGUF file not found", where=p) from None
    except OSError as exc:
        raise InvalidParameterError(f"cannot read the GGUF file: {exc.strerror or exc}", where=p) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, model)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    layout = read_gguf_layout(p)
    check_model(layout) if model else check_hparams(layout)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = layout
    return layout


def find_nonfinite(layout: GGUFLayout) -> str | None:
    """The name of the first tensor holding NaN or Inf (F32, F16 and BF16 read through a numpy
    memory map, quantized types dequantized with the gguf package when it is installed), or
    None. Reads the whole data section: meant for the moment a model produced non-finite
    logits, not for every load."""
    import numpy as np

    mm = np.memmap(layout.path, dtype=np.uint8, mode="r")
    step = 1 << 24
    for t in layout.tensors:
        raw = mm[layout.data_start + t.offset: layout.data_start + t.offset + t.nbytes]
        if t.ggml_type in (_F32, _F16, _BF16):
            view = raw.view(np.float32 if t.ggml_type == _F32 else np.float16)
            for s in range(0, view.size, step):
                chunk = view[s:s + step]
                if t.ggml_type == _BF16:
                    chunk = (chunk.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                if not np.isfinite(chunk).all():
                    return t.name
            continue
        try:
            import gguf
        except ImportError:  # pragma: no cover - the llama.cpp plugins install it
            continue
        _, block, block_bytes = GGML_TYPES[t.ggml_type]
        rows = raw.reshape(-1, t.ne[0] // block * block_bytes)
        per = max(1, step // max(1, rows.shape[1]))
        for s in range(0, rows.shape[0], per):
            try:
                values = gguf.quants.dequantize(np.ascontiguousarray(rows[s:s + per]),
                                                gguf.GGMLQuantizationType(t.ggml_type))
            except (NotImplementedError, ValueError):
                break
            if not np.isfinite(values).all():
                return t.name
    return None


__all__ = ["ARCHITECTURES", "GGML_TYPES", "HPARAM_BOUNDS", "MAX_LAYERS", "Architecture", "Dims", "GGUFLayout",
           "TensorInfo", "check_gguf", "check_hparams", "check_model", "check_tensors", "check_vocabulary",
           "find_nonfinite", "hparam", "model_dims", "read_gguf_layout", "vocab_size"]
