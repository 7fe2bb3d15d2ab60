"""``merge-lora`` for LLaMA: PEFT LoRA adapters merged into a HuggingFace or Meta base,
written as a HuggingFace folder (``hf``) or Meta ``consolidated.NN.pth`` shards (``pth``).

The seed's Chinese-LLaMA-Alpaca workflow (LLaMA + Chinese-LLaMA-Plus-LoRA +
Chinese-Alpaca-Plus-LoRA) is the model case:

* adapters apply in the order given; each one's low-rank deltas are added, and the full
  tensors it carries (``modules_to_save``: Chinese-LLaMA's extended ``embed_tokens`` /
  ``lm_head``) replace the weight as it stands at that point. A vocabulary grows (32000 ->
  49953 -> 49954) only from the adapter's own full weights — no row is invented — and the
  adapter's tokenizer must have exactly its embedding's rows. The output's tokenizer is the
  last adapter's that ships one (else the base's).
* everything is checked before the first byte is written: adapter types and features
  (:mod:`.lora_adapter`), every target module present in the base, every update's shape
  against the base weight as it stands after earlier adapters, vocabulary sizes and
  tokenizer lengths.

Arithmetic and dtype: each output tensor is the base tensor (or the replacing full weight)
upcast to float32 plus ``sum(scale * B @ A)`` computed in float32, rounded once to the
output dtype. The output dtype of every tensor is the dtype the base checkpoint stores it
in (a float16 base gives a float16 merge; a full weight from an adapter is cast to it), so
the merge never changes the model's size or precision class.

Memory: the base is read tensor by tensor (safetensors in row chunks of ~32 MB, Meta
shards memory-mapped) and written straight into the output shard, so the peak is about the
adapters plus one tensor, well under one base shard. ``pth`` output goes through a
temporary HuggingFace folder and the Meta converter of :mod:`.convert_meta` (the rotary
permutation lives there), which holds one output ``consolidated.NN.pth`` in memory while
writing it, as any torch.save of that layout does.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.finite import check_finite
from openllm_hub.engines.hf_folder import SafetensorsWriter, shard_file_name, write_index
from openllm_hub.plugin import (
    ConversionError,
    ConvertRequest,
    CorruptFileError,
    InvalidParameterError,
    MergeRequest,
    NotFoundError,
    Progress,
    scratch_dir,
    write_json,
)
from openllm_hub_llama.checkpoint import (
    HFCheckpoint,
    LlamaHParams,
    MetaCheckpoint,
    TensorName,
    dtype_name,
    permute_meta_to_hf,
    row_chunks,
    torch_dtype_of,
)
from openllm_hub_llama.lora_adapter import (
    EMBED,
    LM_HEAD,
    TOKENIZER_FILES,
    LoraPair,
    PeftLoraAdapter,
    check_pair_shape,
    check_targets,
    read_adapter,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

OUTPUT_TYPES = ("hf", "pth")
#: Meta's model-parallel shard count by hidden size (7B, 13B, 33B, 65B/70B); others get one.
META_SHARDS_BY_DIM = {4096: 1, 5120: 2, 6656: 4, 8192: 8}
#: Largest output safetensors shard when the base is a Meta checkpoint (bytes).
MAX_SHARD_BYTES = 5 * 1024**3


# ---- the base checkpoint, seen in HuggingFace layout ----------------------------------------------
class _Base:
    """A HuggingFace or Meta base, read tensor by tensor under HuggingFace names and layout."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.hf: HFCheckpoint | None = None
        self.meta: MetaCheckpoint | None = None
        self.meta_shards = 0
        if fmt == "hf":
            self.hf = HFCheckpoint(path)
            ck_tensors = self.hf.tensors
            self.hparams = self.hf.hparams
            self.dtypes = {t.hf: torch_dtype_of(self.hf.infos[t.hf].dtype) for t in ck_tensors}
        elif fmt == "meta":
            self.meta = MetaCheckpoint(path)
            self.meta_shards = len(self.meta.shard_files)
            ck_tensors = self.meta.tensors
            self.hparams = self.meta.hparams
            self.dtypes = {t.hf: self.meta.shards[0][t.meta].dtype for t in ck_tensors}
        else:
            raise InvalidParameterError(f"cannot merge into {fmt} checkpoints", where=path,
                                        fix="use a HuggingFace folder or a Meta checkpoint as the base")
        self.tensors: list[TensorName] = list(ck_tensors)
        self.by_name = {t.hf: t for t in self.tensors}
        self.shapes: dict[str, tuple[int, ...]] = {t.hf: t.shape for t in self.tensors}
        if not (path / "tokenizer.model").is_file():
            raise NotFoundError("the base has no tokenizer.model", where=path,
                                fix="copy the model's sentencepiece tokenizer.model into the folder")

    def chunks(self, name: str) -> list[tuple[int, int]]:
        shape = self.shapes[name]
        if self.hf is None or len(shape) < 2:
            return [(0, shape[0])]
        return list(row_chunks(shape, 4))

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        if self.hf is not None:
            return self.hf.read(name, start, stop)
        assert self.meta is not None
        t = self.by_name[name]
        data = self.meta.merged(t)
        if t.qk_heads is not None:
            data = permute_meta_to_hf(data, t.qk_heads)
        return data[start:stop]

    def file_groups(self) -> list[list[str]] | None:
        """The base's own grouping of tensors into files (HF bases), to mirror in the output."""
        if self.hf is None:
            return None
        groups: dict[Path, list[str]] = {}
        for t in self.tensors:
            groups.setdefault(self.hf.infos[t.hf].file, []).append(t.hf)
        return [groups[f] for f in self.hf.files if f in groups]

    def release(self) -> None:
        if self.hf is not None:
            self.hf.release()
        self.meta = None


