"""Memory planner: will a model fit on N GPUs (or this CPU), with which TP degree, quantization, offload.

Pure Python (no torch), fed by data: each family describes its model's memory as a
:class:`ModelSpec` (shapes read from the checkpoint's config alone) through its
``Family.memory`` hook; nothing here knows a family by name. ``openllm-hub plan MODEL`` renders a
:class:`Plan`, and :func:`refuse_if_too_big` lets every ``load()`` refuse early, with the numbers,
a model that cannot fit the device it was placed on.

Per GPU, for a tensor-parallel degree ``tp`` (Megatron-style splitting: every layer matrix
and the vocabulary split ``tp`` ways; norms and small biases replicated):

* **weights**: layer matrices at 2 bytes (fp16), 1 (INT8) or 0.5 (INT4) per parameter plus
  fp16 per-row scales; embeddings (and an untied output layer), biases and norms stay 16-bit.
  Offloading ``k`` layers keeps their matrices in CPU memory and adds a staging buffer of
  one layer on the GPU.
* **KV cache**: ``batch * seq * layers * kv_per_token_layer / tp`` values at 2 bytes (RNNs
  such as RWKV keep a fixed fp32 state of ``state_elements`` instead).
* **activations** of the largest step, the prompt pass over ``seq`` tokens: four hidden-size
  buffers per token, the local qkv and MLP intermediates, attention scores in fp32 plus
  probabilities in fp16 (``batch * heads/tp * seq^2``), the last row's logits, and for
  quantized weights the largest dequantized local matrix.
* **reserve**: 1 GiB per GPU for the CUDA context, cuBLAS workspace, NCCL buffers and
  allocator slack.

Defaults: batch 1 and the model's full context. GPU sizes such as ``40G`` are the cards'
nominal GiB. With GLM-130B's published config this reproduces its README's hardware table
(fp16 on 8 x A100 40G; fp16 with offload, or INT8, on 8 x V100 32G; INT8 on 8 x RTX 3090;
INT4 on 4 x RTX 3090 and 8 x RTX 2080 Ti) and rejects what does not fit (fp16 on 8 x V100
without offload, INT8 on 4 x RTX 3090 or 8 x RTX 2080 Ti).

The early refusal in ``load()`` is deliberately conservative (a false refusal is worse than a
late out-of-memory error): it compares the *floor* of a model's needs -- layer matrices at
4 bits or less, a one-token context, no reserve, every layer offloaded where the family can
offload -- with the memory that exists (the GPUs' total memory from ``nvidia-smi``, or the
available RAM from ``/proc/meminfo``). ``OPENLLM_HUB_DEVICE_MEMORY`` overrides that figure (bytes, or e.g.
``512M``, ``24G``; ``off`` disables the check).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.errors import IncompatibleDeviceError, InvalidParameterError, OpenLLMHubError

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.device import Placement

GIB = 1024**3
RESERVE_GIB = 1.0
#: Host-to-GPU bandwidth assumed for offload traffic estimates (PCIe 3.0 x16, in practice).
PCIE_BYTES_PER_S = 12e9
#: Overrides the memory the early refusal in ``load()`` compares with (bytes, ``24G``, ``off``).
MEMORY_ENV = "OPENLLM_HUB_DEVICE_MEMORY"
#: Bits per weight the refusal floor assumes for layer matrices (the smallest any engine here uses).
FLOOR_BITS = 4


@dataclass(frozen=True)
class ModelSpec:
    """What the planner needs of a model: its shapes as data (read by the family's
    ``memory`` hook from config alone; see :class:`~openllm_hub.core.family.Family`)."""

    name: str
    #: a label for messages (the family's name); the planner never branches on it
    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    #: the model's context length (the default sequence length of a plan)
    max_seq: int
    #: (out, in) of each quantizable matrix of one layer
    layer_matrices: tuple[tuple[int, int], ...]
    #: biases and norms of one layer (kept 16-bit)
    layer_small: int
    #: embedding rows (input, plus the output layer when untied) x hidden
    embedding_params: int
    #: widest MLP intermediate per token (all ranks), for activations
    mlp_width: int
    #: KV-cache values per token and layer (2 * kv heads * head size); 0 for RNNs
    kv_per_token_layer: int = 0
    #: fp32 values of an RNN's recurrent state per sequence (all layers)
    state_elements: int = 0
    attention: bool = True
    notes: str = ""
    #: sizes a TP degree must divide (heads and hidden by default; e.g. MLP width and vocabulary)
    tp_divides: tuple[int, ...] = ()
    #: bits per weight of a checkpoint stored quantized (INT8/INT4 shards, a q4_0 GGUF); None: float
    stored_bits: int | None = None
    #: bytes per unquantized value the engine computes in by default (4 for fp32-only engines)
    dtype_bytes: int = 2
    #: the family's loader can keep layers in CPU memory (a load option), moving each to the GPU per step
    offloadable: bool = False

    @property
    def layer_matrix_params(self) -> int:
        return sum(o * i for o, i in self.layer_matrices)

    @property
    def n_params(self) -> int:
        return self.num_layers * (self.layer_matrix_params + self.layer_small) + self.embedding_params + \
            2 * self.hidden_size

    def tp_degrees(self, limit: int) -> list[int]:
        """Tensor-parallel degrees up to ``limit`` that split heads and hidden size evenly."""
        sizes = (self.num_heads, self.hidden_size, *self.tp_divides)
        return [t for t in range(1, limit + 1) if all(n % t == 0 for n in sizes)]


#: A family's memory hook: (path, detected format) -> its shapes, from config alone.
MemoryReader = Callable[[Path, str], ModelSpec]


def bits_from_file_size(size_bytes: int, n_params: int) -> tuple[int | None, int]:
    """(stored_bits, dtype_bytes) of a checkpoint whose tensors take ``size_bytes`` for
    ``n_params`` parameters (e.g. a GGUF file): float files give (None, 2 or 4), quantized
    ones their bits per weight rounded up."""
    bpw = 8 * size_bytes / max(n_params, 1)
    if bpw > 24:
        return None, 4
    if bpw > 12:
        return None, 2
    return max(1, math.ceil(bpw)), 2


def stored_as(spec: ModelSpec, file: Path) -> ModelSpec:
    """``spec`` with the storage (bits per weight, element size) that ``file``'s size implies
    for its parameters: how a GGUF's quantization type enters the plan without reading it."""
    from dataclasses import replace

    bits, dtype_bytes = bits_from_file_size(file.stat().st_size, spec.n_params)
    return replace(spec, stored_bits=bits, dtype_bytes=dtype_bytes)


