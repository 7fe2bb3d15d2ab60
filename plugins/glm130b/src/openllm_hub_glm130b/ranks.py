"""One rank's engine, and how rank 0 drives the others.

Every rank holds a :class:`RankEngine` (its model slice and KV cache). Rank 0 runs the user
API; each engine call it makes is first broadcast as a small ``(op, args)`` message on a gloo
control group, so the other ranks (in :func:`follow`) make the same call and take part in its
collectives. With one rank nothing is broadcast. Token choice (sampling, beam search) happens
on rank 0 only and reaches the others as the next call's ids, so ranks never diverge. Where
rank 0 is the process that called ``load(..., nproc=N)``, the :class:`Backend` also holds the
other ranks' processes (``launch.Followers``): a call that fails because one of them died says
so, and closing stops them.

Continuous batching follows the same rule: rank 0's batch decoder
(:class:`~openllm_hub_glm130b.engine_tp.GLM130BBatchDecoder`) decides which sequences join,
decode and leave, and each of those decisions is one engine call every rank makes
(``batch_open``, ``batch_prefill``, ``batch_merge``, ``batch_decode``, ``batch_drop``,
``batch_close``). A batch's rows live in their own ragged KV cache, named by the batch's id,
next to the single-sequence cache (``start``/``forward``/``reorder``: generation, logits, beam
search), so a single call between two batch steps leaves the batch alone. What can fail for one
sequence only (its ids, its sampling, a cancellation) is decided on rank 0 before anything is
broadcast, so it reaches the other ranks as that row's ``batch_drop`` at most.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from openllm_hub.engines.finite import check_finite
from openllm_hub.engines.kv_cache import KVCache
from openllm_hub.plugin import InvalidParameterError, ModelClosedError, OpenLLMHubError
from openllm_hub_glm130b.checkpoint import SatCheckpoint
from openllm_hub_glm130b.network.parallel import TPGroup
from openllm_hub_glm130b.network.quant import quantize_state
from openllm_hub_glm130b.network.transformer import GLMShard

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class EngineOptions:
    """How a rank builds its slice: compute dtype, on-load quantization, offloaded layers."""

    dtype: str = "fp32"
    quantize: int | None = None
    offload_layers: tuple[int, ...] | str = ()


def offload_set(spec: tuple[int, ...] | str, num_layers: int) -> frozenset[int]:
    if spec == "all":
        return frozenset(range(num_layers))
    if isinstance(spec, str):
        raise InvalidParameterError(f"offload_layers must be 'all' or layer numbers, got {spec!r}",
                                    where="offload_layers")
    bad = [n for n in spec if not 0 <= n < num_layers]
    if bad:
        raise InvalidParameterError(f"offload_layers names layer(s) {bad} of a {num_layers}-layer model",
                                    where="offload_layers", fix=f"use layer numbers 0..{num_layers - 1} or 'all'")
    return frozenset(spec)


def preflight(path: str | Path, world: int, options: EngineOptions) -> SatCheckpoint:
    """Every check that can fail on bad input, done before any rank starts."""
    ck = SatCheckpoint.open(path)
    ck.check_world(world)
    if options.quantize is not None and ck.bits is not None:
        raise InvalidParameterError(f"the checkpoint is already INT{ck.bits}", where=ck.root,
                                    fix="drop the quantize option")
    if options.dtype not in TORCH_DTYPES:
        raise InvalidParameterError(f"unknown dtype {options.dtype!r}", where="dtype",
                                    fix=f"use one of {', '.join(TORCH_DTYPES)}")
    offload_set(options.offload_layers, ck.config.num_layers)
    return ck


class RankEngine:
    """This rank's model slice plus the KV cache of the sequence(s) being generated."""

    def __init__(self, ck: SatCheckpoint, tp: TPGroup, device: torch.device, options: EngineOptions) -> None:
        state = ck.local_state(tp.rank, tp.world)
        for name, tensor in state.items():  # NaN/Inf weights refused by name, before they reach the logits
            check_finite(name, tensor, ck.files[tp.rank] if ck.tp == tp.world else ck.root)
        bits = ck.bits
        if options.quantize is not None:
            state = quantize_state(state, options.quantize)
            bits = options.quantize
        self.config = ck.config.with_(quantization_bit_width=bits, model_parallel_size=tp.world)
        self.shard = GLMShard(self.config, state, tp, device=device, dtype=TORCH_DTYPES[options.dtype],
                              offload_layers=offload_set(options.offload_layers, ck.config.num_layers))
        del state
        self.tp, self.device = tp, device
        self.cache: KVCache = self.shard.new_cache(1)
        #: each open batch's rows (continuous batching), by batch id, and a prompt read to join it
        self.batches: dict[int, KVCache] = {}
        self.joining: dict[int, KVCache] = {}

    def start(self, batch: int) -> None:
        self.cache = self.shard.new_cache(batch)

    @torch.inference_mode()
    def forward(self, ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], context: int,
                last_only: bool) -> npt.NDArray[np.float32]:
        t_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        t_pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return self.shard.forward(t_ids, t_pos, self.cache, context, last_only).cpu().numpy()

    @torch.inference_mode()
    def logits(self, ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
               context: int) -> npt.NDArray[np.float32]:
        """As :meth:`forward` over every position of whole sequences, with a KV cache of its
        own (``Model.logits`` between two steps of a generation leaves that generation's
        cache alone)."""
        t_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        t_pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        own = self.shard.new_cache(len(ids))
        return self.shard.forward(t_ids, t_pos, own, context, False).cpu().numpy()

    @torch.inference_mode()
    def hidden(self, ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
               context: int) -> npt.NDArray[np.float32]:
        """As :meth:`forward` over every position of whole sequences, the final-LayerNorm hidden
        states ``[B, T, hidden]`` (as float32) instead of the logits. The pass has a KV cache of
        its own, so a generation whose cache this rank holds continues unchanged after it."""
        t_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        t_pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        own = self.shard.new_cache(len(ids))
        return self.shard.hidden(t_ids, t_pos, own, context).float().cpu().numpy()

    def reorder(self, index: Sequence[int]) -> None:
        self.cache.reorder(torch.tensor(index, dtype=torch.long, device=self.device))

    # -- continuous batching: several sequences as rows of one ragged cache per batch
    def batch_open(self, batch: int) -> None:
        """A new batch ``batch`` with no rows yet."""
        self.batches[batch] = self.shard.new_cache(0)
        self.joining.pop(batch, None)

    @torch.inference_mode()
    def batch_prefill(self, batch: int, ids: Sequence[int], positions: Sequence[int],
                      context: int) -> npt.NDArray[np.float32]:
        """Read a joining sequence's prompt alone, exactly as :meth:`forward` reads a single
        run's (a fresh one-row cache, the whole prompt in one piece with its bidirectional
        context): the logits of its last position. Its cache waits for :meth:`batch_merge`."""
        cache = self.shard.new_cache(1)
        t_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        t_pos = torch.tensor([list(positions)], dtype=torch.long, device=self.device)
        out = self.shard.forward(t_ids, t_pos, cache, context, True)[0, -1].cpu().numpy()
        self.joining[batch] = cache
        return out

    def batch_merge(self, batch: int) -> None:
        """The prompt :meth:`batch_prefill` read becomes the batch's last row."""
        self.batches[batch].add_rows(self.joining.pop(batch))

    @torch.inference_mode()
    def batch_decode(self, batch: int, ids: Sequence[int], positions: Sequence[int]) -> npt.NDArray[np.float32]:
        """One step for every row: ``ids[i]`` at position id ``positions[i]``; logits ``[rows, V]``."""
        t_ids = torch.tensor(list(ids), dtype=torch.long, device=self.device)
        t_pos = torch.tensor(list(positions), dtype=torch.long, device=self.device)
        return self.shard.forward_rows(t_ids, t_pos, self.batches[batch]).cpu().numpy()

    def batch_drop(self, batch: int, index: int) -> None:
        """Remove row ``index`` (a sequence that left); the rows after it move up."""
        cache = self.batches[batch]
        keep = [i for i in range(cache.batch) if i != index]
        cache.reorder(torch.tensor(keep, dtype=torch.long, device=self.device))

    def batch_close(self, batch: int) -> None:
        self.batches.pop(batch, None)
        self.joining.pop(batch, None)

    def kv_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take in this rank's cache (its heads, every layer):
        what the server's default slot count divides memory by."""
        shard = self.shard
        return 2 * shard.cfg.num_layers * shard.heads * shard.head_dim * torch.finfo(shard.dtype).bits // 8

    def weight_bytes(self) -> dict[str, int]:
        return self.shard.weight_bytes()

    def close(self) -> None:
        self.cache = self.shard.new_cache(1)
        self.batches.clear()
        self.joining.clear()


