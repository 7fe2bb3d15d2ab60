"""Hardware planner: will a model fit on N GPUs, and with which TP degree, quantization, offload.

Pure Python (no torch), so the core can use it for early refusals in ``load()``.

Per GPU, for a tensor-parallel degree ``tp`` (Megatron-style splitting: every layer matrix
and the vocabulary split ``tp`` ways; norms and small biases replicated):

* **weights**: layer matrices at 2 bytes (fp16), 1 (INT8) or 0.5 (INT4) per parameter plus
  fp16 per-row scales; embeddings (and an untied output layer), biases and norms stay 16-bit.
  Offloading ``k`` layers keeps their matrices in CPU memory and adds a staging buffer of
  one layer on the GPU.
* **KV cache**: ``batch * seq * layers * 2 * hidden / tp`` values at 2 bytes (RNNs such as
  RWKV keep a fixed state instead).
* **activations** of the largest step, the prompt pass over ``seq`` tokens: four hidden-size
  buffers per token, the local qkv and MLP intermediates, attention scores in fp32 plus
  probabilities in fp16 (``batch * heads/tp * seq^2``), the last row's logits, and for
  quantized weights the largest dequantized local matrix.
* **reserve**: 1 GiB per GPU for the CUDA context, cuBLAS workspace, NCCL buffers and
  allocator slack.

Defaults: batch 1 and the model's full context (GLM-130B's initialization runs a forward
pass of its maximum length). GPU sizes such as ``40G`` are the cards' nominal GiB.
With GLM-130B's published config this reproduces its README's hardware table (fp16 on
8 x A100 40G; fp16 with offload, or INT8, on 8 x V100 32G; INT8 on 8 x RTX 3090; INT4 on
4 x RTX 3090 and 8 x RTX 2080 Ti) and rejects what does not fit (fp16 on 8 x V100 without
offload, INT8 on 4 x RTX 3090 or 8 x RTX 2080 Ti).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openllm_hub.errors import InvalidParameterError, NotFoundError

GIB = 1024**3
RESERVE_GIB = 1.0
#: Host-to-GPU bandwidth assumed for offload traffic estimates (PCIe 3.0 x16, in practice).
PCIE_BYTES_PER_S = 12e9


@dataclass(frozen=True)
class ModelSpec:
    """What the planner needs of a model: shapes as data."""

    name: str
    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    max_seq: int
    #: (out, in) of each quantizable matrix of one layer
    layer_matrices: tuple[tuple[int, int], ...]
    #: biases and norms of one layer (kept 16-bit)
    layer_small: int
    #: embedding rows (input, plus the output layer when untied) x hidden
    embedding_params: int
    #: widest MLP intermediate per token (all ranks), for activations
    mlp_width: int
    kv_per_token_layer: int = 0
    state_elements: int = 0
    attention: bool = True
    notes: str = ""
    #: sizes a TP degree must divide (heads and hidden by default; GLM-130B's engine adds MLP and vocab)
    tp_divides: tuple[int, ...] = ()

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


def _transformer(name: str, family: str, *, layers: int, hidden: int, heads: int, vocab: int, seq: int,
                 inner: int, mlp: str, tied: bool, notes: str = "") -> ModelSpec:
    h = hidden
    attn = ((3 * h, h), (h, h))
    mats: tuple[tuple[int, int], ...]
    if mlp == "geglu":  # GLM-130B: h -> 2*inner, inner -> h
        mats = (*attn, (2 * inner, h), (h, inner))
        small, width = 3 * h + h + 2 * inner + h + 4 * h, 2 * inner
    elif mlp == "swiglu":  # LLaMA: gate, up, down; no biases
        mats = ((h, h), (h, h), (h, h), (h, h), (inner, h), (inner, h), (h, inner))
        small, width = 2 * h, 2 * inner
    else:  # gelu: h -> inner -> h, with biases
        mats = (*attn, (inner, h), (h, inner))
        small, width = 3 * h + h + inner + h + 4 * h, inner
    divides = (inner, vocab) if mlp == "geglu" else ()
    return ModelSpec(name, family, layers, h, heads, vocab, seq, mats, small, vocab * h * (1 if tied else 2),
                     width, kv_per_token_layer=2 * h, notes=notes, tp_divides=divides)


def _rwkv(name: str, *, layers: int, hidden: int, vocab: int, seq: int) -> ModelSpec:
    h = hidden
    mats = ((h, h), (h, h), (h, h), (h, h), (4 * h, h), (h, 4 * h), (h, h))
    return ModelSpec(name, "rwkv", layers, h, h, vocab, seq, mats, 12 * h, 2 * vocab * h, 4 * h,
                     state_elements=5 * layers * h, attention=False,
                     notes="RNN: a fixed state per sequence instead of a KV cache")


#: The seed's models, from their published configs.
BUILTIN: dict[str, ModelSpec] = {
    "glm-130b": _transformer("glm-130b", "glm130b", layers=70, hidden=12288, heads=96, vocab=150528, seq=2048,
                             inner=32768, mlp="geglu", tied=True, notes="THUDM/GLM-130B configs/model_glm_130b.sh"),
    "chatglm-6b": _transformer("chatglm-6b", "chatglm", layers=28, hidden=4096, heads=32, vocab=130528, seq=2048,
                               inner=16384, mlp="gelu", tied=True,
                               notes="THUDM/chatglm-6b config.json (output layer shares the embedding)"),
    "llama-7b": _transformer("llama-7b", "llama", layers=32, hidden=4096, heads=32, vocab=32000, seq=2048,
                             inner=11008, mlp="swiglu", tied=False),
    "llama-13b": _transformer("llama-13b", "llama", layers=40, hidden=5120, heads=40, vocab=32000, seq=2048,
                              inner=13824, mlp="swiglu", tied=False),
    "llama-30b": _transformer("llama-30b", "llama", layers=60, hidden=6656, heads=52, vocab=32000, seq=2048,
                              inner=17920, mlp="swiglu", tied=False),
    "llama-65b": _transformer("llama-65b", "llama", layers=80, hidden=8192, heads=64, vocab=32000, seq=2048,
                              inner=22016, mlp="swiglu", tied=False),
    "rwkv-4-raven-7b": _rwkv("rwkv-4-raven-7b", layers=32, hidden=4096, vocab=50277, seq=4096),
}


def spec_from_glm(cfg: Any, name: str = "glm130b checkpoint") -> ModelSpec:
    """A spec from a :class:`~openllm_hub_glm130b.config.GLMConfig`."""
    return _transformer(name, "glm130b", layers=cfg.num_layers, hidden=cfg.hidden_size,
                        heads=cfg.num_attention_heads, vocab=cfg.vocab_size, seq=cfg.max_sequence_length,
                        inner=cfg.inner_hidden_size, mlp="geglu", tied=True)


def resolve_spec(model: str) -> ModelSpec:
    """A built-in name, a GLM-130B checkpoint folder or config, or a HuggingFace config.json
    (llama, chatglm, rwkv)."""
    key = model.lower()
    if key in BUILTIN:
        return BUILTIN[key]
    p = Path(model)
    if not p.exists():
        raise NotFoundError(f"{model!r} is neither a built-in model name nor a path", where=model,
                            fix=f"built-in names: {', '.join(BUILTIN)}")
    from openllm_hub_glm130b.config import CONFIG_NAME, read_config

    if (p.is_dir() and (p / CONFIG_NAME).is_file()) or p.name == CONFIG_NAME:
        return spec_from_glm(read_config(p), name=str(p))
    cfg_path = p / "config.json" if p.is_dir() else p
    if not cfg_path.is_file():
        raise NotFoundError("no glm130b_config.json or config.json here", where=p)
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameterError(f"invalid JSON: {exc}", where=cfg_path) from exc
    if data.get("model_type") == MODEL_TYPE_GLM:
        from openllm_hub_glm130b.config import GLMConfig

        return spec_from_glm(GLMConfig.from_json(data, where=cfg_path), name=str(p))
    return _spec_from_hf(data, str(p), cfg_path)


MODEL_TYPE_GLM = "glm-130b"


def _spec_from_hf(d: dict[str, Any], name: str, where: Path) -> ModelSpec:
    mt = d.get("model_type")
    try:
        if mt == "llama":
            return _transformer(name, "llama", layers=d["num_hidden_layers"], hidden=d["hidden_size"],
                                heads=d["num_attention_heads"], vocab=d["vocab_size"],
                                seq=d.get("max_position_embeddings", 2048), inner=d["intermediate_size"],
                                mlp="swiglu", tied=bool(d.get("tie_word_embeddings", False)))
        if mt == "chatglm":
            return _transformer(name, "chatglm", layers=d["num_layers"], hidden=d["hidden_size"],
                                heads=d["num_attention_heads"], vocab=d["vocab_size"],
                                seq=d.get("max_sequence_length", 2048),
                                inner=d.get("inner_hidden_size", 4 * d["hidden_size"]), mlp="gelu", tied=True)
        if mt == "rwkv":
            return _rwkv(name, layers=d["num_hidden_layers"], hidden=d["hidden_size"], vocab=d["vocab_size"],
                         seq=d.get("context_length", 4096))
    except KeyError as exc:
        raise InvalidParameterError(f"config.json lacks {exc}", where=where) from None
    raise InvalidParameterError(f"the planner does not know model_type {mt!r}", where=where,
                                fix="use a built-in name or a llama/chatglm/rwkv/glm-130b config")


# ---- GPUs --------------------------------------------------------------------------------------
_GPU_NAMES = {"a100": 40.0, "a100-40g": 40.0, "a100-80g": 80.0, "v100": 32.0, "v100-32g": 32.0,
              "v100-16g": 16.0, "3090": 24.0, "rtx3090": 24.0, "2080ti": 11.0, "rtx2080ti": 11.0,
              "a6000": 48.0, "h100": 80.0, "4090": 24.0, "rtx4090": 24.0, "t4": 16.0}
_GPU_RE = re.compile(r"^\s*(\d+)\s*[x×*]\s*(\S+?)\s*$", re.IGNORECASE)
_MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(g|gb|gib)?$", re.IGNORECASE)


@dataclass(frozen=True)
class GPUs:
    count: int
    memory_gib: float

    def __str__(self) -> str:
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

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.reserve_bytes

    @property
    def quantization(self) -> str:
        return "fp16" if self.bits is None else f"int{self.bits}"

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
             seq: int | None = None, dtype_bytes: int = 2, reserve_gib: float = RESERVE_GIB) -> Estimate:
    """Memory of one GPU (rank) of a ``tp``-way layout; see the module docstring."""
    if tp < 1 or batch < 1:
        raise InvalidParameterError("tp and batch must be at least 1", where="planner")
    seq = spec.max_seq if seq is None else seq
    if seq < 1:
        raise InvalidParameterError("seq must be at least 1", where="planner")
    if not 0 <= offload_layers <= spec.num_layers:
        raise InvalidParameterError(f"cannot offload {offload_layers} of {spec.num_layers} layers", where="planner")
    h, L = spec.hidden_size, spec.num_layers
    rows = sum(o for o, _ in spec.layer_matrices)
    layer_local = _matrix_bytes(spec.layer_matrix_params / tp, bits, dtype_bytes)
    if bits is not None:
        layer_local += 2 * rows / tp  # fp16 per-row scales
    resident_layers = L - offload_layers
    staging = 1 if offload_layers else 0
    weights = (resident_layers + staging) * layer_local + L * spec.layer_small * dtype_bytes \
        + spec.embedding_params / tp * dtype_bytes + 2 * h * dtype_bytes
    if spec.attention:
        kv = batch * seq * L * spec.kv_per_token_layer / tp * dtype_bytes
    else:
        kv = batch * spec.state_elements * 4
    tokens = batch * seq
    act = 4 * tokens * h * dtype_bytes + tokens * 3 * h / tp * dtype_bytes \
        + 1.5 * tokens * spec.mlp_width / tp * dtype_bytes + batch * spec.vocab_size * (4 + dtype_bytes)
    if spec.attention:
        act += batch * (spec.num_heads / tp) * seq * seq * (4 + dtype_bytes)
    if bits is not None:
        act += max(o * i for o, i in spec.layer_matrices) / tp * dtype_bytes
    return Estimate(tp, bits, offload_layers, batch, seq, int(weights), int(kv), int(act),
                    int(reserve_gib * GIB), int(offload_layers * layer_local))


# ---- plans -------------------------------------------------------------------------------------
#: Preference among layouts: without offload first (offload moves weights over PCIe every token),
#: then quality (fp16 > INT8 > INT4).
PREFERENCE: tuple[tuple[int | None, bool], ...] = (
    (None, False), (8, False), (4, False), (None, True), (8, True), (4, True))


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
            "model": self.model.name, "parameters": self.model.n_params, "gpus": asdict(self.gpus),
            "fits": self.fits, "tp": req.estimate.tp, "quantization": req.estimate.quantization,
            "offload_layers": req.estimate.offload_layers, "batch": req.estimate.batch, "seq": req.estimate.seq,
            "per_gpu": req.as_dict(),
            "recommended": None if self.recommended is None else self.recommended.as_dict(),
            "proposals": [p.as_dict() for p in self.proposals], "notes": list(self.notes),
        }

    def render(self) -> str:
        e, g = self.requested.estimate, GIB
        lines = [f"{self.model.name}: {self.model.n_params / 1e9:.1f}B parameters on {self.gpus} "
                 f"(TP={e.tp}, {e.quantization}{f', {e.offload_layers} layers offloaded' if e.offload_layers else ''}"
                 f", batch {e.batch}, seq {e.seq})",
                 f"  per GPU: {e.describe()} = {e.total_bytes / g:.2f} GiB of {self.gpus.memory_gib:g} GiB -> "
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
                             f"{pe.total_bytes / g:.2f} GiB per GPU"
                             + (f" (needs at least {p.min_gpus} GPUs)" if p.min_gpus else ""))
        else:
            lines.append("  nothing fits on these GPUs, even INT4 with every layer offloaded")
        return "\n".join(lines)


def _min_offload(spec: ModelSpec, tp: int, bits: int | None, cap: int, batch: int, seq: int | None) -> Estimate:
    """The smallest number of offloaded layers that fits (all of them if none does)."""
    lo, hi = 0, spec.num_layers
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate(spec, tp=tp, bits=bits, offload_layers=mid, batch=batch, seq=seq).total_bytes <= cap:
            hi = mid
        else:
            lo = mid + 1
    return estimate(spec, tp=tp, bits=bits, offload_layers=lo, batch=batch, seq=seq)


def plan(spec: ModelSpec, gpus: GPUs, *, quantize: int | None = None, offload: bool = False,
         offload_layers: int | None = None, batch: int = 1, seq: int | None = None) -> Plan:
    """Verdict for the requested layout (TP over all usable GPUs) and the layouts that fit."""
    cap = int(gpus.memory_gib * GIB)
    degrees = spec.tp_degrees(gpus.count)
    tp = degrees[-1]
    notes = []
    if tp != gpus.count:
        notes.append(f"{gpus.count} GPUs cannot split {spec.num_heads} heads evenly; TP={tp} uses {tp} of them")
    if offload_layers is not None:
        req = estimate(spec, tp=tp, bits=quantize, offload_layers=offload_layers, batch=batch, seq=seq)
    elif offload:
        req = _min_offload(spec, tp, quantize, cap, batch, seq)
    else:
        req = estimate(spec, tp=tp, bits=quantize, batch=batch, seq=seq)
    proposals = []
    for bits, off in PREFERENCE:
        est = _min_offload(spec, tp, bits, cap, batch, seq) if off else \
            estimate(spec, tp=tp, bits=bits, batch=batch, seq=seq)
        if est.total_bytes > cap or (off and est.offload_layers == 0):
            continue  # offloading is listed only where it is needed
        need = None if off else next(
            (t for t in degrees if estimate(spec, tp=t, bits=bits, batch=batch, seq=seq).total_bytes <= cap), None)
        proposals.append(Option(est, cap, min_gpus=need if need != tp else None))
    return Plan(spec, gpus, Option(req, cap), tuple(proposals), tuple(notes))
