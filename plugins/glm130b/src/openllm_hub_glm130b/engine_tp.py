"""GLM130BModel: the common Model API over the rank engines, plus beam search and blank filling.

``load()`` builds it with one in-process rank (TP=1), or with ``nproc=N`` as rank 0 in the
calling process with N-1 follower processes; the launchers build it on rank 0 of a
tensor-parallel group. Each engine call is mirrored on the other ranks.

Prompts: ``generate("text")`` continues the text left to right (``[gMASK]`` and ``<sop>`` are
appended, as GLM-130B's ``generate.py`` does); a text with ``[MASK]``/``[sMASK]`` generates
its first blank. :meth:`fill_blanks` fills every blank and returns the whole text.
:meth:`logits` on ids that contain ``<sop>`` uses GLM's layout (bidirectional context up to
``<sop>``, mask positions); ids without ``<sop>`` are read as plain causal text.

Several sequences (``generate_batch``, ``stream_batch``, the server's ``--parallel`` slots) are
decoded together by :class:`GLM130BBatchDecoder`: one forward pass per step for every running
sequence, on every rank, each rank following rank 0's batch (see :mod:`~openllm_hub_glm130b.ranks`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.torch_batch import RowBatchDecoder
from openllm_hub.plugin import GenerationConfig, InvalidParameterError, Model, ModelInfo, generate_tokens
from openllm_hub_glm130b.beam import Beam, beam_search, check_params
from openllm_hub_glm130b.blanks import BlankFill, BlankFiller, fill_blanks
from openllm_hub_glm130b.network.positions import Layout, layout_of
from openllm_hub_glm130b.spec import GLMConfig
from openllm_hub_glm130b.tokenizer import GLMTokenizer, encode_with_masks, generation_prompt

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    from openllm_hub_glm130b.ranks import Backend


@dataclass(frozen=True)
class BeamResult:
    text: str
    token_ids: tuple[int, ...]
    score: float
    normalized_score: float
    finished: bool


class GLM130BModel(Model):
    """A GLM-130B-shaped model on one or more tensor-parallel ranks."""

    default_chat_template = "plain"
    #: GLM-130B's scripts/generate.sh: temperature 1.0, top-k off, top-p 0.7, no repetition penalty.
    generation_defaults = GenerationConfig(temperature=1.0, top_k=0, top_p=0.7, repeat_penalty=1.0)
    #: Several sequences are decoded together by :class:`GLM130BBatchDecoder` (``_batch_decoder``).
    #: Without it (the core's fallback) they would run one after the other: a ``_token_stream``
    #: keeps its sequence in the ranks' one single-sequence cache ("start" resets it).
    sequence_interleaving = "serial"

    def __init__(self, info: ModelInfo, backend: Backend, tokenizer: GLMTokenizer, config: GLMConfig) -> None:
        cmds = tokenizer.commands
        super().__init__(info, eos_token_ids=(cmds["<eop>"], cmds["<eos>"]))
        self.backend, self.tokenizer, self.config = backend, tokenizer, config
        #: the id the next batch's rows get on every rank
        self._batch_ids = 0

    # ---- the engine contract -------------------------------------------------------
    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return generation_prompt(self.tokenizer, text) if add_special else encode_with_masks(self.tokenizer, text)

    def _plain_ids(self, text: str) -> list[int]:  # chat message text: [MASK]-style markers stay text
        return self.tokenizer.encode(text)

    def _special_tokens(self) -> dict[str, int]:
        return dict(self.tokenizer.commands)

    def _detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """Every position's logits, read on every rank with a KV cache of its own (as
        :meth:`_hidden_states`): a sequence being generated is not disturbed."""
        lay = layout_of(ids, self.tokenizer.commands)
        out = self.backend("logits", [ids], [lay.positions(0, len(ids))], lay.context)
        return out[0]  # type: ignore[no-any-return]

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The final-LayerNorm hidden states (what the tied output layer reads) of one pass over
        ``ids`` on every rank, with the layout :meth:`logits` uses. ``tokenize(text)`` is the
        prompt GLM-130B's ``generate.py`` builds: the text, ``[gMASK]`` when it has no
        ``[MASK]``/``[sMASK]`` (``<eos>`` when it goes on after its last one), then ``<sop>``;
        :meth:`Model.embed` pools all of these, and the text attends both ways (the context
        before ``<sop>``), as in the model's own prompts. The ranks read it with a KV cache of its
        own: a sequence being generated (whose cache they hold) is not disturbed."""
        lay = layout_of(ids, self.tokenizer.commands)
        out = self.backend("hidden", [ids], [lay.positions(0, len(ids))], lay.context)
        return out[0]  # type: ignore[no-any-return]

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        lay = layout_of(prompt_ids, self.tokenizer.commands)
        done = 0

        def step(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
            nonlocal done
            out = self.backend("forward", [list(new_ids)], [lay.positions(done, len(new_ids))], lay.context, True)
            done += len(new_ids)
            return out[0, -1]  # type: ignore[no-any-return]

        self.backend("start", 1)
        ctx = self.config.max_sequence_length
        yield from generate_tokens(step, prompt_ids, config, context_length=ctx, prompt_chunk=ctx)

    def _batch_decoder(self, slots: int) -> GLM130BBatchDecoder:
        return GLM130BBatchDecoder(self)

    def _close(self) -> None:
        self.backend.close()

    # ---- beam search and blank filling --------------------------------------------
    def beam_search(self, prompt: str | Sequence[int], *, num_beams: int = 4, max_new_tokens: int = 32,
                    length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                    min_new_tokens: int = 0) -> list[BeamResult]:
        """The best ``num_beams`` continuations of ``prompt`` (text, or ids as :meth:`tokenize` gives)."""
        self._check_open()
        check_params(num_beams, max_new_tokens, min_new_tokens, no_repeat_ngram_size)
        ids = self._tokenize(prompt, True) if isinstance(prompt, str) else list(prompt)
        self._check_prompt(ids)
        max_new_tokens = min(max_new_tokens, self.config.max_sequence_length - len(ids))  # >= 1 after the check
        lay = layout_of(ids, self.tokenizer.commands)
        with self._lock:
            self.backend("start", 1)
            first = self.backend("forward", [ids], [lay.positions(0, len(ids))], lay.context, True)[0, -1]
            done = len(ids)

            def step(rows: list[int], tokens: list[int]) -> npt.NDArray[np.float32]:
                nonlocal done
                self.backend("reorder", rows)
                out = self.backend("forward", [[t] for t in tokens], [[lay.position(done)]] * len(tokens),
                                   lay.context, True)
                done += 1
                return out[:, -1]  # type: ignore[no-any-return]

            beams = beam_search(first, step, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                end_ids=sorted(self.eos_token_ids), length_penalty=length_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens)
        return [self._beam_result(b) for b in beams]

    def _beam_result(self, beam: Beam) -> BeamResult:
        body = beam.tokens[:-1] if beam.finished else beam.tokens
        return BeamResult(self._detokenize(body), beam.tokens, beam.score, beam.normalized, beam.finished)

    def fill_blanks(self, text: str, *, num_beams: int | None = None, on_text: Callable[[str], None] | None = None,
                    length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
                    **params: Any) -> BlankFill:
        """Fill every ``[MASK]``/``[sMASK]`` (or the appended ``[gMASK]``) of ``text``.

        Sampling/greedy take :class:`GenerationConfig` fields; ``num_beams`` switches to beam
        search (the best beam fills each blank). ``on_text`` receives text as it is produced.
        """
        self._check_open()
        config = GenerationConfig.build(self.generation_defaults, **params)

        def complete(ids: list[int]) -> list[int]:
            if num_beams:
                best = self.beam_search(ids, num_beams=num_beams, max_new_tokens=config.max_new_tokens,
                                        length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                        min_new_tokens=min_new_tokens)[0]
                if on_text is not None:
                    on_text(best.text)
                return list(best.token_ids)
            out: list[int] = []
            for chunk in self._stream_ids(ids, config):
                out.extend(chunk.token_ids)
                if on_text is not None and chunk.text:
                    on_text(chunk.text)
            return out

        return fill_blanks(self.tokenizer, text, complete)

    def fill_blanks_batch(self, texts: Sequence[str], *, slots: int | None = None,
                          on_text: Callable[[int, str], None] | None = None,
                          on_done: Callable[[int, BlankFill], None] | None = None, **params: Any) -> list[BlankFill]:
        """:meth:`fill_blanks` of several texts together, in input order: each text's blanks are
        filled left to right as alone, and the blanks being filled (one per text, at most ``slots``
        texts at a time; None: all) are decoded in one batch, one forward pass per step (the next
        blank of a text joins as its previous one ends, a waiting text as one is done). Greedy
        gives exactly the serial results; sampling as :class:`GLM130BBatchDecoder` says.
        ``on_text(index, text)`` receives text as it is produced, ``on_done(index, fill)`` each
        text's result as soon as it is complete."""
        if isinstance(texts, str):
            raise InvalidParameterError("texts must be a list of strings, not one string", where="texts",
                                        fix="pass [text], or call fill_blanks() for one text")
        if slots is not None and slots < 1:
            raise InvalidParameterError(f"slots must be at least 1, got {slots}", where="slots")
        self._check_open()
        config = GenerationConfig.build(self.generation_defaults, **params)
        fillers = [BlankFiller(self.tokenizer, t) for t in texts]
        results: list[BlankFill | None] = [None] * len(texts)
        running: dict[int, tuple[int, list[int]]] = {}  # batch key -> (text index, its blank's ids so far)
        waiting = deque(range(len(texts)))
        width = min(slots or len(texts), len(texts))

        def admit(i: int) -> None:
            ids = fillers[i].prompt()
            if ids is None:
                results[i] = done = fillers[i].result()
                if on_done is not None:
                    on_done(i, done)
                return
            running[batch.add(ids, config)] = (i, [])

        with self.new_batch(max(width, 1)) as batch:
            while waiting or running:
                while waiting and len(running) < width:
                    admit(waiting.popleft())
                for key, event in batch.step():
                    if isinstance(event, BaseException):
                        raise event
                    i, out = running[key]
                    out.extend(event.token_ids)
                    if on_text is not None and event.text:
                        on_text(i, event.text)
                    if event.finish_reason is not None:
                        del running[key]
                        fillers[i].take(out)
                        admit(i)  # the text's next blank takes the slot its last one freed
        return [r for r in results if r is not None]


class GLM130BBatchDecoder(RowBatchDecoder):
    """Several GLM-130B sequences in one forward pass per step, on every tensor-parallel rank
    (the shared :class:`~openllm_hub.engines.torch_batch.RowBatchDecoder`, whose doc says where
    results may differ from a single run).

    Rank 0 decides; every decision is one engine call each rank makes (:mod:`~openllm_hub_glm130b.ranks`):

    * a joining prompt is read alone (``batch_prefill``), in one piece with GLM's layout from
      :func:`~openllm_hub_glm130b.network.positions.layout_of` (the context before ``<sop>``
      attended both ways; position ids frozen at the ``[MASK]``/``[sMASK]`` being filled, or
      counting on after ``[gMASK]``), exactly as the single path reads it: its logits are the
      single run's. Its cache then becomes the batch's last row (``batch_merge``);
    * each step (``batch_decode``) feeds one token per row at the row's own position id (its
      layout's, for the token's index in its sequence), attending to its row's positions only
      (the ragged cache's padding is masked);
    * a sequence that leaves (finished, cancelled, failed) has its row dropped on every rank
      (``batch_drop``); the other rows are untouched.

    Ids outside the vocabulary are refused here, on rank 0, before anything is broadcast, so a
    bad sequence fails alone and the other ranks never see it. Each batch has its own rows on
    the ranks (its id), apart from the single-sequence cache of ``generate``, ``logits`` and
    beam search, which may run between two steps.
    """

    def __init__(self, model: GLM130BModel, *, step_tokens: int = 512, keep_logits: bool = False) -> None:
        super().__init__(model.info.context_length, step_tokens=step_tokens, keep_logits=keep_logits)
        self.model = model
        #: each row's layout, in row order
        self._layouts: list[Layout] = []
        with model._lock:  # the core makes a decoder outside the lock; the ranks take calls one at a time
            model._check_open()  # a closed model's other ranks are gone: nothing may be broadcast to them
            self.id = model._batch_ids
            model._batch_ids += 1
            self._open = True
            self._call("batch_open")

    def _call(self, op: str, *args: Any) -> Any:
        return self.model.backend(op, self.id, *args)

    def _live(self) -> bool:
        """Whether the ranks still hold this batch (not once it or the model is closed)."""
        return self._open and not self.model.backend.closed

    def _prefill(self, prompt_ids: list[int]) -> tuple[Any, npt.NDArray[np.float32]]:
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidParameterError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                                        where="prompt", fix="tokenize with this model")
        lay = layout_of(prompt_ids, self.model.tokenizer.commands)
        logits = self._call("batch_prefill", prompt_ids, lay.positions(0, len(prompt_ids)), lay.context)
        return lay, logits

    def _merge(self, cache: Any, length: int) -> None:
        self._call("batch_merge")
        self._layouts.append(cache)

    def _decode(self, tokens: list[int], positions: list[int]) -> npt.NDArray[np.float32]:
        ids = [lay.position(i) for lay, i in zip(self._layouts, positions, strict=True)]
        return self._call("batch_decode", tokens, ids)  # type: ignore[no-any-return]

    def _drop(self, index: int) -> None:
        self._layouts.pop(index)
        if self._live():
            self._call("batch_drop", index)

    def close(self) -> None:
        super().close()
        if self._live():
            self._call("batch_close")
        self._open = False