class Followers(Protocol):
    """The other ranks' processes, where rank 0 started them (``launch.Followers``)."""

    def lost(self) -> OpenLLMHubError | None: ...

    def close(self) -> None: ...


class Backend:
    """Rank 0's handle on the engines: runs an op locally after telling the other ranks.

    Calls are serialized (a lock): the ranks must see rank 0's collectives in one order, and
    a model may be used from several threads (the server's batch worker, ``embed``, ``close``).
    ``followers``: the processes of the other ranks when rank 0 started them (``load(nproc=N)``);
    an op that fails because one of them is gone raises that as an :class:`OpenLLMHubError`,
    as does every later op, and :meth:`close` stops them."""

    def __init__(self, engine: RankEngine, control: Any = None, broadcast: bool = False,
                 followers: Followers | None = None) -> None:
        self.engine, self.control, self.broadcast, self.followers = engine, control, broadcast, followers
        self.closed = False
        self.failed: OpenLLMHubError | None = None
        self._lock = threading.Lock()

    def __call__(self, op: str, *args: Any) -> Any:
        with self._lock:
            if self.failed is not None:
                raise self.failed
            if self.closed and op != "close":  # the other ranks are gone (or going): nothing may reach them
                raise ModelClosedError("the model is closed", fix="load it again")
            try:
                if self.broadcast:
                    import torch.distributed as dist

                    dist.broadcast_object_list([(op, args)], src=0, group=self.control)
                return getattr(self.engine, op)(*args)
            except OpenLLMHubError:
                raise
            except Exception as exc:
                lost = self.followers.lost() if self.followers is not None else None
                if lost is None:
                    raise
                self.failed = lost
                raise lost from exc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.failed is None:
                self("close")
        except OpenLLMHubError:
            if self.failed is None:
                raise
        finally:
            if self.followers is not None:
                self.followers.close()


def follow(engine: RankEngine, control: Any) -> None:
    """Ranks other than 0: repeat rank 0's engine calls until it closes."""
    import torch.distributed as dist

    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=control)
        op, args = box[0]
        getattr(engine, op)(*args)
        if op == "close":
            return