# ---- the plan: what every output tensor is made of ------------------------------------------------
@dataclass
class _TensorPlan:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    replacement: torch.Tensor | None = None  # a full weight from an adapter
    deltas: list[LoraPair] = field(default_factory=list)


@dataclass
class MergePlan:
    """Everything the merge will write, decided and checked before anything is written."""

    hparams: LlamaHParams
    tensors: list[_TensorPlan]
    tokenizer_dir: Path
    vocab_size: int
    adapters: list[PeftLoraAdapter]

    def describe(self) -> str:
        touched = sum(1 for t in self.tensors if t.deltas or t.replacement is not None)
        return (f"{len(self.adapters)} adapter(s) touch {touched} of {len(self.tensors)} tensors; vocabulary "
                f"{self.vocab_size}; tokenizer from {self.tokenizer_dir}")


def tokenizer_length_ok(folder: Path, rows: int) -> str | None:
    """None when ``folder``'s tokenizer (tokenizer.model + added tokens) has exactly ``rows``
    tokens, else the reason it does not."""
    from openllm_hub_llama.tokenizer import load_vocab

    try:
        load_vocab(folder, rows)
    except (CorruptFileError, NotFoundError) as exc:
        return exc.what
    return None


def plan_merge(base: _Base, adapters: Sequence[PeftLoraAdapter]) -> MergePlan:
    """Check the adapters against the base (in order) and decide every output tensor."""
    hp = base.hparams
    h = hp.hidden_size
    shapes = dict(base.shapes)
    plans = {t.hf: _TensorPlan(t.hf, t.shape, base.dtypes[t.hf]) for t in base.tensors}
    vocab = hp.vocab_size
    tokenizer_dir = base.path
    for ad in adapters:
        touches_vocab = {EMBED, LM_HEAD} & ({*ad.full} | {*ad.pairs})
        if hp.tie_word_embeddings and touches_vocab:
            raise ConversionError("the base ties lm_head to embed_tokens; adapters that change either are not "
                                  "supported for tied bases", where=ad.path,
                                  fix="merge with PEFT itself, or use an untied base")
        check_targets(ad, base.shapes)
        for name, t in ad.full.items():
            if name in (EMBED, LM_HEAD):
                if t.dim() != 2 or t.shape[1] != h:
                    raise ConversionError(f"the adapter's full {name} has shape {list(t.shape)}; the base's hidden "
                                          f"size is {h}", where=ad.path, fix="use the base model this adapter was "
                                                                             "trained on")
            elif tuple(t.shape) != shapes[name]:
                raise ConversionError(f"the adapter's full {name} has shape {list(t.shape)}, the base's is "
                                      f"{list(shapes[name])}", where=ad.path,
                                      fix="use the base model this adapter was trained on")
        emb_rows = int(ad.full[EMBED].shape[0]) if EMBED in ad.full else vocab
        head_rows = int(ad.full[LM_HEAD].shape[0]) if LM_HEAD in ad.full else vocab
        if not hp.tie_word_embeddings and emb_rows != head_rows:
            missing = "lm_head" if LM_HEAD not in ad.full else "embed_tokens" if EMBED not in ad.full else None
            raise ConversionError(
                f"the adapter's vocabulary is inconsistent: embed_tokens would have {emb_rows} rows and lm_head "
                f"{head_rows}" + (f"; the adapter carries no full {missing} weight to supply the other rows, and "
                                  "the merger does not invent rows" if missing else ""),
                where=ad.path, fix="use an adapter that carries both embed_tokens and lm_head (modules_to_save)")
        if emb_rows != vocab and not ad.has_tokenizer:
            raise ConversionError(
                f"vocabulary mismatch: the adapter's embedding has {emb_rows} rows, the model it applies to has "
                f"{vocab}, and the adapter folder has no tokenizer.model for the new vocabulary", where=ad.path,
                fix="copy the tokenizer the adapter was trained with (tokenizer.model, added_tokens.json, ...) "
                    "into the adapter folder")
        if ad.has_tokenizer:
            problem = tokenizer_length_ok(ad.path, emb_rows)
            if problem:
                raise ConversionError(f"the adapter's tokenizer does not match its {emb_rows}-row embedding: "
                                      f"{problem}", where=ad.path,
                                      fix="use the tokenizer files the adapter was trained with")
            tokenizer_dir = ad.path
        vocab = emb_rows
        for name in (EMBED, LM_HEAD):
            if name in shapes:
                shapes[name] = (vocab, h)
        for name, t in ad.full.items():
            plans[name].replacement = t
            plans[name].deltas = []
            plans[name].shape = shapes[name]
        for name, pair in ad.pairs.items():
            check_pair_shape(ad, pair, shapes[name])
            plans[name].deltas.append(pair)
    if tokenizer_dir == base.path:
        problem = tokenizer_length_ok(base.path, vocab)
        if problem:
            raise ConversionError(f"the base's tokenizer does not match its {vocab}-row embedding: {problem}",
                                  where=base.path, fix="use the tokenizer files that belong to the base")
    for p in plans.values():
        p.shape = shapes[p.name]
    return MergePlan(replace(hp, vocab_size=vocab), [plans[t.hf] for t in base.tensors], tokenizer_dir, vocab,
                     list(adapters))


