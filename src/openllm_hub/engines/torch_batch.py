"""The shared part of the torch engines' batched decoders: sequences as rows of one cache.

:class:`RowBatchDecoder` is a :class:`~openllm_hub.core.batch.BatchDecoder` for engines whose
network can run one decoding step for several sequences at once, each a row of a padded KV
cache (HF LLaMA on transformers, ChatGLM on this SDK's network, GLM-130B on every
tensor-parallel rank). It keeps what every such
engine does the same way, so it lives once:

* **a joining sequence's prompt is read alone**, in the single path's chunks (``_prefill``),
  with the engine's batch-1 cache: its prompt logits are exactly those of a single run. Its
  cache then becomes a new row of the batch's cache (``_merge``). Prompts are read between
  decoding steps, first come first served, at most ``step_tokens`` prompt tokens per step
  (at least one prompt), so a long prompt does not stall the running sequences for long.
* **one forward pass per step** for every running sequence (``_decode``): one token per row,
  at the row's own position, attending to its own tokens only (the engine masks the padding).
* **each sequence samples with its own** :class:`~openllm_hub.core.sampling.Sampler`, seeded
  from its config, over its own history, and is scored (logprobs) against its raw row, as
  :func:`~openllm_hub.core.generate.generate_tokens` does on the single path; it ends when its
  history fills the context, as there.
* a sequence that **leaves** has its row dropped (``_drop``); the other rows are untouched.
* **memory is bounded** (:func:`plan_rows`): a padded cache grows with rows x the longest row,
  so the decoder gets a KV budget (half the free memory where the model runs, or the model's
  ``batch_kv_bytes``) and the model's KV bytes per token, and sets :attr:`slot_tokens` (the
  most tokens a sequence may hold: the context, or less when the batch's slots of full context
  would not fit) and :attr:`max_rows` (how many sequences are rows at once; more wait, their
  prompts unread, until a row leaves), so ``max_rows x slot_tokens`` tokens fit the budget.
  The server refuses a request over :attr:`slot_tokens` (400) before admitting it.

Where results can differ from a single run: a prompt's logits are the single run's exactly
(engines that reuse a stored prefix, :mod:`openllm_hub.engines.torch_prefix`, do it in
``_prefill`` as their single path does; whether a prompt hits depends on what was stored
before, and a hit's logits may differ from a cold read in the last bits, as that module says).
A decoding step's rows are computed by matrix products over several rows and attention with a
padding mask, whose kernels may sum in another order than the one-row products of the single
path, so each decoded row may differ in the last bits (the engines' tests state the bound in
float32). Greedy decoding gives the same tokens unless two candidates are that close; sampled
decoding draws the same random numbers (same seed, same sampler), so it gives the same tokens
unless such a difference moves a draw across a token's boundary. In float16/bfloat16 the
differences are larger (rounding of each product), so ties flip more often.

numpy and torch are imported by the engines; this module imports neither at module level.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from openllm_hub.core.batch import BatchDecoder, StepResult
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import score
from openllm_hub.core.sampling import Sampler
from openllm_hub.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt


#: Slots shrink below the context to fit a batch's slots in memory, but not below this (or the
#: context, when shorter); past it fewer sequences are rows at once and the others wait.
MIN_SLOT_TOKENS = 512


def plan_rows(budget_bytes: int | None, bytes_per_token: int | None, context: int | None,
              slots: int) -> tuple[int | None, int | None]:
    """``(max_rows, slot_tokens)`` for a padded KV cache of ``bytes_per_token`` per token within
    ``budget_bytes``, for a batch of ``slots`` sequences: each slot holds the whole ``context``
    when ``slots`` of them fit; else slots shrink to what fits, down to ``MIN_SLOT_TOKENS``; and
    as many rows as the budget holds of such slots run at once (at least one; more than ``slots``
    when they fit, for a batch without a slot limit). ``(None, context)`` when the budget or the
    cost of a token is unknown."""
    if budget_bytes is None or not bytes_per_token or context is None:
        return None, context
    fit = max(1, budget_bytes // bytes_per_token)  # tokens the budget holds
    slot = min(context, fit // max(slots, 1))
    floor = min(context, MIN_SLOT_TOKENS)
    if slot < floor:
        slot = max(1, min(floor, fit))
    return max(1, fit // slot), slot


class TorchBatchOptions(BaseModel):
    """The load option of the torch engines' batched decoders; a family's options model that
    loads onto one of them extends it."""

    batch_kv_mib: int | None = Field(
        None, ge=1, description="torch engines: memory for the batched decoder's KV cache, all slots together "
                                "(slots get shorter than the context when that many full ones do not fit); "
                                "None: half the free memory of the model's device; llama.cpp refuses it (its "
                                "slots share n_ctx)")


def kv_budget_bytes(device: str) -> int | None:
    """Half the free memory of ``device`` (``"cpu..."`` or ``"cuda:N..."``, as ``ModelInfo.device``
    names it): what a batched decoder's KV cache may take by default; None when unknown."""
    if device.startswith("cuda"):
        import torch

        try:
            index = int(device.split(":", 1)[1].split(",")[0].split(" ")[0]) if ":" in device else 0
            free, _ = torch.cuda.mem_get_info(index)
        except (RuntimeError, ValueError, AssertionError):
            return None
        return int(free) // 2
    from openllm_hub.core.plan import available_ram

    free_ram = available_ram()
    return None if free_ram is None else free_ram // 2


