"""SwissArmyTransformer checkpoints of GLM-130B: read, validate, slice per rank, write, repartition.

Layout (as GLM-130B's release and ``tools/convert_tp.py`` write it)::

    CKPT/latest                                   # text: the iteration folder's name, e.g. 49300
    CKPT/49300/mp_rank_00_model_states.pt         # torch.save({"module": state_dict}), one per TP rank
    CKPT/49300/mp_rank_01_model_states.pt
    CKPT/glm130b_config.json                      # this plugin's config (see spec.py)

Everything a rank needs is checked before any rank computes: the shard set (no missing or
extra rank), every key and shape against the config and the declared TP degree, the same
quantization in every shard, and that the requested world size divides the model. Shards are
read with ``torch.load(weights_only=True, mmap=True)``, so checking reads no tensor data and a
rank reads only the slices it keeps.

Repartitioning quantized checkpoints is refused: row-parallel shards are scaled per shard, so
they cannot be concatenated, and dequantizing would compound rounding errors; repartition the
floating-point checkpoint and quantize while doing so (``--quantize``), as GLM-130B's tool does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.plugin import (
    ConversionError,
    CorruptFileError,
    InvalidParameterError,
    NotFoundError,
    atomic_output,
    check_destination,
    load_torch_checkpoint,
    track,
    write_json,
)
from openllm_hub_glm130b.partition import OPTIONAL, expected_local, rule_of, take
from openllm_hub_glm130b.spec import CONFIG_NAME, GLMConfig, read_config

if TYPE_CHECKING:  # pragma: no cover
    import torch

SHARD_RE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def shard_name(rank: int) -> str:
    return f"mp_rank_{rank:02d}_model_states.pt"


#: The longest ``latest`` file read (SAT writes an iteration number, e.g. ``49300``).
LATEST_LIMIT = 256


def read_latest(root: Path) -> str:
    """The iteration folder's name that ``root/latest`` holds, checked: a text file of at most
    :data:`LATEST_LIMIT` bytes naming one folder inside ``root`` (binary, empty, over-long or
    path-like contents are refused with the fix)."""
    latest = root / "latest"
    fix = "write the iteration folder's name into it, e.g. `echo 49300 > latest`"
    try:
        is_file = latest.is_file()
        if not is_file:
            if latest.is_dir():
                raise CorruptFileError("'latest' is a folder, not the file naming the iteration", where=latest,
                                       fix=fix)
            raise NotFoundError("no 'latest' file: not a SwissArmyTransformer checkpoint folder", where=root,
                                fix="point at the folder that holds 'latest' and the iteration folder")
        with latest.open("rb") as fh:
            raw = fh.read(LATEST_LIMIT + 1)
    except OSError as exc:
        raise CorruptFileError(f"cannot read 'latest': {exc.strerror or exc}", where=latest, fix=fix) from None
    if len(raw) > LATEST_LIMIT:
        raise CorruptFileError(f"'latest' is longer than {LATEST_LIMIT} bytes, not an iteration name", where=latest,
                               fix=fix)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CorruptFileError("'latest' holds binary data, not an iteration name", where=latest, fix=fix) from None
    if (not name or name in (".", "..") or any(c in name for c in "/\\\0\n\r")
            or len(name.encode()) > 255 or not name.isprintable()):
        raise CorruptFileError(f"'latest' names {name[:80]!r}, not an iteration folder", where=latest, fix=fix)
    return name


def find_iteration(root: Path) -> Path:
    """The iteration folder named by ``root/latest`` (see :func:`read_latest`)."""
    name = read_latest(root)
    folder = root / name
    if not folder.is_dir():
        raise NotFoundError(f"'latest' names iteration {name!r} but that folder is missing", where=folder,
                            fix="copy the iteration folder too, or fix 'latest'")
    return folder


def list_shards(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise CorruptFileError(f"cannot list the iteration folder: {exc.strerror or exc}", where=folder) from None
    for p in entries:
        m = SHARD_RE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def describe_bits(bits: int | None) -> str:
    return "floating point" if bits is None else f"INT{bits}"


@dataclass
class SatCheckpoint:
    """An opened, validated SAT checkpoint (see the module docstring)."""

    root: Path
    config: GLMConfig
    iteration: Path
    files: list[Path]
    _states: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def tp(self) -> int:
        return len(self.files)

    @property
    def bits(self) -> int | None:
        return self.config.quantization_bit_width

    # ---- opening and checking ------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, check_tensors: bool = True) -> SatCheckpoint:
        root = Path(path)
        if not root.is_dir():
            raise NotFoundError("checkpoint folder not found", where=root)
        iteration = find_iteration(root)
        cfg = read_config(root)
        shards = list_shards(iteration)
        declared = cfg.model_parallel_size
        missing = [r for r in range(declared) if r not in shards]
        if missing:
            raise NotFoundError(
                f"missing shard(s) for rank {', '.join(map(str, missing))} of a TP={declared} checkpoint "
                f"(found {len(shards)} of {declared})",
                where=iteration / shard_name(missing[0]),
                fix="copy every mp_rank_NN_model_states.pt of the checkpoint, or fix model_parallel_size in "
                    f"{CONFIG_NAME}")
        extra = sorted(r for r in shards if r >= declared)
        if extra:
            raise CorruptFileError(
                f"found shard(s) for rank {', '.join(map(str, extra))} but {CONFIG_NAME} declares "
                f"model_parallel_size={declared}",
                where=shards[extra[0]], fix=f"set model_parallel_size to {max(shards) + 1} or remove the extra files")
        ck = cls(root, cfg, iteration, [shards[r] for r in range(declared)])
        if check_tensors:
            ck.check_tensors()
        return ck

    def state(self, rank: int) -> dict[str, Any]:
        """Shard ``rank``'s ``module`` dict, memory-mapped (cached)."""
        if rank not in self._states:
            path = self.files[rank]
            obj = load_torch_checkpoint(path, mmap=True)
            module = obj.get("module")
            if not isinstance(module, dict):
                raise CorruptFileError("the shard has no 'module' state dict", where=path,
                                       fix="SAT shards are torch.save({'module': state_dict})")
            self._states[rank] = module
        return self._states[rank]

    def shard_bits(self, rank: int) -> int | None:
        """The quantization a shard actually holds, judged from its qkv weight."""
        import torch

        st = self.state(rank)
        key = "transformer.layers.0.attention.query_key_value.weight"
        w = st.get(key)
        if w is None:
            raise CorruptFileError(f"the shard lacks {key}", where=self.files[rank])
        if w.dtype != torch.int8:
            return None
        if f"{key}_scale" not in st:
            raise CorruptFileError(f"{key} is int8 but {key}_scale is missing", where=self.files[rank])
        in_local = self.config.hidden_size
        return 8 if w.shape[1] == in_local else 4 if w.shape[1] * 2 == in_local else -1

    def check_tensors(self) -> None:
        """Keys, shapes, dtypes and quantization of every shard against the config."""
        import torch

        bits_seen = [self.shard_bits(r) for r in range(self.tp)]
        if len(set(bits_seen)) > 1:
            desc = ", ".join(f"rank {r}: {describe_bits(b) if b != -1 else 'unknown packing'}"
                             for r, b in enumerate(bits_seen))
            raise CorruptFileError(f"mismatched quantization between shards ({desc})", where=self.iteration,
                                   fix="re-create the shards from one source with one quantization")
        if bits_seen[0] != self.bits:
            raise CorruptFileError(
                f"the shards hold {describe_bits(bits_seen[0])} linear weights but {CONFIG_NAME} declares "
                f"quantization_bit_width={self.bits}", where=self.files[0],
                fix=f"set quantization_bit_width to {bits_seen[0]}" if bits_seen[0] != -1 else None)
        expected = expected_local(self.config, self.tp, self.bits)
        for rank in range(self.tp):
            st = self.state(rank)
            where = self.files[rank]
            missing = [k for k in expected if k not in st]
            if missing:
                raise CorruptFileError(f"the shard lacks {len(missing)} tensor(s), e.g. {missing[0]}", where=where,
                                       fix=f"check num_layers and the shards against {CONFIG_NAME}")
            unknown = [k for k in st if k not in expected and not any(k.endswith(o) for o in OPTIONAL)]
            if unknown:
                raise CorruptFileError(f"the shard has tensor(s) GLM-130B does not: {', '.join(unknown[:3])}",
                                       where=where, fix=f"check num_layers in {CONFIG_NAME}")
            for key in st:
                if key.endswith(OPTIONAL):
                    check_inv_freq(st[key], self.config, key, where)
            for key, (shape, kind) in expected.items():
                t = st[key]
                if not isinstance(t, torch.Tensor):
                    raise CorruptFileError(f"{key} is not a tensor", where=where)
                if tuple(t.shape) != shape:
                    hint = _tp_hint(tuple(t.shape), shape, self.tp)
                    raise CorruptFileError(
                        f"{key} has shape {tuple(t.shape)}, expected {shape} for TP={self.tp}{hint}",
                        where=where, fix=f"check model_parallel_size and the shapes in {CONFIG_NAME}")
                if (kind == "int8") != (t.dtype == torch.int8) or (kind == "float" and not t.is_floating_point()):
                    raise CorruptFileError(f"{key} has dtype {t.dtype}, expected {kind}", where=where)

    def check_world(self, world: int) -> None:
        """Refuse a world size this checkpoint cannot run on (before any rank starts)."""
        self.config.check_world(world, where=f"world size {world}")
        if self.bits is not None and world != self.tp:
            raise InvalidParameterError(
                f"this INT{self.bits} checkpoint has TP={self.tp} shards and cannot run on {world} rank(s): "
                "quantized shards are not repartitioned (row-parallel shards carry their own scales)",
                where=self.root,
                fix=f"run with {self.tp} rank(s), or repartition the floating-point checkpoint to TP={world} "
                    "with --quantize")

    # ---- slicing -------------------------------------------------------------------
    def local_state(self, rank: int, world: int) -> dict[str, torch.Tensor]:
        """The tensors rank ``rank`` of a ``world``-rank run keeps. When the degrees match these
        are the shard's memory-mapped tensors themselves (moving them to the compute device or
        dtype copies them once; a CPU run in the stored dtype reads them from the page cache);
        otherwise fresh tensors cut from the shards."""
        self.check_world(world)
        if world == self.tp:
            return dict(self.state(rank))
        out: dict[str, torch.Tensor] = {}
        for key in self.state(0):
            rule = rule_of(key)
            assert rule is not None
            sources = range(self.tp) if rule.kind != "replicated" else range(1)
            parts = [self.state(r)[key] for r in sources]
            out[key] = take(parts, rule, rank, world) if rule.kind != "replicated" else parts[0].clone()
        return out

    def shard_states(self, world: int, bits: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Every target rank's state for ``world`` ranks, one at a time (optionally quantized)."""
        from openllm_hub_glm130b.network.quant import quantize_state

        for rank in range(world):
            st = self.local_state(rank, world)
            yield quantize_state(st, bits) if bits is not None else st


def check_inv_freq(t: Any, cfg: GLMConfig, key: str, where: Path) -> None:
    """A stored rotary ``inv_freq`` buffer must be GLM-130B's (base 10000 over the head size; SAT
    keeps it in fp16, older saves may hold it unrounded); it is not used otherwise."""
    import torch

    from openllm_hub_glm130b.network.transformer import rotary_inv_freq

    want = rotary_inv_freq(cfg.head_dim)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(want.shape) or not t.is_floating_point():
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise CorruptFileError(f"{key} has shape {got}, expected {tuple(want.shape)} (head size {cfg.head_dim})",
                               where=where, fix=f"check hidden_size and num_attention_heads in {CONFIG_NAME}")
    if not torch.allclose(t.float(), want, rtol=1e-3, atol=0.0):
        raise CorruptFileError(f"{key} holds rotary frequencies other than GLM-130B's (base 10000 over the head "
                               f"size {cfg.head_dim})", where=where,
                               fix=f"check hidden_size and num_attention_heads in {CONFIG_NAME}, or remove the key")


def _tp_hint(actual: tuple[int, ...], expected: tuple[int, ...], tp: int) -> str:
    for a, e in zip(actual, expected):
        if a != e and a and e and (e * tp) % a == 0:
            return f" (it looks like a TP={e * tp // a} shard)"
    return ""


def write_sat(dst: Path, cfg: GLMConfig, states: Iterator[dict[str, torch.Tensor]] | list[dict[str, torch.Tensor]],
              *, iteration: str = "1", progress: bool = False, total: int | None = None) -> None:
    """Write a SAT checkpoint into the (existing, empty) folder ``dst``; ``cfg`` describes the shards."""
    import torch

    folder = dst / iteration
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for rank, state in enumerate(track(states, total=total, desc="shards", enabled=progress)):
        torch.save({"module": state}, folder / shard_name(rank))
        count += 1
    if count != cfg.model_parallel_size:
        raise ConversionError(f"wrote {count} shards, expected {cfg.model_parallel_size}", where=dst)
    (dst / "latest").write_text(iteration, encoding="utf-8")
    write_json(dst / CONFIG_NAME, cfg.to_json())


def repartition(src: str | Path, dst: str | Path, tp: int, *, bits: int | None = None, force: bool = False,
                progress: bool = False) -> Path:
    """Write ``src`` re-split for ``tp`` ranks to ``dst`` (optionally INT8/INT4-quantized)."""
    ck = SatCheckpoint.open(src)
    if ck.bits is not None:
        raise InvalidParameterError("this checkpoint is already quantized", where=ck.root,
                                    fix="repartition the floating-point checkpoint (with --quantize if wanted)")
    ck.check_world(tp)
    out = check_destination(dst, sources=[ck.root], force=force)
    with atomic_output(out, force=force, is_dir=True) as tmp:
        write_into(ck, tmp, tp, bits=bits, progress=progress)
    return out


def write_into(ck: SatCheckpoint, tmp: Path, tp: int, *, bits: int | None = None, progress: bool = False) -> None:
    """Write ``ck`` for ``tp`` ranks into the empty folder ``tmp`` (tokenizer file copied along)."""
    import shutil

    cfg = ck.config.with_(model_parallel_size=tp, quantization_bit_width=bits)
    tok = cfg.tokenizer
    if tok.path and not Path(tok.path).is_absolute() and (ck.root / tok.path).is_file():
        target = tmp / tok.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ck.root / tok.path, target)
    write_sat(tmp, cfg, ck.shard_states(tp, bits), iteration=ck.iteration.name, progress=progress, total=tp)
