"""RNN state snapshots: copies that later reads cannot disturb, and their safetensors files.

A snapshot is the package's state list (per layer: token-shift vectors and the WKV
matrices), the token ids read to reach it, and the logits after the last one, so a chat can
continue from it without reading anything again. ``forward`` replaces list entries and, with
CUDA kernels, writes into the tensors, so snapshots hold clones and hand out clones.

File layout (safetensors): per snapshot ``sJ.state.N`` tensors, ``sJ.ids`` (int64) and
``sJ.logits`` (float32), plus metadata naming the format, the model's fingerprint and
architecture, so loading a state into another model fails with a clear error instead of
producing nonsense. A file holds the latest states of one conversation (the state after the
last answer and the prompt state it extends), so that the restored model picks the same
starting state for the next turn as the model that saved it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.plugin import (
    CorruptFileError,
    InvalidParameterError,
    NotFoundError,
    atomic_output,
    check_destination,
    read_safetensors_header,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "openllm-hub-rwkv-state"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Snapshot:
    """The state after reading ``ids``, with the logits that predict the next token."""

    ids: tuple[int, ...]
    tensors: tuple[torch.Tensor, ...]
    logits: torch.Tensor  # float32, CPU, shape (vocab,)
    template: str | None = None

    @classmethod
    def take(cls, ids: tuple[int, ...], state: list[torch.Tensor], logits: torch.Tensor,
             template: str | None = None) -> Snapshot:
        return cls(ids, tuple(t.detach().clone() for t in state), logits.detach().float().cpu().clone(), template)

    def state(self) -> list[torch.Tensor]:
        """A fresh copy of the state list, safe to pass to ``forward``."""
        return [t.clone() for t in self.tensors]


def save_snapshots(snaps: list[Snapshot], path: str | Path, *, meta: dict[str, str], sources: list[Path],
                   force: bool = False) -> Path:
    """Write ``snaps`` as one safetensors file at ``path`` (atomically; never over a model file)."""
    import torch
    from safetensors.torch import save_file

    out = check_destination(path, sources=sources, force=force)
    tensors: dict[str, torch.Tensor] = {}
    for j, snap in enumerate(snaps):
        for i, t in enumerate(snap.tensors):
            tensors[f"s{j}.state.{i}"] = t.detach().cpu().contiguous()
        tensors[f"s{j}.ids"] = torch.tensor(snap.ids, dtype=torch.int64)
        tensors[f"s{j}.logits"] = snap.logits.float().cpu().contiguous()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_snapshots": str(len(snaps)),
                "n_state": str(len(snaps[0].tensors)), "template": snaps[-1].template or "", **meta}
    with atomic_output(out, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def load_snapshots(path: str | Path, *, meta: dict[str, str], like: list[torch.Tensor]) -> list[Snapshot]:
    """Read a state file written by :func:`save_snapshots` for a model described by ``meta``;
    tensors are moved to the devices and dtypes of ``like`` (the model's zero state)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise NotFoundError("state file not found", where=p)
    read_safetensors_header(p)  # a damaged header is reported with the tensor it concerns
    try:
        with safe_open(str(p), framework="pt") as fh:
            found: dict[str, Any] = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several exception types
        raise CorruptFileError(f"not a readable safetensors file: {exc}", where=p) from None
    if found.get("format") != FORMAT:
        raise CorruptFileError("not an RWKV state file written by openllm_hub", where=p,
                               fix="save states with model.save_state(path)")
    for key in ("rwkv_version", "n_layer", "n_embd", "vocab_size", "fingerprint"):
        if found.get(key) != meta.get(key):
            raise InvalidParameterError(
                f"the state was saved from another model ({key} {found.get(key)!r}, this model has {meta.get(key)!r})",
                where=p, fix="load a state saved from this same checkpoint")
    try:
        n_snaps, n_state = int(found["n_snapshots"]), int(found["n_state"])
    except (KeyError, ValueError):
        raise CorruptFileError("the state file's metadata is incomplete", where=p) from None
    if n_state != len(like):
        raise InvalidParameterError(f"the file holds {n_state} state tensors, the model needs {len(like)}", where=p)
    snaps = []
    for j in range(n_snaps):
        names = [f"s{j}.state.{i}" for i in range(n_state)] + [f"s{j}.ids", f"s{j}.logits"]
        if any(n not in tensors for n in names):
            raise CorruptFileError(f"the state file is incomplete (snapshot {j})", where=p)
        state = []
        for i, ref in enumerate(like):
            t = tensors[f"s{j}.state.{i}"]
            if tuple(t.shape) != tuple(ref.shape):
                raise InvalidParameterError(f"state tensor {i} has shape {tuple(t.shape)}, the model needs "
                                            f"{tuple(ref.shape)}", where=p, fix="load a state saved from this model")
            state.append(t.to(device=ref.device, dtype=ref.dtype))
        ids = tuple(int(x) for x in tensors[f"s{j}.ids"].tolist())
        snaps.append(Snapshot(ids, tuple(state), tensors[f"s{j}.logits"].float(), found.get("template") or None))
    return snaps