class _Row:
    """One sequence: its sampler, history (prompt and generated ids), the logits row to sample
    from next, the token to feed next, and how many alternatives to score (None: no logprobs)."""

    __slots__ = ("feed", "history", "logits", "pending", "sampler", "top")

    def __init__(self, prompt_ids: list[int], config: GenerationConfig) -> None:
        self.sampler = Sampler(config.with_seed())
        self.history = list(prompt_ids)
        #: the prompt while it waits to be read (None once it is a row of the cache)
        self.pending: list[int] | None = list(prompt_ids)
        self.logits: npt.NDArray[np.float32] | None = None
        self.feed: int | None = None
        self.top = config.top_logprobs if config.wants_logprobs else None


class RowBatchDecoder(BatchDecoder):
    """Sequences as rows of one cache, one forward pass per step (see the module doc).

    An engine implements :meth:`_prefill`, :meth:`_merge`, :meth:`_decode` and :meth:`_drop`;
    rows are kept in join order (``_merge`` appends one, ``_drop`` removes one by index).
    ``keep_logits=True`` keeps, for each key, a copy of every logits row its tokens were
    sampled from (:attr:`logits`), for tests that compare them with the single run.

    Memory (:func:`plan_rows`): ``slots`` is how many sequences the batch runs at once,
    ``kv_bytes_per_token`` what one token's keys and values cost in the engine's cache and
    ``kv_budget`` the bytes the cache may take (None: unbounded); they set :attr:`slot_tokens`
    and :attr:`max_rows`.
    """

    def __init__(self, context_length: int | None, *, step_tokens: int = 512, keep_logits: bool = False,
                 slots: int = 1, kv_bytes_per_token: int | None = None, kv_budget: int | None = None) -> None:
        #: how many sequences are rows of the cache at once (None: no limit); more wait
        self.max_rows: int | None
        self.max_rows, self.slot_tokens = plan_rows(kv_budget, kv_bytes_per_token, context_length, slots)
        self._budget = max(1, step_tokens)
        self._seqs: dict[int, _Row] = {}
        #: keys of the sequences whose cache is a row, in row order
        self._rows: list[int] = []
        self.keep_logits = keep_logits
        #: key -> the logits rows its tokens were sampled from (with ``keep_logits``)
        self.logits: dict[int, list[npt.NDArray[np.float32]]] = {}

    # -- what an engine implements
    @abstractmethod
    def _prefill(self, prompt_ids: list[int]) -> tuple[Any, npt.NDArray[np.float32]]:
        """Read a prompt alone, as the single path does (after the longest prefix the engine's
        prefix cache holds of it, where it has one): its cache (batch 1) and the logits of its
        last position."""

    @abstractmethod
    def _merge(self, cache: Any, length: int) -> None:
        """Append ``cache`` (from :meth:`_prefill`, ``length`` positions) as the last row."""

    @abstractmethod
    def _decode(self, tokens: list[int], positions: list[int]) -> npt.NDArray[np.float32]:
        """One forward pass: ``tokens[i]`` at position ``positions[i]`` (tokens its row holds so
        far) for every row, stored in the rows; the logits, one row each ``(rows, vocab)``."""

    @abstractmethod
    def _drop(self, index: int) -> None:
        """Remove row ``index`` from the cache (the rows after it move up)."""

    # -- BatchDecoder
    def join(self, key: int, prompt_ids: list[int], config: GenerationConfig) -> None:
        if not prompt_ids:
            raise InvalidParameterError("an empty prompt cannot join a batch", where="prompt")
        self._seqs[key] = _Row(prompt_ids, config)
        if self.keep_logits:
            self.logits[key] = []

    def leave(self, key: int) -> None:
        if self._seqs.pop(key, None) is None:
            return
        if key in self._rows:
            index = self._rows.index(key)
            self._rows.pop(index)
            self._drop(index)

    def step(self) -> dict[int, StepResult]:
        out: dict[int, StepResult] = {}
        limit = self.slot_tokens
        # a sequence whose history fills the context ends (as generate_tokens stops)
        for key, seq in list(self._seqs.items()):
            if limit is not None and len(seq.history) >= limit:
                out[key] = None
                self.leave(key)
        # one forward pass for every running row
        if self._rows:
            seqs = [self._seqs[k] for k in self._rows]
            tokens = [s.feed for s in seqs]
            assert all(t is not None for t in tokens), "every row has a token to feed"
            rows = self._decode([int(t) for t in tokens if t is not None], [len(s.history) - 1 for s in seqs])
            for i, s in enumerate(seqs):
                s.logits = rows[i]
        # then prompts, first come first served, within the per-step budget and the rows memory holds
        read = 0
        for key, seq in list(self._seqs.items()):
            if seq.pending is None:
                continue
            if read and read + len(seq.pending) > self._budget:
                break
            if self.max_rows is not None and len(self._rows) >= self.max_rows:
                break
            try:
                cache, seq.logits = self._prefill(seq.pending)
                self._merge(cache, len(seq.pending))
            except Exception as exc:  # noqa: BLE001 - it ends this sequence only
                out[key] = exc
                self._seqs.pop(key, None)
                continue
            self._rows.append(key)
            read += len(seq.pending)
            seq.pending = None
        # every sequence with a fresh row of logits samples its next token
        for key, seq in list(self._seqs.items()):
            row = seq.logits
            if row is None:
                continue
            seq.logits = None
            try:
                if self.keep_logits:
                    self.logits[key].append(row.copy())
                token: int = seq.sampler(row, seq.history)
                seq.history.append(token)
                if seq.top is not None:
                    token = score(row, token, seq.top)
            except Exception as exc:  # noqa: BLE001 - it ends this sequence only
                out[key] = exc
                self.leave(key)
                continue
            seq.feed = int(token)
            out[key] = token
        return out

    def close(self) -> None:
        for key in list(self._seqs):
            self.leave(key)

    @property
    def rows(self) -> int:
        """Sequences whose cache is a row now."""
        return len(self._rows)


__all__ = ["MIN_SLOT_TOKENS", "RowBatchDecoder", "TorchBatchOptions", "kv_budget_bytes", "plan_rows"]
