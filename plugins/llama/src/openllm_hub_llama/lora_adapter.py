"""Reading PEFT LoRA adapters (``adapter_config.json`` + ``adapter_model.safetensors``/``.bin``)
into one normalised form, shared by the merger (:mod:`.lora_merge`) and the GGUF adapter
converter (:mod:`.lora_gguf`).

Every low-rank pair is normalised to ``delta = scale * B @ A`` with ``A`` of shape
``(r, in)`` and ``B`` of shape ``(out, r)``, ``out x in`` being the layout of the base weight
(HuggingFace ``nn.Linear``: ``(out_features, in_features)``; embeddings: ``(vocab, hidden)``):

* ``fan_in_fan_out=true`` says the pair was saved for a weight stored transposed: PEFT
  computes ``(B @ A).T``, so A is ``(r, out)`` and B is ``(in, r)``; normalised
  ``A' = B.T``, ``B' = A.T``.
* embedding LoRA (``lora_embedding_A`` ``(r, vocab)``, ``lora_embedding_B`` ``(hidden, r)``)
  is also applied transposed by PEFT; normalised the same way.
* ``scale`` is ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``.

Full tensors an adapter carries (``modules_to_save`` such as Chinese-LLaMA's extended
``embed_tokens`` / ``lm_head``, in the old key layout ``<module>.weight`` or PEFT's current
``<module>.modules_to_save.weight``, and embedding layers PEFT saves as
``<module>.base_layer.weight``) replace the base tensor, as PEFT does when it loads them.

Features this code does not implement are refused by name (DoRA, rank/alpha patterns,
LoRA biases, ...) rather than silently mis-merged. Only the tensors that are used are read.
torch is imported inside the functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.finite import check_finite
from openllm_hub.plugin import (
    ConversionError,
    CorruptFileError,
    NotFoundError,
    load_torch_checkpoint,
    read_json,
    read_safetensors_header,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: Files of a tokenizer an adapter may ship (Chinese-LLaMA/Alpaca adapters carry their extended one).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
_PREFIX = "base_model.model."
_PEFT_PARTS = {"base_layer", "modules_to_save", "original_module"}

#: adapter_config.json fields that change what the adapter computes in ways the merger does not
#: reproduce; a truthy value is refused with this explanation.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "use_dora": "DoRA adapters (use_dora=true) rescale weight columns by a learned magnitude",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "lora_bias": "LoRA biases (lora_bias=true)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "trainable_token_indices": "trainable token indices (trainable_token_indices)",
    "use_qalora": "QA-LoRA (use_qalora=true)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) that only acts after its invocation tokens",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
}

_KEY = re.compile(
    r"^(?P<module>.+?)\.(?:"
    r"(?P<lora>lora_[AB])\.weight|"
    r"(?P<emb>lora_embedding_[AB])|"
    r"(?P<full>modules_to_save|base_layer)\.weight|"
    r"(?P<orig>original_module)\.weight|"
    r"(?P<plain>weight))$"
)


@dataclass(frozen=True)
class LoraPair:
    """One low-rank update of the base weight ``name`` (HF name, ``....weight``)."""

    name: str
    a: torch.Tensor  # (r, in), as stored (dtype of the file)
    b: torch.Tensor  # (out, r)
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.b.shape[0]), int(self.a.shape[1])

    def delta_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of ``scale * B @ A`` in float32."""
        import torch

        return (self.b[start:stop].to(torch.float32) @ self.a.to(torch.float32)).mul_(self.scale)


@dataclass
class PeftLoraAdapter:
    """A PEFT LoRA adapter, validated and normalised (see the module docstring)."""

    path: Path
    config: dict[str, Any]
    r: int
    alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    pairs: dict[str, LoraPair] = field(default_factory=dict)
    full: dict[str, torch.Tensor] = field(default_factory=dict)
    full_kind: dict[str, str] = field(default_factory=dict)  # name -> modules_to_save | base_layer | weight

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer.model").is_file()

    @property
    def vocab_size(self) -> int | None:
        """Rows of the full embedding this adapter carries (None: it keeps the base's)."""
        emb = self.full.get(EMBED)
        return int(emb.shape[0]) if emb is not None else None

    def target_names(self) -> list[str] | str | None:
        t = self.config.get("target_modules")
        if isinstance(t, str) or t is None:
            return t
        return [str(x) for x in t]

    def describe(self) -> str:
        kind = "rsLoRA" if self.use_rslora else "LoRA"
        return f"{kind} r={self.r} alpha={self.alpha:g} on {len(self.pairs)} weights" + (
            f", full {sorted(self.full)}" if self.full else "")