# ---- computing and writing -----------------------------------------------------------------------
def _merged(base: _Base, plan: _TensorPlan) -> torch.Tensor:
    """The output tensor: (replacement or base) + sum of deltas, in float32, rounded once."""
    import torch

    out = torch.empty(plan.shape, dtype=plan.dtype)
    if plan.replacement is None and not plan.deltas:
        for start, stop in base.chunks(plan.name):
            out[start:stop] = base.read(plan.name, start, stop)
        check_finite(plan.name, out, base.path)
        return out
    chunks = base.chunks(plan.name) if plan.replacement is None else list(row_chunks(plan.shape, 4))
    for start, stop in chunks:
        src = plan.replacement[start:stop] if plan.replacement is not None else base.read(plan.name, start, stop)
        acc = src.to(torch.float32, copy=True)
        for pair in plan.deltas:
            acc.add_(pair.delta_rows(start, stop))
        out[start:stop] = acc
        del acc
    check_finite(plan.name, out, base.path)  # a NaN/Inf in the base or the adapter, or an fp16 overflow
    return out


def _shard_groups(base: _Base, plan: MergePlan) -> list[list[_TensorPlan]]:
    by_name = {t.name: t for t in plan.tensors}
    mirrored = base.file_groups()
    if mirrored is not None:
        return [[by_name[n] for n in group] for group in mirrored]
    groups: list[list[_TensorPlan]] = [[]]
    size = 0
    for t in plan.tensors:
        n = t.dtype.itemsize
        for d in t.shape:
            n *= d
        if groups[-1] and size + n > MAX_SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    return groups


def write_hf(base: _Base, plan: MergePlan, dst: Path, *, progress: bool = False) -> None:
    """Write the merged model as a HuggingFace folder into the existing, empty ``dst``."""
    groups = _shard_groups(base, plan)
    weight_map: dict[str, str] = {}
    total_size = 0
    with Progress(total=len(plan.tensors), desc="merge-lora", unit="tensor", enabled=progress) as bar:
        for i, group in enumerate(groups):
            fname = shard_file_name("safetensors", i, len(groups))
            entries = []
            for t in group:
                dname = dtype_name(t.dtype)
                assert dname is not None
                entries.append((t.name, dname, t.shape))
            writer = SafetensorsWriter(dst / fname, entries)
            try:
                for t in group:
                    data = _merged(base, t)
                    writer.write(t.name, data)
                    total_size += data.numel() * data.element_size()
                    weight_map[t.name] = fname
                    del data
                    bar.update()
            finally:
                writer.close()
    if len(groups) > 1:
        write_index(dst, "safetensors", weight_map, total_size)
    _write_config(base, plan, dst)
    _write_tokenizer(base, plan, dst)


