"""RNN state snapshots: copies that later reads cannot disturb, and their safetensors files.

A snapshot is the package's state list (per layer: token-shift vectors and the WKV
matrices), the token ids read to reach it, and the logits after the last one, so a chat can
continue from it without reading anything again. ``forward`` replaces list entries and, with
CUDA kernels, writes into the tensors, so snapshots hold clones and hand out clones.

File layout (safetensors): ``state.N`` tensors, ``ids`` (int64), ``logits`` (float32) and
metadata naming the format, the model's fingerprint and architecture, so loading a state
into another model fails with a clear error instead of producing nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.core.io import atomic_output, check_destination
from openllm_hub.errors import CorruptFileError, InvalidParameterError, NotFoundError

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


def save_snapshot(snap: Snapshot, path: str | Path, *, meta: dict[str, str], sources: list[Path],
                  force: bool = False) -> Path:
    """Write ``snap`` as safetensors at ``path`` (atomically; never over a model file)."""
    import torch
    from safetensors.torch import save_file

    out = check_destination(path, sources=sources, force=force)
    tensors: dict[str, torch.Tensor] = {f"state.{i}": t.detach().cpu().contiguous() for i, t in enumerate(snap.tensors)}
    tensors["ids"] = torch.tensor(snap.ids, dtype=torch.int64)
    tensors["logits"] = snap.logits.float().cpu().contiguous()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_state": str(len(snap.tensors)),
                "template": snap.template or "", **meta}
    with atomic_output(out, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def load_snapshot(path: str | Path, *, meta: dict[str, str], like: list[torch.Tensor]) -> Snapshot:
    """Read a state file written by :func:`save_snapshot` for a model described by ``meta``;
    tensors are moved to the devices and dtypes of ``like`` (the model's zero state)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise NotFoundError("state file not found", where=p)
    try:
        with safe_open(str(p), framework="pt") as fh:
            found: dict[str, Any] = dict(fh.metadata() or {})
            keys = set(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in keys}
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
    n = int(found.get("n_state", "-1"))
    if n != len(like) or any(f"state.{i}" not in keys for i in range(n)) or "ids" not in keys or "logits" not in keys:
        raise CorruptFileError("the state file is incomplete", where=p)
    state = []
    for i, ref in enumerate(like):
        t = tensors[f"state.{i}"]
        if tuple(t.shape) != tuple(ref.shape):
            raise InvalidParameterError(f"state tensor {i} has shape {tuple(t.shape)}, the model needs "
                                        f"{tuple(ref.shape)}", where=p, fix="load a state saved from this model")
        state.append(t.to(device=ref.device, dtype=ref.dtype))
    ids = tuple(int(x) for x in tensors["ids"].tolist())
    return Snapshot(ids, tuple(state), tensors["logits"].float(), found.get("template") or None)