def _refuse(path: Path, what: str, fix: str) -> ConversionError:
    return ConversionError(what, where=path, fix=fix)


def read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` of the adapter folder ``path``, checked for what we support."""
    if not path.is_dir():
        if path.is_file() and path.name in (*WEIGHT_FILES, CONFIG_FILE):
            raise NotFoundError("expected the adapter's folder, got one of its files", where=path,
                                fix=f"pass the folder {path.parent}")
        raise NotFoundError("adapter folder not found", where=path)
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise NotFoundError(f"{CONFIG_FILE} is missing: not a PEFT adapter folder", where=path,
                            fix="a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors "
                                "(or adapter_model.bin), as PeftModel.save_pretrained writes them")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise CorruptFileError("adapter_config.json must hold an object", where=cfg_path,
                               fix="restore adapter_config.json as PeftModel.save_pretrained wrote it")
    ptype = str(cfg.get("peft_type", "")).upper()
    if ptype != "LORA":
        raise _refuse(cfg_path, f"adapter type {cfg.get('peft_type')!r} is not supported; only LoRA (peft_type LORA) "
                      "adapters can be merged or converted", "merge it with PEFT itself (merge_and_unload)")
    for key, what in UNSUPPORTED_FIELDS.items():
        if cfg.get(key):
            raise _refuse(cfg_path, f"{what} is not supported", "merge this adapter with PEFT itself "
                          "(PeftModel.from_pretrained(...).merge_and_unload()) and save the result")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise CorruptFileError(f"r must be a positive integer, not {r!r}", where=cfg_path,
                               fix="set r in adapter_config.json to the adapter's rank")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise CorruptFileError(f"lora_alpha must be a positive finite number, not {alpha!r}", where=cfg_path,
                               fix="set lora_alpha in adapter_config.json to the value the adapter was trained with")
    return cfg


class _TensorSource:
    """Lazy access to the adapter's tensors by name (safetensors read on demand; .bin memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        self.file: Path | None = None
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                self.file = folder / name
                break
        if self.file is None:
            raise NotFoundError("no adapter weights (adapter_model.safetensors or adapter_model.bin)", where=folder,
                                fix="copy the adapter's weight file into the folder")
        self._bin: dict[str, torch.Tensor] | None = None
        if self.file.suffix == ".safetensors":
            header = read_safetensors_header(self.file)
            self.shapes = {k: tuple(int(x) for x in v["shape"]) for k, v in header.items() if k != "__metadata__"}
        else:
            self._bin = load_torch_checkpoint(self.file, mmap=True)
            self.shapes = {k: tuple(v.shape) for k, v in self._bin.items()}

    def get(self, name: str) -> torch.Tensor:
        if self._bin is not None:
            check_finite(name, self._bin[name], self.file or "adapter")
            return self._bin[name]
        from safetensors import safe_open

        assert self.file is not None
        try:
            with safe_open(str(self.file), "pt") as fh:
                t: torch.Tensor = fh.get_tensor(name)
        except Exception as exc:  # safetensors.SafetensorError, OSError: the header was checked, the data was not
            raise CorruptFileError(f"cannot read tensor {name!r}: {exc}", where=self.file,
                                   fix="download or save the adapter again") from exc
        check_finite(name, t, self.file)
        return t


def read_adapter(path: str | Path) -> PeftLoraAdapter:
    """Read and normalise the PEFT LoRA adapter in folder ``path``.

    Checks here are about the adapter alone (config, key names, matching A/B pairs, rank);
    compatibility with a base is checked by the callers against the base's shapes.
    """
    folder = Path(path)
    cfg = read_adapter_config(folder)
    src = _TensorSource(folder)
    assert src.file is not None
    ad = PeftLoraAdapter(path=folder, config=cfg, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                         use_rslora=bool(cfg.get("use_rslora", False)),
                         fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)))
    halves: dict[str, dict[str, str]] = {}
    embedding: set[str] = set()
    full_keys: dict[str, tuple[str, str]] = {}  # weight name -> (kind, key)
    for key in src.shapes:
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        if "lora_magnitude_vector" in name:
            raise _refuse(src.file, "DoRA adapters (lora_magnitude_vector) are not supported",
                          "merge this adapter with PEFT itself (merge_and_unload)")
        if name.endswith(".bias"):
            raise _refuse(src.file, f"bias tensors ({key!r}) are not supported (LLaMA has no biases)",
                          "merge this adapter with PEFT itself")
        m = _KEY.match(name)
        if m is None or any(part.startswith("lora_") or part in _PEFT_PARTS for part in m.group("module").split(".")):
            raise _refuse(src.file, f"unexpected tensor {key!r} in a LoRA adapter",
                          "only lora_A/lora_B pairs and full module weights (modules_to_save) are understood")
        module = m.group("module")
        weight = f"{module}.weight"
        if m.group("lora"):
            halves.setdefault(weight, {})[m.group("lora")[-1]] = key
        elif m.group("emb"):
            halves.setdefault(weight, {})[m.group("emb")[-1]] = key
            embedding.add(weight)
        elif m.group("full") or m.group("plain"):
            kind = m.group("full") or "weight"
            # a trained modules_to_save copy wins over a saved base layer or the old-style plain key
            rank = {"modules_to_save": 2, "weight": 1, "base_layer": 0}
            if weight not in full_keys or rank[kind] > rank[full_keys[weight][0]]:
                full_keys[weight] = (kind, key)
        # original_module: PEFT's untouched copy of a modules_to_save module; never used in forward
    for weight, (kind, key) in full_keys.items():
        ad.full[weight] = src.get(key)
        ad.full_kind[weight] = kind
    for weight, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            missing = "B" if "A" in pair else "A"
            raise CorruptFileError(f"{weight.removesuffix('.weight')} has lora_{'AB'.replace(missing, '')} but no "
                                   f"lora_{missing}", where=src.file, fix="the adapter file is incomplete")
        a, b = src.get(pair["A"]), src.get(pair["B"])
        if a.dim() != 2 or b.dim() != 2:
            raise CorruptFileError(f"{weight}: LoRA tensors must be matrices (got {list(a.shape)}, {list(b.shape)})",
                                   where=src.file)
        if weight in embedding or ad.fan_in_fan_out:
            # PEFT applies these transposed: delta = (B @ A).T = A.T @ B.T
            a, b = b.t(), a.t()
        if a.shape[0] != b.shape[1]:
            raise CorruptFileError(f"{weight}: lora_A and lora_B ranks differ ({a.shape[0]} vs {b.shape[1]})",
                                   where=src.file)
        if a.shape[0] != ad.r:
            raise ConversionError(f"{weight}: tensors have rank {a.shape[0]} but adapter_config.json says r={ad.r}",
                                  where=folder, fix="per-module ranks need rank_pattern, which is not supported")
        if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
            raise ConversionError(f"{weight}: LoRA tensors must be floating point (got {a.dtype})", where=src.file)
        ad.pairs[weight] = LoraPair(weight, a.contiguous(), b.contiguous(), ad.scale)
    for weight, t in ad.full.items():
        if not t.dtype.is_floating_point:
            raise ConversionError(f"{weight}: full weight must be floating point (got {t.dtype})", where=src.file)
    return ad


def module_matches(module: str, targets: list[str] | str | None) -> bool:
    """Whether PEFT's ``target_modules`` selects ``module`` (``model.layers.0.self_attn.q_proj``)."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def check_targets(ad: PeftLoraAdapter, base_weights: Mapping[str, tuple[int, ...]]) -> None:
    """Every module ``target_modules`` names exists in the base, and every tensor of the adapter
    belongs to a weight of the base."""
    modules = [n.removesuffix(".weight") for n in base_weights]
    targets = ad.target_names()
    if isinstance(targets, list):
        for t in targets:
            if not any(module_matches(m, [t]) for m in modules):
                raise ConversionError(f"target module {t!r} of the adapter does not exist in the base model",
                                      where=ad.path / CONFIG_FILE,
                                      fix="use the base model this adapter was trained on")
    elif isinstance(targets, str) and targets != "all-linear" and not any(module_matches(m, targets)
                                                                         for m in modules):
        raise ConversionError(f"target_modules pattern {targets!r} matches no module of the base model",
                              where=ad.path / CONFIG_FILE, fix="use the base model this adapter was trained on")
    for name in (*ad.pairs, *ad.full):
        if name not in base_weights:
            raise ConversionError(f"the adapter changes {name.removesuffix('.weight')!r}, which the base model "
                                  "does not have", where=ad.path,
                                  fix="use the base model this adapter was trained on (layer count, tied head)")


def check_pair_shape(ad: PeftLoraAdapter, pair: LoraPair, shape: tuple[int, ...]) -> None:
    """The pair's ``out x in`` must equal the (current) base weight's shape."""
    if pair.shape != tuple(shape):
        out, inp = pair.shape
        raise ConversionError(
            f"adapter does not fit the base: {pair.name} gets a {out}x{inp} update but the base weight is "
            f"{'x'.join(map(str, shape))}" + (" (fan_in_fan_out=true: pairs are read transposed)"
                                              if ad.fan_in_fan_out else ""),
            where=ad.path, fix="use the base model this adapter was trained on")