def _dtype_str(plan: MergePlan) -> str:
    counts: dict[str, int] = {}
    for t in plan.tensors:
        key = str(t.dtype).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + 1
    return max(counts, key=lambda k: counts[k])


def _write_config(base: _Base, plan: MergePlan, dst: Path) -> None:
    if base.hf is not None:
        cfg: dict[str, Any] = dict(base.hf.config)
        cfg["vocab_size"] = plan.vocab_size
        write_json(dst / "config.json", cfg)
        gen = base.path / "generation_config.json"
        if gen.is_file():
            shutil.copyfile(gen, dst / "generation_config.json")
        return
    hp = plan.hparams
    write_json(dst / "config.json", hp.hf_config(_dtype_str(plan)))
    write_json(dst / "generation_config.json", {"_from_model_config": True, "bos_token_id": hp.bos_token_id,
                                                "eos_token_id": hp.eos_token_id})


def _write_tokenizer(base: _Base, plan: MergePlan, dst: Path) -> None:
    src = plan.tokenizer_dir
    if src == base.path and base.hf is None:
        from openllm_hub_llama.tokenizer import write_hf_tokenizer_files

        write_hf_tokenizer_files(dst, base.path / "tokenizer.model")
        return
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def meta_shard_count(base: _Base) -> int:
    """Model-parallel shards of the pth output: the base's own count for a Meta base, else
    Meta's count for the model size (7B: 1, 13B: 2, 33B: 4, 65B/70B: 8)."""
    if base.meta_shards:
        return base.meta_shards
    return META_SHARDS_BY_DIM.get(base.hparams.hidden_size, 1)


def write_pth(base: _Base, plan: MergePlan, dst: Path, *, progress: bool = False) -> None:
    """Write the merged model in Meta's layout into the existing, empty ``dst``: a temporary
    HuggingFace folder next to it, then :func:`convert_meta.convert_hf_to_meta`."""
    from openllm_hub_llama.convert_meta import convert_hf_to_meta

    shards = meta_shard_count(base)
    with scratch_dir(dst) as hf:
        write_hf(base, plan, hf, progress=progress)
        base.release()
        convert_hf_to_meta(ConvertRequest(src=hf, dst=dst, source_format="hf", outtype="auto", progress=progress,
                                          options={"shards": shards}))
        # Meta's layout has only tokenizer.model; keep the added tokens (e.g. Chinese-Alpaca's [PAD])
        # and the tokenizer settings next to it so the vocabulary still accounts for every row.
        for name in ("added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (hf / name).is_file():
                shutil.copyfile(hf / name, dst / name)


# ---- entry points ----------------------------------------------------------------------------------
def prepare_merge(base_path: str | Path, base_format: str, adapters: Sequence[str | Path]) -> tuple[_Base, MergePlan]:
    """Open the base, read the adapters and check everything; nothing is written."""
    if not adapters:
        raise InvalidParameterError("no adapters given", where="merge-lora")
    base = _Base(Path(base_path), base_format)
    loaded = [read_adapter(a) for a in adapters]
    return base, plan_merge(base, loaded)


def merge(base_path: str | Path, base_format: str, adapters: Sequence[str | Path], dst: Path, *,
          output_type: str = "hf", progress: bool = False) -> MergePlan:
    """Merge ``adapters`` (in order) into the base and write ``output_type`` into the existing,
    empty folder ``dst`` (the core renames it into place)."""
    if output_type not in OUTPUT_TYPES:
        raise InvalidParameterError(f"unknown output type {output_type!r}", where="merge-lora",
                                    fix=f"use one of: {', '.join(OUTPUT_TYPES)}")
    base, plan = prepare_merge(base_path, base_format, adapters)
    if output_type == "hf":
        write_hf(base, plan, dst, progress=progress)
    else:
        write_pth(base, plan, dst, progress=progress)
    base.release()
    return plan


def run_merge(req: MergeRequest) -> None:
    """The family's :class:`~openllm_hub.core.lora.LoraMerger` entry point."""
    merge(req.base, req.base_format, req.adapters, req.dst, output_type=req.output_type, progress=req.progress)