def gguf_dims(meta: Mapping[str, Any], where: Path | str) -> dict[str, int]:
    """A transformer's sizes from GGUF metadata under llama.cpp's standard keys
    (``{arch}.block_count``, ``.embedding_length``, ``.feed_forward_length``,
    ``.attention.head_count[_kv]``, ``.context_length``, the tokenizer's token count)."""
    arch = meta.get("general.architecture")
    try:
        layers = int(meta[f"{arch}.block_count"])
        hidden = int(meta[f"{arch}.embedding_length"])
        ffn = int(meta[f"{arch}.feed_forward_length"])
        heads = int(meta[f"{arch}.attention.head_count"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"GGUF metadata lacks {exc}", where=where,
                                    fix="reconvert the file with a current converter") from None
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv") or heads)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens.get("__array_len__", 0) if isinstance(tokens, dict) else len(tokens or ())
    vocab = int(meta.get(f"{arch}.vocab_size") or vocab or 32000)
    ctx = int(meta.get(f"{arch}.context_length") or 2048)
    return {"layers": layers, "hidden": hidden, "ffn": ffn, "heads": heads, "kv_heads": kv_heads, "vocab": vocab,
            "context": ctx}


# ---- GPUs --------------------------------------------------------------------------------------
_GPU_NAMES = {"a100": 40.0, "a100-40g": 40.0, "a100-80g": 80.0, "v100": 32.0, "v100-32g": 32.0,
              "v100-16g": 16.0, "3090": 24.0, "rtx3090": 24.0, "2080ti": 11.0, "rtx2080ti": 11.0,
              "a6000": 48.0, "h100": 80.0, "4090": 24.0, "rtx4090": 24.0, "t4": 16.0}
_GPU_RE = re.compile(r"^\s*(\d+)\s*[x×*]\s*(\S+?)\s*$", re.IGNORECASE)
_MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(g|gb|gib)?$", re.IGNORECASE)


@dataclass(frozen=True)
class GPUs:
    """``count`` devices of ``memory_gib`` each; ``label`` names a target that is not a GPU
    count (``cpu``: this machine's available RAM)."""

    count: int
    memory_gib: float
    label: str = ""

    @property
    def reserve_gib(self) -> float:
        return 0.0 if self.label == "cpu" else RESERVE_GIB

    @property
    def per_device(self) -> str:
        return "in CPU memory" if self.label == "cpu" else "per GPU"

    def __str__(self) -> str:
        if self.label:
            return f"{self.label} ({self.memory_gib:.1f} GiB available)"
        return f"{self.count}x{self.memory_gib:g}G"


def parse_gpus(text: str) -> GPUs:
    """``8x40G``, ``4x24GB``, ``8xV100`` or ``8xA100-80G`` -> count and GiB per GPU."""
    m = _GPU_RE.match(text)
    if m:
        count, what = int(m.group(1)), m.group(2).lower()
        mem = _MEM_RE.match(what)
        gib = float(mem.group(1)) if mem else _GPU_NAMES.get(what)
        if count >= 1 and gib and gib > 0:
            return GPUs(count, gib)
    raise InvalidParameterError(f"cannot parse GPUs {text!r}", where="--gpus",
                                fix="write COUNTxMEMORY, e.g. 8x40G or 4x24G, or COUNTxNAME, e.g. 8xV100")


def this_machine() -> GPUs:
    """The visible CUDA GPUs (count x the smallest total memory), else the CPU's available RAM."""
    from openllm_hub.core.device import probe_machine

    gpus = probe_machine().gpus
    if gpus:
        return GPUs(len(gpus), min(g.total_mib for g in gpus) / 1024)
    ram = available_ram()
    return GPUs(1, (ram or 0) / GIB, label="cpu")


# ---- estimates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU for one layout."""

    tp: int
    bits: int | None
    offload_layers: int
    batch: int
    seq: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    reserve_bytes: int
    host_bytes: int
    dtype_bytes: int = 2

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.reserve_bytes

    @property
    def quantization(self) -> str:
        if self.bits is None:
            return "fp32" if self.dtype_bytes == 4 else "fp16"
        return f"int{self.bits}"

    def as_dict(self) -> dict[str, Any]:
        g = GIB
        return {"tp": self.tp, "quantization": self.quantization, "offload_layers": self.offload_layers,
                "weights_gib": round(self.weights_bytes / g, 2), "kv_cache_gib": round(self.kv_cache_bytes / g, 2),
                "activations_gib": round(self.activation_bytes / g, 2),
                "reserve_gib": round(self.reserve_bytes / g, 2), "total_gib": round(self.total_bytes / g, 2),
                "offloaded_host_gib_per_rank": round(self.host_bytes / g, 2)}

    def describe(self) -> str:
        g = GIB
        return (f"weights {self.weights_bytes / g:.2f} + KV cache {self.kv_cache_bytes / g:.2f} + activations "
                f"{self.activation_bytes / g:.2f} + reserve {self.reserve_bytes / g:.2f} GiB")


def _matrix_bytes(params: float, bits: int | None, dtype_bytes: int) -> float:
    return params * (dtype_bytes if bits is None else bits / 8)


def estimate(spec: ModelSpec, *, tp: int, bits: int | None = None, offload_layers: int = 0, batch: int = 1,
             seq: int | None = None, dtype_bytes: int | None = None, reserve_gib: float = RESERVE_GIB) -> Estimate:
    """Memory of one GPU (rank) of a ``tp``-way layout; see the module docstring.
    ``dtype_bytes`` defaults to the spec's."""
    if tp < 1 or batch < 1:
        raise InvalidParameterError("tp and batch must be at least 1", where="planner")
    seq = spec.max_seq if seq is None else seq
    if seq < 1:
        raise InvalidParameterError("seq must be at least 1", where="planner")
    if not 0 <= offload_layers <= spec.num_layers:
        raise InvalidParameterError(f"cannot offload {offload_layers} of {spec.num_layers} layers", where="planner")
    db = spec.dtype_bytes if dtype_bytes is None else dtype_bytes
    h, L = spec.hidden_size, spec.num_layers
    rows = sum(o for o, _ in spec.layer_matrices)
    layer_local = _matrix_bytes(spec.layer_matrix_params / tp, bits, db)
    if bits is not None:
        layer_local += 2 * rows / tp  # fp16 per-row scales
    resident_layers = L - offload_layers
    staging = 1 if offload_layers else 0
    weights = (resident_layers + staging) * layer_local + L * spec.layer_small * db \
        + spec.embedding_params / tp * db + 2 * h * db
    if spec.attention:
        kv = batch * seq * L * spec.kv_per_token_layer / tp * db
    else:
        kv = batch * spec.state_elements * 4
    tokens = batch * seq
    act = 4 * tokens * h * db + tokens * 3 * h / tp * db \
        + 1.5 * tokens * spec.mlp_width / tp * db + batch * spec.vocab_size * (4 + db)
    if spec.attention:
        act += batch * (spec.num_heads / tp) * seq * seq * (4 + db)
    if bits is not None:
        act += max((o * i for o, i in spec.layer_matrices), default=0) / tp * db
    return Estimate(tp, bits, offload_layers, batch, seq, int(weights), int(kv), int(act),
                    int(reserve_gib * GIB), int(offload_layers * layer_local), db)


# ---- plans -------------------------------------------------------------------------------------
#: Preference among layouts: without offload first (offload moves weights over PCIe every token),
#: then quality (fp16 > INT8 > INT4).
PREFERENCE: tuple[tuple[int | None, bool], ...] = (
    (None, False), (8, False), (4, False), (None, True), (8, True), (4, True))


def _preference(spec: ModelSpec) -> tuple[tuple[int | None, bool], ...]:
    """:data:`PREFERENCE`, or for a checkpoint stored quantized its own bits and fewer (only
    the float layout for a model without layer matrices: nothing to quantize or offload)."""
    if not spec.layer_matrices:
        return ((spec.stored_bits, False),)
    if spec.stored_bits is None:
        return PREFERENCE
    bits: tuple[int | None, ...] = (spec.stored_bits, *(b for b in (8, 4) if b < spec.stored_bits))
    return tuple((b, off) for off in (False, True) for b in bits)


@dataclass(frozen=True)
class Option:
    estimate: Estimate
    capacity_bytes: int
    min_gpus: int | None = None

    @property
    def fits(self) -> bool:
        return self.estimate.total_bytes <= self.capacity_bytes

    def as_dict(self) -> dict[str, Any]:
        d = self.estimate.as_dict()
        d.update(fits=self.fits, capacity_gib=round(self.capacity_bytes / GIB, 2),
                 free_gib=round((self.capacity_bytes - self.estimate.total_bytes) / GIB, 2))
        if self.estimate.offload_layers:
            d["offload_traffic_s_per_token"] = round(self.estimate.host_bytes / PCIE_BYTES_PER_S, 3)
        if self.min_gpus is not None:
            d["min_gpus"] = self.min_gpus
        return d


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    gpus: GPUs
    requested: Option
    proposals: tuple[Option, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return self.requested.fits

    @property
    def recommended(self) -> Option | None:
        return self.proposals[0] if self.proposals else None

    def as_dict(self) -> dict[str, Any]:
        req = self.requested
        return {
            "model": self.model.name, "family": self.model.family, "parameters": self.model.n_params,
            "gpus": asdict(self.gpus), "fits": self.fits, "tp": req.estimate.tp,
            "quantization": req.estimate.quantization, "offload_layers": req.estimate.offload_layers,
            "batch": req.estimate.batch, "seq": req.estimate.seq, "per_gpu": req.as_dict(),
            "recommended": None if self.recommended is None else self.recommended.as_dict(),
            "proposals": [p.as_dict() for p in self.proposals], "notes": list(self.notes),
        }

    def render(self) -> str:
        e, g = self.requested.estimate, GIB
        n = self.model.n_params
        size = f"{n / 1e9:.1f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
        lines = [f"{self.model.name} ({self.model.family}): {size} parameters on {self.gpus} "
                 f"(TP={e.tp}, {e.quantization}{f', {e.offload_layers} layers offloaded' if e.offload_layers else ''}"
                 f", batch {e.batch}, seq {e.seq})",
                 f"  {self.gpus.per_device}: {e.describe()} = {e.total_bytes / g:.2f} GiB of "
                 f"{round(self.gpus.memory_gib, 2):g} GiB -> "
                 + ("FITS" if self.fits else "DOES NOT FIT")]
        if e.offload_layers:
            lines.append(f"  offload: {e.host_bytes / g:.2f} GiB per rank in CPU memory, ~"
                         f"{e.host_bytes / PCIE_BYTES_PER_S:.2f} s of PCIe transfer per token")
        lines += [f"  note: {n}" for n in self.notes]
        if self.proposals:
            lines.append("  layouts that fit (best first):")
            for p in self.proposals:
                pe = p.estimate
                lines.append(f"    TP={pe.tp} {pe.quantization}"
                             f"{f' + offload {pe.offload_layers} layers' if pe.offload_layers else ''}: "
                             f"{pe.total_bytes / g:.2f} GiB {self.gpus.per_device}"
                             + (f" (needs at least {p.min_gpus} GPUs)" if p.min_gpus else ""))
        else:
            lines.append(f"  nothing fits on {self.gpus}, even INT4 with every layer offloaded")
        return "\n".join(lines)


def _min_offload(spec: ModelSpec, tp: int, bits: int | None, cap: int, batch: int, seq: int | None,
                 reserve: float) -> Estimate:
    """The smallest number of offloaded layers that fits (all of them if none does)."""
    lo, hi = 0, spec.num_layers
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate(spec, tp=tp, bits=bits, offload_layers=mid, batch=batch, seq=seq,
                    reserve_gib=reserve).total_bytes <= cap:
            hi = mid
        else:
            lo = mid + 1
    return estimate(spec, tp=tp, bits=bits, offload_layers=lo, batch=batch, seq=seq, reserve_gib=reserve)


def plan(spec: ModelSpec, gpus: GPUs, *, quantize: int | None = None, offload: bool = False,
         offload_layers: int | None = None, batch: int = 1, seq: int | None = None) -> Plan:
    """Verdict for the requested layout (TP over all usable GPUs) and the layouts that fit.
    ``quantize`` defaults to the checkpoint's stored bits (float when it has none)."""
    cap = int(gpus.memory_gib * GIB)
    reserve = gpus.reserve_gib
    degrees = spec.tp_degrees(gpus.count)
    tp = degrees[-1]
    notes = [spec.notes] if spec.notes else []
    if tp != gpus.count:
        notes.append(f"{gpus.count} GPUs cannot split {spec.num_heads} heads evenly; TP={tp} uses {tp} of them")
    bits = spec.stored_bits if quantize is None else quantize
    if offload_layers is not None:
        req = estimate(spec, tp=tp, bits=bits, offload_layers=offload_layers, batch=batch, seq=seq,
                       reserve_gib=reserve)
    elif offload:
        req = _min_offload(spec, tp, bits, cap, batch, seq, reserve)
    else:
        req = estimate(spec, tp=tp, bits=bits, batch=batch, seq=seq, reserve_gib=reserve)
    proposals = []
    for pbits, off in _preference(spec):
        est = _min_offload(spec, tp, pbits, cap, batch, seq, reserve) if off else \
            estimate(spec, tp=tp, bits=pbits, batch=batch, seq=seq, reserve_gib=reserve)
        if est.total_bytes > cap or (off and (est.offload_layers == 0 or gpus.label == "cpu")):
            continue  # offloading is listed only where it is needed (and never to the CPU from the CPU)
        need = None if off else next(
            (t for t in degrees
             if estimate(spec, tp=t, bits=pbits, batch=batch, seq=seq, reserve_gib=reserve).total_bytes <= cap),
            None)
        proposals.append(Option(est, cap, min_gpus=need if need != tp else None))
    return Plan(spec, gpus, Option(req, cap), tuple(proposals), tuple(notes))


# ---- early refusal in load() -------------------------------------------------------------------
def parse_memory(text: str, where: str = MEMORY_ENV) -> int:
    """``1073741824``, ``512M``, ``24G`` or ``1.5GiB`` -> bytes."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", text, re.IGNORECASE)
    if not m:
        raise InvalidParameterError(f"cannot parse memory size {text!r}", where=where,
                                    fix="write bytes or a size such as 512M or 24G (or 'off' to skip the check)")
    scale = 1024 ** ("kmgt".find(m.group(2).lower()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * scale)


def available_ram() -> int | None:
    """Bytes of RAM available to a new process (``MemAvailable``; free pages where there is no
    ``/proc/meminfo``), or None when the platform does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def device_memory(placement: Placement) -> tuple[int, str] | None:
    """(bytes, what) the placement's device has: the GPUs' total memory (``nvidia-smi``), the
    CPU's available RAM, or :data:`MEMORY_ENV`; None when unknown or the check is off."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env.lower() in ("off", "none", "0"):
        return None
    if env:
        n = parse_memory(env)
        return n, f"{placement} has {size(n)} ({MEMORY_ENV}={env})"
    if placement.kind == "cuda":
        from openllm_hub.core.device import probe_machine

        by_index = {g.index: g for g in probe_machine().gpus}
        gpus = [by_index[i] for i in placement.gpu_ids if i in by_index]
        if not gpus:
            return None
        # the cards' total, not the free memory of a cached probe: refuse only what no empty card holds
        total = sum(g.total_mib for g in gpus) * 2**20
        return total, f"{placement} has {size(total)} in total"
    ram = available_ram()
    if ram is None:
        return None
    return ram, f"this machine has {size(ram)} of memory available"


def floor_estimate(spec: ModelSpec, *, dtype_bytes: int, offload: bool) -> Estimate:
    """The least a model can need: layer matrices at :data:`FLOOR_BITS` (or its stored bits when
    fewer), one token of context, no reserve, and with ``offload`` every layer in CPU memory."""
    bits = min(FLOOR_BITS, spec.stored_bits or FLOOR_BITS)
    return estimate(spec, tp=1, bits=bits, offload_layers=spec.num_layers if offload else 0, seq=1,
                    dtype_bytes=dtype_bytes, reserve_gib=0.0)


def refuse_if_too_big(memory: MemoryReader | None, path: Path, fmt: str, placement: Placement) -> None:
    """``load()``'s early check: raise :class:`IncompatibleDeviceError` with the numbers when even
    the :func:`floor_estimate` of the model exceeds the device's memory. Silent when the family
    has no memory hook, its config cannot be read (the loader reports that), the memory is
    unknown, or layers are offloaded with ``gpu_layers``."""
    if memory is None or (placement.kind == "cuda" and placement.gpu_layers not in (None, -1)):
        return
    have = device_memory(placement)
    if have is None:
        return
    try:
        spec = memory(path, fmt)
    except (OpenLLMHubError, ArithmeticError, LookupError, TypeError, ValueError):
        return  # advisory: a config the hook cannot read is the loader's to report
    dtype_bytes = 4 if placement.dtype == "fp32" else 2
    floor = floor_estimate(spec, dtype_bytes=dtype_bytes, offload=placement.kind == "cuda" and spec.offloadable)
    capacity, what = have
    if floor.total_bytes <= capacity:
        return
    full = estimate(spec, tp=1, bits=spec.stored_bits, dtype_bytes=dtype_bytes, reserve_gib=0.0)
    gpus = " --gpus NxMEM" if placement.kind == "cuda" else ""
    f, n = floor, spec.n_params
    count = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
    least = f"{f.bits}-bit weights and a 1-token context" if spec.layer_matrices else "a 1-token context"
    raise IncompatibleDeviceError(
        f"this {spec.family} model ({count} parameters) needs at least {size(f.total_bytes)} "
        f"even with {least} (weights {size(f.weights_bytes)} + KV cache/state "
        f"{size(f.kv_cache_bytes)} + activations {size(f.activation_bytes)}; {size(full.total_bytes)} as stored "
        f"with its {full.seq}-token context), but {what}",
        where=path,
        fix=f"load it on a device with more memory or on several GPUs (device='cuda:0,1'), offload layers to CPU "
            f"memory where the family can (gpu_layers=N, offload_layers), quantize it, use a smaller context or a "
            f"smaller model; `openllm-hub plan {path}{gpus}` shows the layouts that fit "
            f"({MEMORY_ENV}=off skips this check)")


def size(n: float) -> str:
    """Bytes for people: ``12.50 GiB``, ``3.20 MiB``, ``512 B``."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
