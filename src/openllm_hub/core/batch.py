"""Several sequences sharing one loaded model, stepped together (continuous batching).

A :class:`Batch` holds sequences, each with its own prompt ids, :class:`GenerationConfig`
(sampling parameters and seed, so its own random generator), stop strings, incremental
detokenizer and finish reason. :meth:`Batch.step` advances every running sequence by one
token and returns the chunks that step produced; sequences join (:meth:`Batch.add`) and leave
(:meth:`Batch.cancel`, or by finishing or failing) between steps, without touching the others.
The text side (end-of-sequence ids, stop strings, UTF-8-safe detokenization, usage, timings)
is :class:`SequenceOutput`, the very same code the single-sequence calls run, so a sequence
gives the same chunks alone or in a batch.

The token side is a :class:`BatchDecoder`, which an engine may provide
(``Model._batch_decoder``) to decode several sequences in one forward pass. Engines without
one get :class:`InterleavedDecoder`, the core's fair fallback: one ``_token_stream`` generator
per sequence, advanced round-robin one token each per step. How that stays correct depends on
where an engine keeps its generation state, which it declares in
``Model.sequence_interleaving``:

* ``"independent"`` (the default): each ``_token_stream`` generator holds its own state (a
  KV cache or recurrent state made per call, as with :func:`~openllm_hub.core.generate.generate_tokens`
  and a per-call cache: HF LLaMA, ChatGLM, both RWKV engines, the example bigram plugin).
  Generators are interleaved as they are; switching costs nothing.
* ``"swap"``: the engine keeps one state on the model (llama.cpp's context). Before another
  sequence's generator runs, the core saves the current owner's state with
  ``Model._save_sequence_state()`` and restores the next one's with
  ``Model._restore_sequence_state(state)``. Switching costs a copy of one sequence's cache,
  so it happens only when two or more sequences are running. A single call (``generate``,
  ``logits``) or another batch on the same model first lets the batch save its owner's
  state (``Model._claim_engine_state``), so they may be mixed freely.
* ``"serial"``: neither is possible (one shared cache that a new sequence resets, as the
  single-sequence cache of GLM-130B's ranks, whose engine batches with its own decoder
  instead): sequences run one after the other, in arrival order. Correct, not interleaved.

Re-prefilling a sequence from its ids at every switch was not chosen: it costs a whole prompt
per token, and the engine's sampler (llama.cpp's seeded chain) would restart its random
generator, so a sampled sequence would no longer equal its single run.

Every sequence draws from its own seeded generator, so with the same seed and parameters a
sequence gives the same tokens alone or in a batch: exactly, under the interleaving fallback
(each sequence runs the very computation of its single run). A batched decoder computes
several rows in one forward pass, whose arithmetic may differ from a single row's in the last
bits; its engine documents where greedy or sampled results can differ.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import ScoredToken, TokenLogprob, TopLogprob, token_text
from openllm_hub.core.streaming import IncrementalDetokenizer, StopMatcher

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.model import Chunk, FinishReason, Model

#: Where an engine without a batched decoder keeps its generation state (see the module doc).
Interleaving = Literal["independent", "swap", "serial"]
#: How a model serves several sequences: one forward pass for all, interleaved, or one after the other.
Batching = Literal["batched", "interleaved", "serial"]
#: What a decoder step gives per sequence: the next id, ``None`` when the engine ended the
#: sequence (its context is full), or the exception that ended it (that sequence only).
StepResult = int | BaseException | None


class SequenceOutput:
    """The text of one generated sequence: ids in, chunks out, as every generation call sees them.

    :meth:`push` takes the next sampled id and returns a chunk to send (or None while text is
    held back); :attr:`done` says when the sequence ended (end-of-sequence id, stop string,
    ``max_new_tokens``). :meth:`final` gives the last chunk, with the finish reason, usage and
    timings. ``Model.stream`` and :class:`Batch` both use it, so their output is the same.

    With ``config.wants_logprobs`` every id pushed must be a
    :class:`~openllm_hub.core.logprobs.ScoredToken` (the engine scored it); each chunk then
    carries one :class:`~openllm_hub.core.logprobs.TokenLogprob` per id, its text and bytes
    from ``token_bytes``.
    """

    __slots__ = ("_chunk", "_detok", "_eos", "_max_new", "_pending", "_scores", "_stopper", "_token_bytes",
                 "done", "finish", "generated", "prompt_tokens", "t0", "t_first")

    def __init__(self, decode: Callable[[Sequence[int]], str], eos_token_ids: frozenset[int],
                 prompt_ids: Sequence[int], config: GenerationConfig,
                 token_bytes: Callable[[int], bytes] | None = None) -> None:
        from openllm_hub.core.model import Chunk

        self._chunk = Chunk  # looked up once per sequence, not per token
        self._detok = IncrementalDetokenizer(decode, prompt_ids)
        self._stopper = StopMatcher(config.stop)
        self._eos = eos_token_ids
        self._max_new = config.max_new_tokens
        self._pending: list[int] = []
        #: the pending ids' logprobs (None: not asked for)
        self._scores: list[TokenLogprob] | None = [] if config.wants_logprobs else None
        self._token_bytes = token_bytes or (lambda t: decode([t]).encode("utf-8"))
        self.generated: list[int] = []
        self.prompt_tokens = len(prompt_ids)
        self.finish: FinishReason = "length"
        self.done = False
        self.t0 = time.perf_counter()
        self.t_first: float | None = None

    def push(self, token: int) -> Chunk | None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if token in self._eos:
            self.finish = "stop"
            self.done = True
            return None
        if self._scores is not None:
            self._scores.append(self._logprob(token))
            token = int(token)  # chunks hold plain ids
        self.generated.append(token)
        self._pending.append(token)
        text = self._stopper.push(self._detok.push(token))
        if self._stopper.stopped:
            self.finish = "stop"
            self.done = True
            return self._take(text)
        chunk: Chunk | None = None
        if text:
            chunk = self._take(text)
        if len(self.generated) >= self._max_new:
            self.done = True
        return chunk

    def final(self) -> Chunk:
        """The last chunk: held-back text, the finish reason, usage and timings."""
        from openllm_hub.core.model import Chunk, Timings, Usage

        stopper = self._stopper
        tail = "" if stopper.stopped else stopper.push(self._detok.flush())
        tail += stopper.flush()
        if stopper.stopped:
            self.finish = "stop"
        self.done = True
        t_end = time.perf_counter()
        t_first = self.t_first or t_end
        gen_s = max(t_end - t_first, 1e-9)
        prompt_s = max(t_first - self.t0, 1e-9)
        timings = Timings(prompt_seconds=prompt_s, generation_seconds=gen_s,
                          prompt_tokens_per_second=self.prompt_tokens / prompt_s,
                          generation_tokens_per_second=max(len(self.generated) - 1, 0) / gen_s)
        chunk = Chunk(tail, tuple(self._pending), finish_reason=self.finish,
                      usage=Usage(self.prompt_tokens, len(self.generated)), timings=timings,
                      logprobs=self._take_scores())
        self._pending = []
        return chunk

    def _take(self, text: str) -> Chunk:
        """A chunk of ``text`` with the pending ids (and their logprobs)."""
        chunk = self._chunk(text, tuple(self._pending), logprobs=self._take_scores())
        self._pending = []
        return chunk

    def _take_scores(self) -> tuple[TokenLogprob, ...] | None:
        if self._scores is None:
            return None
        scores, self._scores = tuple(self._scores), []
        return scores

    def _logprob(self, token: int) -> TokenLogprob:
        if not isinstance(token, ScoredToken):
            from openllm_hub.errors import InvalidParameterError

            raise InvalidParameterError("this engine's generation does not report log-probabilities",
                                        where="logprobs", fix="generate without logprobs/top_logprobs")
        raw = self._token_bytes(int(token))
        top = tuple(TopLogprob(t, token_text(b), b, lp)
                    for t, lp in token.top for b in (self._token_bytes(t),))
        return TokenLogprob(int(token), token_text(raw), raw, token.logprob, top)


class BatchDecoder(ABC):
    """The token side of a batch: decodes the joined sequences, one token each per step.

    An engine that can decode several sequences in one forward pass returns one from
    ``Model._batch_decoder(slots)``; the core drives it from one thread, holding the model's
    lock during each call. Keys are small ints chosen by the core. The prompt ids and config
    given to :meth:`join` are already checked (as for ``_token_stream``) and the config's seed
    is set: a decoder samples each sequence with its own generator seeded from it (the core's
    :class:`~openllm_hub.core.sampling.Sampler`, or the engine's own sampler chain).
    """

    #: the most tokens (prompt and generated) one sequence may hold; None where no limit is known
    slot_tokens: int | None = None

    @abstractmethod
    def join(self, key: int, prompt_ids: list[int], config: GenerationConfig) -> None:
        """Add a sequence; it takes part from the next :meth:`step` on. A decoder may read a
        long prompt over several steps (a per-step token budget) before its first token."""

    @abstractmethod
    def leave(self, key: int) -> None:
        """Remove a sequence (finished, cancelled or failed) and free its cache; unknown keys
        (already gone) are ignored. The other sequences must be unaffected."""

    @abstractmethod
    def step(self) -> dict[int, StepResult]:
        """Advance the joined sequences: for each key that produced something this step, its
        next id, ``None`` when the engine ended it (context full) or the exception that ended
        it. A sequence that failed or ended has left already. A key may be absent (still
        reading its prompt). An exception raised by ``step`` itself fails every sequence."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free whatever the decoder holds (every sequence has left)."""


class InterleavedDecoder(BatchDecoder):
    """The core's fallback for engines without a batched decoder: each sequence is its own
    ``_token_stream`` generator, advanced round-robin, one token per sequence per step (see the
    module doc for the ``independent``, ``swap`` and ``serial`` modes)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.mode: Interleaving = model.sequence_interleaving
        self.slot_tokens = model.info.context_length
        self._streams: dict[int, Iterator[int]] = {}
        self._saved: dict[int, Any] = {}
        #: the sequence whose state the engine holds now (swap mode)
        self._owner: int | None = None

    def join(self, key: int, prompt_ids: list[int], config: GenerationConfig) -> None:
        self._streams[key] = self.model._token_stream(prompt_ids, config)

    def leave(self, key: int) -> None:
        stream = self._streams.pop(key, None)
        self._saved.pop(key, None)
        if self._owner == key:
            self._owner = None  # what the engine holds now belongs to nobody
        if stream is not None:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def step(self) -> dict[int, StepResult]:
        keys = list(self._streams)
        if self.mode == "serial":
            keys = keys[:1]
        out: dict[int, StepResult] = {}
        for key in keys:
            try:
                if self.mode == "swap":
                    self._switch_to(key)
                out[key] = next(self._streams[key])
            except StopIteration:
                out[key] = None
                self.leave(key)
            except Exception as exc:  # noqa: BLE001 - it ends this sequence only
                out[key] = exc
                self.leave(key)
        return out

    def evict(self) -> None:
        """Someone else (a single ``generate``, ``logits``, another batch) is about to use the
        engine's one state: keep the owner's state to restore it at its next turn."""
        if self._owner is not None:
            self._saved[self._owner] = self.model._save_sequence_state()
            self._owner = None

    def _switch_to(self, key: int) -> None:
        self.model._claim_engine_state(self)
        if self._owner == key:
            return
        if self._owner is not None:
            self._saved[self._owner] = self.model._save_sequence_state()
        self._owner = None
        state = self._saved.pop(key, None)
        if state is not None:
            self.model._restore_sequence_state(state)
        self._owner = key

    def close(self) -> None:
        for key in list(self._streams):
            self.leave(key)
        if self.model._state_user is self:
            self.model._state_user = None


class _Sequence:
    __slots__ = ("key", "out", "tag")

    def __init__(self, key: int, out: SequenceOutput, tag: Any) -> None:
        self.key, self.out, self.tag = key, out, tag


class Batch:
    """Sequences of one model, stepped together (see the module doc).

    Made by ``Model.new_batch()``. Not thread-safe: one thread adds, cancels and steps (the
    server's worker, or the caller of ``Model.stream_batch``); each step holds the model's lock.
    """

    def __init__(self, model: Model, slots: int | None = None, *, expected: int | None = None) -> None:
        """``expected``: how many sequences the caller knows will run at once when ``slots`` is
        None, so a batched decoder is sized once instead of growing from one."""
        if slots is not None and slots < 1:
            from openllm_hub.errors import InvalidParameterError

            raise InvalidParameterError(f"a batch needs at least one slot, got {slots}", where="slots")
        self.model = model
        self.slots = slots
        decoder = model._batch_decoder(slots or max(expected or 1, 1))
        self.decoder: BatchDecoder = decoder if decoder is not None else InterleavedDecoder(model)
        self._seqs: dict[int, _Sequence] = {}
        self._next_key = 0

    @property
    def running(self) -> int:
        """Sequences joined and not yet finished."""
        return len(self._seqs)

    @property
    def slot_tokens(self) -> int | None:
        """The most tokens (prompt and generated) one sequence may hold; None where unknown."""
        return self.decoder.slot_tokens

    def add(self, prompt_ids: Sequence[int], config: GenerationConfig, tag: Any = None) -> int:
        """Join a sequence (it starts at the next :meth:`step`); returns its key. The prompt is
        checked as ``Model.stream`` checks it; ``tag`` is handed back with its chunks' keys by
        :meth:`tag`. Raises when every slot is taken."""
        self.model._check_open()
        from openllm_hub.core.constrain import bind

        ids = list(prompt_ids)
        config = bind(config.with_seed(), self.model)
        self.model._check_prompt(ids)
        if self.slots is not None and len(self._seqs) >= self.slots:
            from openllm_hub.errors import InvalidParameterError

            raise InvalidParameterError(f"all {self.slots} slots of the batch are taken", where="Batch.add",
                                        fix="step until a sequence finishes, or make a batch with more slots")
        key = self._next_key
        self._next_key += 1
        out = SequenceOutput(self.model._detokenize, self.model.eos_token_ids, ids, config, self.model._token_bytes)
        with self.model._lock:
            self.decoder.join(key, ids, config)
        self._seqs[key] = _Sequence(key, out, tag)
        return key

    def tag(self, key: int) -> Any:
        seq = self._seqs.get(key)
        return None if seq is None else seq.tag

    def cancel(self, key: int) -> None:
        """Remove a sequence now (no final chunk); the others continue unchanged."""
        if self._seqs.pop(key, None) is not None:
            with self.model._lock:
                self.decoder.leave(key)

    def step(self) -> list[tuple[int, Chunk | BaseException]]:
        """Advance every running sequence by one token. Returns ``(key, chunk)`` for the text
        produced, a final chunk (``finish_reason`` set) for each sequence that ended, and
        ``(key, exception)`` for each one that failed; ended and failed sequences have left."""
        if not self._seqs:
            return []
        with self.model._lock:
            self.model._check_open()
            try:
                results = self.decoder.step()
            except Exception as exc:  # noqa: BLE001 - a failed forward pass fails the sequences in it
                results = dict.fromkeys(self._seqs, exc)
        events: list[tuple[int, Chunk | BaseException]] = []
        for key, result in results.items():
            seq = self._seqs.get(key)
            if seq is None:
                continue
            if isinstance(result, BaseException):
                self.cancel(key)
                events.append((key, result))
                continue
            if result is not None:
                try:
                    chunk = seq.out.push(result)
                except Exception as exc:  # noqa: BLE001 - e.g. logprobs the engine does not give: this sequence only
                    self.cancel(key)
                    events.append((key, exc))
                    continue
                if chunk is not None:
                    events.append((key, chunk))
                if not seq.out.done:
                    continue
            events.append((key, seq.out.final()))
            self.cancel(key)
        return events

    def close(self) -> None:
        """Cancel every sequence and free the decoder."""
        for key in list(self._seqs):
            self.cancel(key)
        with self.model._lock:
            self.decoder.close()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PreparedStream(Iterator["Chunk"]):
    """What ``Model.stream`` and ``stream_chat`` return: the chunks of one generation, plus the
    checked ``prompt_ids`` and seeded ``config`` it runs, so a batch (the server's slots) can
    run the same request as one of its sequences instead (:meth:`Batch.add`). Nothing runs
    until the first ``next()``."""

    __slots__ = ("_chunks", "config", "prompt_ids")

    def __init__(self, chunks: Iterator[Chunk], prompt_ids: list[int], config: GenerationConfig) -> None:
        self._chunks = chunks
        self.prompt_ids = prompt_ids
        self.config = config

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def __iter__(self) -> PreparedStream:
        return self

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def stream_batch(model: Model, requests: Iterable[tuple[list[int], GenerationConfig]], slots: int | None
                 ) -> Iterator[tuple[int, Chunk]]:
    """``(index, chunk)`` of every request, run in one :class:`Batch` with at most ``slots``
    sequences at a time (None: all at once); the next request joins as soon as one finishes,
    in input order. The exception of a failed sequence is raised at once (the caller asked
    for every result), after which the batch is closed."""
    todo = list(requests)
    batch = Batch(model, slots, expected=len(todo))
    keys: dict[int, int] = {}
    nxt = 0
    try:
        while nxt < len(todo) or batch.running:
            while nxt < len(todo) and (slots is None or batch.running < slots):
                ids, config = todo[nxt]
                keys[batch.add(ids, config)] = nxt
                nxt += 1
            for key, event in batch.step():
                if isinstance(event, BaseException):
                    raise event
                yield keys[key], event
    finally:
        batch.close()


__all__ = ["Batch", "BatchDecoder", "Batching", "InterleavedDecoder", "Interleaving", "PreparedStream",
           "SequenceOutput", "StepResult", "stream_batch"]
