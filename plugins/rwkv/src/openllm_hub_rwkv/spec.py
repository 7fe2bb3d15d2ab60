"""Which RWKV version a flat ``.pth`` state dict holds, judged from tensor names and shapes.

The ``rwkv`` package infers the version while walking the keys in file order: ``ln_x`` means
5.x, ``gate.weight`` 5.1, a 2-D ``att.time_decay`` *seen after those* 5.2, ``time_maa`` 6,
and it reads the head count from the first ``time_decay`` (5.x) or ``time_faaaa`` (6) that
comes after the version is known. In the trainers' order ``gate``/``ln_x`` follow
``time_decay`` inside a block, so a one-layer RWKV-5.2 file is taken for 5.1 and has no head
count. RWKV-7 is a different class, chosen by an environment variable at import.

:func:`analyse` decides independently of key order, checks that every tensor the version
needs is present with consistent shapes, and :func:`package_reading` replays the package's
walk so the loader can hand it the keys in an order it reads correctly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from openllm_hub.plugin import CorruptFileError, UnknownFormatError
from openllm_hub_rwkv.checkpoint import TensorMeta

#: Versions this plugin runs, as the rwkv package numbers them.
VERSIONS = ("4", "5", "5.1", "5.2", "6", "7")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Arch:
    """The shape of an RWKV model."""

    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    n_att: int
    n_ffn: int
    n_head: int
    head_size: int
    parameters: int
    dtype: str
    state_tuned: bool = False

    @property
    def major(self) -> int:
        return int(float(self.version))

    def describe(self) -> str:
        return (f"RWKV-{self.version} {self.n_layer} layers x {self.n_embd}, vocab {self.vocab_size}"
                + (f", {self.n_head} heads of {self.head_size}" if self.major >= 5 else ""))


def _need(version: str, i: int, n_layer: int) -> list[str]:
    """Tensor names block ``i`` of ``version`` must have."""
    b, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
    names = [b + "ln1.weight", b + "ln1.bias", b + "ln2.weight", b + "ln2.bias"]
    if i == 0:
        names += [b + "ln0.weight", b + "ln0.bias"]
    if version == "4":
        names += [a + n for n in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r",
                                  "key.weight", "value.weight", "receptance.weight", "output.weight")]
    elif version in ("5", "5.1", "5.2"):
        first = "time_faaaa" if version == "5.2" else "time_first"
        names += [a + n for n in ("time_decay", first, "time_mix_k", "time_mix_v", "time_mix_r", "key.weight",
                                  "value.weight", "receptance.weight", "output.weight", "ln_x.weight", "ln_x.bias")]
        if version != "5":
            names += [a + "time_mix_g", a + "gate.weight"]
    elif version == "6":
        names += [a + n for n in ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r",
                                  "time_maa_g", "time_maa_w1", "time_maa_w2", "time_decay", "time_decay_w1",
                                  "time_decay_w2", "time_faaaa", "key.weight", "value.weight",
                                  "receptance.weight", "output.weight", "gate.weight", "ln_x.weight", "ln_x.bias")]
    else:
        names += [a + n for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2",
                                  "g1", "g2", "k_k", "k_a", "r_k", "key.weight", "value.weight",
                                  "receptance.weight", "output.weight", "ln_x.weight", "ln_x.bias")]
        if i > 0:
            names += [a + "v0", a + "v1", a + "v2"]
    if version == "7":
        names += [f + "x_k", f + "key.weight", f + "value.weight"]
    else:
        mix = "time_maa_" if version == "6" else "time_mix_"
        names += [f + mix + "k", f + mix + "r", f + "key.weight", f + "value.weight", f + "receptance.weight"]
    return names


def _version_from_names(names: Sequence[str], shapes: Mapping[str, TensorMeta], where: Path | str) -> str:
    has = set(names)
    if any(".s_emb" in n for n in names):
        raise UnknownFormatError("this is a DeepEmbed RWKV-7 checkpoint (ffn.s_emb), which this plugin does not run",
                                 where=where, fix="use a standard RWKV-7 checkpoint")
    if "blocks.0.att.r_k" in has or any(n.endswith(".att.x_r") for n in names):
        return "7"
    if any(".time_maa" in n for n in names):
        return "6"
    if any(".att.ln_x." in n for n in names):
        if not any(n.endswith(".att.gate.weight") for n in names):
            return "5"
        decay = shapes.get("blocks.0.att.time_decay")
        if decay is not None and len(decay.shape) > 1 and decay.shape[1] > 1:
            return "5.2"
        return "5.1"
    if any(n.endswith(".att.time_mix_k") for n in names) and any(n.endswith(".att.time_decay") for n in names):
        return "4"
    raise UnknownFormatError(
        "unknown RWKV layout: the tensor names match none of RWKV-4, 5.x, 6 or 7",
        where=where,
        fix="this plugin runs ChatRWKV-style .pth checkpoints of RWKV-4 to RWKV-7 (BlinkDL's RWKV-LM layout)",
    )


def looks_like_rwkv(names: Sequence[str]) -> bool:
    """Cheap test: the names of a flat RWKV state dict (embedding, blocks, output head)."""
    has = set(names)
    return "emb.weight" in has and "head.weight" in has and any(n.startswith("blocks.0.") for n in names)


def analyse(tensors: Mapping[str, TensorMeta], *, where: Path | str = "checkpoint",
            extras: Mapping[str, object] | None = None) -> Arch:
    """Version and dimensions of an RWKV state dict; raises a clear error for anything else."""
    names = list(tensors)
    if extras and "_strategy" in extras:
        raise UnknownFormatError(
            f"this file was pre-converted by rwkv's convert_model for strategy {extras['_strategy']!r}",
            where=where, fix="load the original .pth checkpoint; the plugin converts for the strategy itself")
    if not looks_like_rwkv(names):
        has = set(names)
        missing = [label for label, ok in (("emb.weight", "emb.weight" in has), ("head.weight", "head.weight" in has),
                                           ("blocks.0.*", any(n.startswith("blocks.0.") for n in names))) if not ok]
        raise UnknownFormatError(
            "not an RWKV checkpoint: " + (f"no {', '.join(missing)}" if missing else "unexpected layout"),
            where=where, fix="pass a ChatRWKV-style .pth file (emb.weight, blocks.N.*, ln_out, head.weight)")
    version = _version_from_names(names, tensors, where)
    layers = sorted({int(m.group(1)) for n in names if (m := _BLOCK.match(n))})
    n_layer = layers[-1] + 1
    if layers != list(range(n_layer)):
        gap = sorted(set(range(n_layer)) - set(layers))
        raise CorruptFileError(f"RWKV-{version} checkpoint has no tensors for block(s) {gap[:8]}", where=where,
                               fix="the file is incomplete; download it again")
    needed = ["emb.weight", "ln_out.weight", "ln_out.bias", "head.weight"]
    for i in range(n_layer):
        needed += _need(version, i, n_layer)
    missing = [n for n in needed if n not in tensors]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise CorruptFileError(
            f"RWKV-{version} checkpoint is missing {len(missing)} tensor(s): {', '.join(missing[:6])}{more}",
            where=where, fix="the file is incomplete or not a full RWKV checkpoint; download it again")
    vocab, c = _dims(tensors["emb.weight"], 2, "emb.weight", where)
    head = tensors["head.weight"].shape
    if head != (vocab, c):
        raise CorruptFileError(f"head.weight has shape {head}, expected {(vocab, c)} from emb.weight", where=where)
    n_att = tensors["blocks.0.att.key.weight"].shape[0]
    n_ffn = tensors["blocks.0.ffn.key.weight"].shape[0]
    if version == "4":
        n_head, head_size = 1, n_att
    elif version in ("5", "5.1"):
        n_head = tensors["blocks.0.att.time_decay"].shape[0]
        head_size = n_att // n_head
    elif version == "5.2":
        n_head, head_size = tensors["blocks.0.att.time_decay"].shape[:2]
    elif version == "6":
        n_head, head_size = tensors["blocks.0.att.time_faaaa"].shape[:2]
    else:
        rk = tensors["blocks.0.att.r_k"].shape
        if len(rk) != 2:
            raise CorruptFileError(f"blocks.0.att.r_k has shape {rk}, expected (heads, head_size)", where=where)
        n_head, head_size = rk
    if n_head * head_size != n_att:
        raise CorruptFileError(f"{n_head} heads of {head_size} do not make the attention width {n_att}",
                               where=where, fix="the checkpoint is inconsistent; download it again")
    check_shapes(tensors, version, n_layer, c, n_att, n_ffn, where)
    dtypes = {t.dtype for k, t in tensors.items() if k.endswith(".weight") and len(t.shape) == 2}
    return Arch(version=version, n_layer=n_layer, n_embd=c, vocab_size=vocab, n_att=n_att, n_ffn=n_ffn,
                n_head=n_head, head_size=head_size, parameters=sum(t.numel for t in tensors.values()),
                dtype="/".join(sorted(dtypes)) or "unknown",
                state_tuned=any(n.endswith(".att.time_state") for n in names))


def check_shapes(tensors: Mapping[str, TensorMeta], version: str, n_layer: int, c: int, n_att: int, n_ffn: int,
                 where: Path | str) -> None:
    """Every tensor's shape, not only the few the dimensions are read from: the matrices and
    norms of each block against the model width ``c``, attention width ``n_att`` and FFN width
    ``n_ffn``; the mixing vectors hold ``c`` values; and every other tensor of a block has the
    shape the same tensor has in the other blocks (a wrongly shaped tensor anywhere is refused
    here, not as a shape error deep inside the ``rwkv`` package)."""
    fix = "the checkpoint is inconsistent; download it again"
    want: dict[str, tuple[int, ...]] = {"ln_out.weight": (c,), "ln_out.bias": (c,)}
    for i in range(n_layer):
        b, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        want |= {b + n: (c,) for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "ln0.weight", "ln0.bias")}
        want |= {a + "key.weight": (n_att, c), a + "value.weight": (n_att, c), a + "receptance.weight": (n_att, c),
                 a + "output.weight": (c, n_att), a + "gate.weight": (n_att, c), a + "ln_x.weight": (n_att,),
                 a + "ln_x.bias": (n_att,), f + "key.weight": (n_ffn, c), f + "value.weight": (c, n_ffn),
                 f + "receptance.weight": (c, c)}
    for name, meta in tensors.items():
        shape = want.get(name)
        if shape is not None and meta.shape != shape:
            raise CorruptFileError(f"{name} has shape {meta.shape}, expected {shape}", where=where, fix=fix)
        leaf = name.rsplit(".", 1)[-1]
        is_mix = (leaf.startswith(("time_mix_", "time_maa_")) and leaf not in ("time_maa_w1", "time_maa_w2")) or (
            version == "7" and leaf in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        if is_mix and name.startswith("blocks.") and meta.numel != c:
            raise CorruptFileError(f"{name} has shape {meta.shape}, expected {c} values (the model width)",
                                   where=where, fix=fix)
        if any(d <= 0 for d in meta.shape) and name.startswith("blocks."):
            raise CorruptFileError(f"{name} has an empty shape {meta.shape}", where=where, fix=fix)
    reference: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, meta in tensors.items():
        m = _BLOCK.match(name)
        if m is None:
            continue
        suffix = name[m.end():]
        first = reference.setdefault(suffix, (name, meta.shape))
        if meta.shape != first[1]:
            raise CorruptFileError(f"{name} has shape {meta.shape}, but {first[0]} has {first[1]}: blocks must "
                                   "agree", where=where, fix=fix)


def _dims(meta: TensorMeta, rank: int, name: str, where: Path | str) -> tuple[int, int]:
    if len(meta.shape) != rank:
        raise CorruptFileError(f"{name} has shape {meta.shape}, expected {rank} dimensions", where=where)
    return meta.shape[0], meta.shape[1]


def package_reading(names: Sequence[str], shapes: Mapping[str, TensorMeta]) -> tuple[float, int | None]:
    """Replay rwkv.model.RWKV's version walk over ``names`` in order: (version, head count or None)."""
    version: float = 4
    n_head: int | None = None
    for x in names:
        if "ln_x" in x:
            version = max(5, version)
        if "gate.weight" in x:
            version = max(5.1, version)
        if int(version) == 5 and "att.time_decay" in x:
            shape = shapes[x].shape
            n_head = shape[0]
            if len(shape) > 1 and shape[1] > 1:
                version = max(5.2, version)
        if "time_maa" in x:
            version = max(6, version)
        if int(version) == 6 and "time_faaaa" in x:
            n_head = shapes[x].shape[0]
    return version, n_head


def package_order(names: Sequence[str]) -> list[str]:
    """``names`` reordered so the package's walk sees the version markers (``ln_x``, ``gate``,
    ``time_maa``) before any ``time_decay``/``time_faaaa``; otherwise the order is kept."""
    markers = [n for n in names if "ln_x" in n or "gate.weight" in n or "time_maa" in n]
    marked = set(markers)
    return markers + [n for n in names if n not in marked]


def package_reads_correctly(arch: Arch, names: Sequence[str], shapes: Mapping[str, TensorMeta]) -> bool:
    """Whether rwkv.model.RWKV, walking ``names`` in this order, finds ``arch``'s version and heads."""
    if arch.version == "7":
        return True  # RWKV_x070 reads the heads from blocks.0.att.r_k directly
    version, n_head = package_reading(names, shapes)
    if f"{version:g}" != arch.version:
        return False
    return arch.major == 4 or n_head == arch.n_head


def context_from_name(path: Path) -> int | None:
    """The training context length that BlinkDL's file names carry (``...-ctx4096.pth``)."""
    m = re.search(r"ctx(\d{3,6})", path.name)
    return int(m.group(1)) if m else None
