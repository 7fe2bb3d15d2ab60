"""Several sequences decoded in one llama.cpp forward pass (the llama.cpp engine's batched decoder).

:class:`LlamaCppBatchDecoder` is what ``LlamaCppModel._batch_decoder`` returns for the core's
:class:`~openllm_hub.core.batch.Batch` (``generate_batch``, ``stream_batch``, the server's
slots). It works as llama.cpp's own ``llama-server`` does, with llama-cpp-python's low-level API:

* **its own context over the loaded model**: the model's weights are shared (so the engine's
  model parameters, e.g. repacking turned off on AMX CPUs, apply as they are), the model's own
  context and its single-sequence path are left untouched. The context holds ``n_seq_max``
  sequences in one unified KV cache (``kv_unified``) of ``slots x slot_tokens`` cells, where
  ``slot_tokens`` is the model's context length, so a sequence may hold as many tokens as in a
  single call. KV cache type, threads and LoRA adapters are the model context's.
* **one ``llama_batch`` per step**, tokens tagged with their sequence id and position: one
  token for each sequence that is generating, then the remaining per-step token budget
  (``n_batch``, the engine's ``n_batch`` option) goes to prompts, first come first served, in
  chunks, so a long prompt is read over several steps while the others keep generating. Only
  each sequence's last token of the step asks for logits; ``llama_decode`` runs once per step.
* **each sequence samples with its own sampler**: the very llama.cpp sampler chain and seed
  of the single-sequence path (``LlamaCppModel._sampler``), at its row of the batch's logits.
* a sequence that **leaves** (finished, cancelled, failed) is removed from the KV cache
  (``llama_memory_seq_rm``) and its sequence id is reused.
* **prompts sharing a prefix** (a system prompt, a chat history) reuse its KV cells: when a
  sequence's prompt has been read (a successful decode of its last token, so a cancelled or
  failed sequence stores nothing), its cells go to the model's prefix cache
  (``LlamaCppModel._remember_prefix``: a ``llama_state_seq_get_data`` blob, LRU within
  ``prefix_cache_mib``); a joining sequence gets the longest stored prefix of its prompt put
  into its cells (``llama_state_seq_set_data``, the cells beyond the shared part removed) and
  reads only the rest. The store lives on the model, so it serves later batches and the
  single path too. The reused cells were computed for another prompt, in other chunks, so a
  hit's logits may differ from a cold run in the last bits, as a batch's do (tests measure it).

Sequences get sequence ids from a free list; when more join than the context was made for
(the core asks for a decoder with ``slots or 1`` sequences when a batch has no slot limit),
the context is remade with twice the sequences and each running sequence's KV cells are
copied into it (``llama_state_seq_get_data``/``set_data``), up to llama.cpp's
``llama_max_parallel_sequences()`` and, on the CPU, as many full-slot KV caches as half the
available RAM holds. Beyond that, a joining sequence waits (no result yet) until one leaves.

Where results can differ from a single run: llama.cpp's CPU kernels do not promise the same
rounding for a batch of rows as for one. Matrix products over several rows may take other
kernels (llamafile's tinyBLAS for larger batches, a different accumulation order) than the
one-row dot products of single-token decoding, a prompt read in other chunk sizes is summed
in another order, and in the unified cache a sequence's cells sit at other indices, so the
attention's SIMD reductions group them differently. Each logits row may therefore differ
from the single run in the last bits (the tests measure it on an f32 GGUF). Greedy decoding
gives the same tokens unless two candidates are that close; sampled decoding draws the same
random numbers (same seed, same chain), so it gives the same tokens unless such a last-bit
difference moves a draw across a token's boundary, which is rare but possible.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from openllm_hub.core.batch import BatchDecoder, StepResult
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import score
from openllm_hub.errors import IncompatibleDeviceError, InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    from openllm_hub.engines.llama_cpp import LlamaCppModel


class _Seq:
    """One sequence of the batch: its llama.cpp sequence id, the prompt ids still to read,
    its position (tokens in the KV cache), its sampler and the token to feed next."""

    __slots__ = ("next_token", "pending", "pos", "prompt", "sampler", "seq_id", "top_logprobs")

    def __init__(self, seq_id: int, prompt_ids: list[int], sampler: Any, top_logprobs: int | None) -> None:
        self.seq_id = seq_id
        self.pending = prompt_ids
        #: the whole prompt, until its KV cells are offered to the model's prefix cache
        self.prompt: list[int] | None = prompt_ids
        self.pos = 0
        self.sampler = sampler
        #: None: no logprobs wanted; else how many alternatives to score with each token
        self.top_logprobs = top_logprobs
        self.next_token: int | None = None


class LlamaCppBatchDecoder(BatchDecoder):
    """Decodes up to ``slots`` sequences of a :class:`~openllm_hub.engines.llama_cpp.LlamaCppModel`
    in one ``llama_decode`` per step (see the module doc). ``step_tokens`` is the per-step
    token budget (default: the engine's ``n_batch``; at least one token per sequence).

    ``keep_logits=True`` keeps, for each key, a copy of every logits row its tokens were
    sampled from (:attr:`logits`), for tests that compare them with the single run."""

    def __init__(self, model: LlamaCppModel, slots: int, *, step_tokens: int | None = None,
                 max_seqs: int | None = None, keep_logits: bool = False) -> None:
        import llama_cpp

        if slots < 1:
            raise InvalidParameterError(f"a batch needs at least one slot, got {slots}", where="slots")
        self.model = model
        self._slot: int = model._n_ctx
        self.slot_tokens = self._slot
        #: the most sequences the context may grow to: llama.cpp's limit, ``max_seqs``, and (on the
        #: CPU) as many full-slot KV caches as half the available RAM holds
        self._max_seqs = min(int(llama_cpp.llama_max_parallel_sequences()), max_seqs or 2**31,
                             max(slots, self._memory_cap()))
        #: sequences joined while every sequence id was taken and the context could not grow:
        #: admitted in join order as ids free up (no result for them until then)
        self._waiting: dict[int, tuple[list[int], Any, int | None]] = {}
        self._budget = step_tokens or int(model._llm.n_batch)
        self._seqs: dict[int, _Seq] = {}
        self._ctx: Any = None
        self._batch: Any = None
        self._n_seq_max = 0
        self._free: list[int] = []
        self.keep_logits = keep_logits
        #: key -> the logits rows its tokens were sampled from (with ``keep_logits``)
        self.logits: dict[int, list[npt.NDArray[np.float32]]] = {}
        self._make_context(min(slots, self._max_seqs))

    def _memory_cap(self) -> int:
        """How many full-slot KV caches half the available RAM holds (CPU models; a GPU's
        context fails cleanly when it cannot be allocated)."""
        per_token = self.model.info.extra.get("kv_bytes_per_token")
        if not self.model.info.device.startswith("cpu") or not isinstance(per_token, int) or per_token <= 0:
            return 2**31
        from openllm_hub.core.plan import available_ram

        free = available_ram()
        return 2**31 if free is None else max(1, free // 2 // (per_token * self._slot))

    # -- the context
    def _make_context(self, n_seq_max: int) -> None:
        """(Re)make the context for ``n_seq_max`` sequences, moving the running sequences'
        KV cells into it."""
        import llama_cpp
        from llama_cpp import _internals

        from openllm_hub.engines.llama_cpp import capture_log, log_error

        llm: Any = self.model._llm
        base = llm.context_params
        params = type(base).from_buffer_copy(base)
        params.n_seq_max = n_seq_max
        params.n_ctx = n_seq_max * self._slot
        n_batch = max(self._budget, n_seq_max)
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, max(int(base.n_ubatch), n_seq_max))
        if hasattr(params, "kv_unified"):
            params.kv_unified = True
        with capture_log() as log:
            try:
                ctx: Any = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
            except ValueError as exc:
                raise IncompatibleDeviceError(
                    f"llama.cpp could not create a context for {n_seq_max} sequences of {self._slot} tokens "
                    f"({params.n_ctx} KV cells): {log_error(log)}", where="slots",
                    fix="use fewer slots (serve --parallel N) or a smaller context (-c N, n_ctx=N)") from exc
        loras = getattr(llm, "_openllm_hub_loras", None)
        if loras is not None:
            arr, scales = loras
            if llama_cpp.llama_set_adapters_lora(ctx.ctx, arr, len(scales), scales) != 0:
                ctx.close()
                raise RuntimeError("llama.cpp refused the model's LoRA adapters for the batch context")
        old = self._ctx
        try:
            if old is not None:
                for seq in self._seqs.values():
                    if seq.pos:
                        _copy_sequence(old.ctx, ctx.ctx, seq.seq_id)
        except Exception:
            ctx.close()
            raise
        if old is not None:
            old.close()
        if self._batch is not None:
            self._batch.close()
        self._ctx = ctx
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        used = {seq.seq_id for seq in self._seqs.values()}
        self._free = [i for i in reversed(range(n_seq_max)) if i not in used]  # pop() gives the lowest id
        self._n_seq_max = n_seq_max
        self._n_batch = n_batch

    # -- BatchDecoder
    def join(self, key: int, prompt_ids: list[int], config: GenerationConfig) -> None:
        if not prompt_ids:
            raise InvalidParameterError("an empty prompt cannot join a batch", where="prompt")
        if not self._free and self._n_seq_max < self._max_seqs and not self._waiting:
            try:
                self._make_context(min(self._max_seqs, 2 * self._n_seq_max))
            except IncompatibleDeviceError:  # no memory for a larger one: this one stays, the newcomer waits
                self._max_seqs = self._n_seq_max
        sampler = self.model._sampler(config, prompt_ids)
        top = config.top_logprobs if config.wants_logprobs else None
        if self.keep_logits:
            self.logits[key] = []
        if not self._free or self._waiting:
            self._waiting[key] = (list(prompt_ids), sampler, top)
            return
        self._start(key, list(prompt_ids), sampler, top)

    def _admit(self) -> None:
        """Give freed sequence ids to waiting sequences, first come first served."""
        while self._free and self._waiting:
            key = next(iter(self._waiting))
            prompt_ids, sampler, top = self._waiting.pop(key)
            self._start(key, prompt_ids, sampler, top)

    def _start(self, key: int, prompt_ids: list[int], sampler: Any, top: int | None) -> None:
        """Run a sequence on a free sequence id, its prompt's longest prefix in the model's prefix
        cache already in its KV cells (only the rest is read)."""
        seq = self._seqs[key] = _Seq(self._free.pop(), prompt_ids, sampler, top)
        hit = self.model.prefix_cache.lookup(prompt_ids, max_length=len(prompt_ids) - 1)
        if hit is not None and self.model._restore_prefix(self._ctx.ctx, self._ctx.memory, seq.seq_id, hit.value,
                                                          hit.length):
            seq.pos = hit.length
            seq.pending = prompt_ids[hit.length:]

    def leave(self, key: int) -> None:
        import llama_cpp

        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting[1].close()
        seq = self._seqs.pop(key, None)
        if seq is None:
            return
        seq.sampler.close()
        # (a context freed with its model, which was closed first, holds nothing to remove)
        if self._ctx is not None and self._ctx.ctx is not None and self._ctx.memory is not None:
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
        self._free.append(seq.seq_id)
        self._free.sort(reverse=True)

    def step(self) -> dict[int, StepResult]:
        self._admit()
        out: dict[int, StepResult] = {}
        batch = self._batch.batch
        n = 0
        rows: list[tuple[int, int]] = []  # (key, batch index of its logits)

        def put(seq: _Seq, token: int, wants_logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = seq.pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = wants_logits
            seq.pos += 1
            n += 1

        # every generating sequence first: one token each, so none waits behind a prompt
        for key, seq in list(self._seqs.items()):
            if seq.next_token is None:
                continue
            if seq.pos + 1 >= self._slot:  # its slot is full (as the single path stops)
                out[key] = None
                self.leave(key)
                continue
            token, seq.next_token = seq.next_token, None
            rows.append((key, n))
            put(seq, token, True)
        # what is left of the budget reads prompts, in the order they joined
        for key, seq in self._seqs.items():
            room = self._n_batch - n
            if room <= 0:
                break
            if not seq.pending:
                continue
            chunk, seq.pending = seq.pending[:room], seq.pending[room:]
            for i, token in enumerate(chunk):
                last = not seq.pending and i == len(chunk) - 1
                if last:
                    rows.append((key, n))
                put(seq, token, last)
        if n == 0:
            return out
        batch.n_tokens = n
        code = int(self._llama_decode())
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for a batch of {n} tokens "
                               f"({len(self._seqs)} sequences)")
        for key, index in rows:
            seq = self._seqs[key]
            try:
                row = self._row(index)
                self.model._check_finite(row)
                if seq.prompt is not None:  # its cells hold exactly the prompt now
                    if seq.pos == len(seq.prompt):
                        self.model._remember_prefix(self._ctx.ctx, seq.seq_id, seq.prompt)
                    seq.prompt = None
                if self.keep_logits:
                    self.logits[key].append(row.copy())
                # logprobs: the raw row, read before the sampler chain runs (as the single path)
                raw = row.copy() if seq.top_logprobs is not None else None
                token = int(seq.sampler.sample(self._ctx, index))
                if raw is not None:
                    token = score(raw, token, seq.top_logprobs or 0)
            except Exception as exc:  # noqa: BLE001 - it ends this sequence only
                out[key] = exc
                self.leave(key)
                continue
            seq.next_token = token
            out[key] = token
        return out

    def close(self) -> None:
        for key in [*self._waiting, *self._seqs]:
            self.leave(key)
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    # -- helpers
    def _llama_decode(self) -> int:
        import llama_cpp

        return int(llama_cpp.llama_decode(self._ctx.ctx, self._batch.batch))

    def _row(self, index: int) -> npt.NDArray[np.float32]:
        import numpy as np

        ptr = self._ctx.get_logits_ith(index)
        return np.ctypeslib.as_array(ptr, shape=(self.model._n_vocab,))

    @property
    def n_seq_max(self) -> int:
        """How many sequences the context holds now."""
        return self._n_seq_max


def _copy_sequence(src: Any, dst: Any, seq_id: int) -> None:
    """Copy one sequence's KV cells from context ``src`` into ``dst`` (same sequence id)."""
    import llama_cpp

    size = int(llama_cpp.llama_state_seq_get_size(src, seq_id))
    buf = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_seq_get_data(src, buf, size, seq_id))
    if written and int(llama_cpp.llama_state_seq_set_data(dst, buf, written, seq_id)) == 0:
        raise RuntimeError("llama.cpp could not move a sequence's KV cache into the larger batch context")


__all__ = ["LlamaCppBatchDecoder"]
