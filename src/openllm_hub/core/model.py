"""Model: the one interface users touch, and the result types it returns.

An engine subclasses :class:`Model` and implements five small methods (``_tokenize``,
``_detokenize``, ``_token_stream``, ``_logits`` and optionally ``_close``), and for chat the
tokenization of template pieces where the defaults do not fit (``_plain_ids``,
``_special_tokens``/``_special_token_id``, ``_prompt_affixes``); for :meth:`Model.embed`
``_hidden_states``, for logprobs' token bytes ``_token_bytes``. Everything users
see, generate/stream/chat, stop strings, UTF-8-safe streaming, usage and timings, is built
here once, so every plugin behaves the same. So are the input guards: token ids outside the
vocabulary, an empty prompt, a prompt or id list longer than the context, and chat's merge of
the caller's stop strings with the template's. They run in the public methods before any
engine hook, in O(number of ids) python, never per generated token; engines do not repeat them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from openllm_hub.core.batch import Batch, BatchDecoder, Batching, Interleaving, PreparedStream, SequenceOutput
from openllm_hub.core.chat import ChatTemplate, Cut, Piece, Special, Text, get_template
from openllm_hub.core.chat_jinja import MODEL_TEMPLATE, ChatTemplateError, JinjaTemplate
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import TokenLogprob
from openllm_hub.core.tool_calls import (
    ToolCall,
    ToolCallStream,
    call_constraint,
    check_call_schemas,
    tool_choice_mode,
    validate_tools,
)
from openllm_hub.errors import InvalidParameterError, ModelClosedError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Wall-clock speeds of one call: prompt processing and generation."""

    prompt_seconds: float
    generation_seconds: float
    prompt_tokens_per_second: float
    generation_tokens_per_second: float


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed output. The last chunk has ``finish_reason`` set, plus usage.
    With ``logprobs``/``top_logprobs`` asked for, ``logprobs`` has one entry per id of
    ``token_ids`` (see :mod:`openllm_hub.core.logprobs`); otherwise it is None."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    #: chat with tools: the calls the model made (on the last chunk, with finish_reason "tool_calls")
    tool_calls: tuple[ToolCall, ...] | None = None


@dataclass(frozen=True)
class Completion:
    """The result of :meth:`Model.generate` or :meth:`Model.chat`."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    #: one per id of ``token_ids`` when logprobs were asked for, else None
    logprobs: tuple[TokenLogprob, ...] | None = None
    #: chat with tools: the calls the model made (``text`` is then the content around them)
    tool_calls: tuple[ToolCall, ...] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and where it runs (``openllm-hub info`` prints this)."""

    family: str
    format: str
    engine: str
    path: str
    device: str
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    vocab_size: int | None = None
    dtype: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d


class Model(ABC):
    """A loaded model. Use it as a context manager, or call :meth:`close` when done.

    Calls are serialised by a lock. Several sequences share one model through a batch
    (:meth:`generate_batch`, :meth:`stream_batch`, :meth:`new_batch`, the server's slots):
    an engine that decodes several sequences in one forward pass returns a
    :class:`~openllm_hub.core.batch.BatchDecoder` from :meth:`_batch_decoder`; the others are
    interleaved by the core, one token per sequence in turn, and say in
    :attr:`sequence_interleaving` where they keep their generation state (``"independent"``:
    in each ``_token_stream`` generator, the default; ``"swap"``: on the model, saved and
    restored by :meth:`_save_sequence_state` / :meth:`_restore_sequence_state`; ``"serial"``:
    sequences run one after the other). See :mod:`openllm_hub.core.batch`.
    """

    #: Chat template used when ``chat(template=None)``: a registered name, or ``"model"`` for
    #: the model's own template (:meth:`_set_model_chat_template`).
    default_chat_template: str = "plain"
    #: The Jinja template the model file ships (None: none, or it did not compile).
    model_chat_template: JinjaTemplate | None = None
    _model_template_error: ChatTemplateError | None = None
    _model_template_pieces: ChatTemplate | None = None
    #: Parameter defaults of this model (e.g. a chat model's lower temperature).
    generation_defaults: GenerationConfig = GenerationConfig()
    #: The store of read prompts of an engine that keeps one
    #: (:class:`openllm_hub.engines.prefix_cache.PrefixCache`), else None.
    prefix_cache: Any = None

    def __init__(self, info: ModelInfo, *, eos_token_ids: Iterable[int] = ()) -> None:
        self.info = info
        self.eos_token_ids = frozenset(eos_token_ids)
        self._closed = False
        self._lock = threading.RLock()

    # ---- what an engine implements -------------------------------------------------
    @abstractmethod
    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        """Ids of ``text``; with ``add_special`` the model's prompt prefix (e.g. BOS)."""

    @abstractmethod
    def _detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping special tokens; invalid UTF-8 becomes U+FFFD."""

    @abstractmethod
    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        """Yield sampled ids after ``prompt_ids``; the config's seed is always set. The ids are
        already checked: not empty, in the vocabulary, shorter than the context.

        The caller stops iterating at an end-of-sequence id, a stop string or
        ``max_new_tokens``; the engine stops when its context is full.
        """

    @abstractmethod
    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """Logits of shape ``(len(ids), vocab)``: row i predicts the id after ``ids[: i + 1]``.
        The ids are already checked: not empty, in the vocabulary, within the context."""

    def _close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Free engine resources (called once)."""

    def _token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token as logprobs report it. Default: its text alone, UTF-8;
        engines with a byte vocabulary (llama.cpp) give the piece's exact bytes."""
        return self._detokenize([token_id]).encode("utf-8")

    def _vocab_bytes(self) -> list[bytes]:
        """Every token id's bytes (index = id), for structured output's token masks; control
        tokens (BOS/EOS, ...) give ``b""`` (never allowed but as EOS). Engines with exact pieces
        (llama.cpp, the HF LLaMA engine) override ``_token_bytes`` and give those. Otherwise a
        token's bytes are what it adds after a plain prefix (``"a"``): a sentencepiece piece's
        leading space survives, which its text alone (``_detokenize([id])``) drops; a token
        whose text there is not whole UTF-8 (a lone byte) gives ``b""``."""
        vocab = self.vocab_size
        if vocab is None:
            raise InvalidParameterError("structured output needs the model's vocabulary size", where="json_schema")
        special = set(self._special_tokens().values()) | set(self.eos_token_ids)
        if type(self)._token_bytes is not Model._token_bytes:
            return [b"" if i in special else self._token_bytes(i) for i in range(vocab)]
        prefix = self._plain_ids("a")
        base = self._detokenize(prefix)
        out = []
        for i in range(vocab):
            text = "" if i in special else self._detokenize([*prefix, i])
            piece = text[len(base):] if text.startswith(base) else ""
            out.append(b"" if "\ufffd" in piece else piece.encode("utf-8"))
        return out

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """Hook for :meth:`embed`: the last hidden states of ``ids`` (shape ``(len(ids), dim)``,
        after the final norm, the vectors the output layer reads). The ids are already
        checked; an error about this one text (too long for the engine) has ``where="text"``
        (:meth:`embed` names the text). Default: this engine cannot embed (``where="embed"``)."""
        raise InvalidParameterError(f"the {self.info.engine} engine of this {self.info.family} model cannot compute "
                                    "embeddings", where="embed",
                                    fix="embeddings come from engines with a hidden-state hook: llama.cpp (GGUF "
                                        "files of any family), transformers (HF LLaMA folders, RWKV-4), the ChatGLM "
                                        "torch engine (v1/v2/v3), the rwkv package (RWKV-4 to 7) and GLM-130B's "
                                        "rank engines (any tensor-parallel size)")

    # ---- chat tokenization (defaults fit engines whose _tokenize parses no special tokens) ----
    def _plain_ids(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text: no prompt tokens (BOS, ...), and special-token
        spellings in it are *not* turned into control ids. Message text goes through this
        only. Default ``_tokenize(text, False)``; engines whose tokenizer parses specials
        out of text override it."""
        return self._tokenize(text, False)

    def _special_tokens(self) -> Mapping[str, int]:
        """The model's control tokens, spelling -> id (BOS/EOS, role tokens, ...). Default none."""
        return {}

    def _special_token_id(self, name: str) -> int | None:
        """Id of the control token spelled ``name``, None when the vocabulary has none."""
        return self._special_tokens().get(name)

    def _prompt_affixes(self) -> tuple[list[int], list[int]]:
        """The ids ``tokenize(add_special=True)`` puts before and after a text (LLaMA: BOS
        before; ChatGLM2/3: ``[gMASK] sop`` before; ChatGLM-6B, GLM-130B: after). Default:
        found by tokenizing a probe text with and without them."""
        with_ids, plain = self._tokenize("a", True), self._tokenize("a", False)
        for i in range(len(with_ids) - len(plain) + 1):
            if with_ids[i : i + len(plain)] == plain:
                return with_ids[:i], with_ids[i + len(plain) :]
        return self._tokenize("", True), []

    @property
    def vocab_size(self) -> int | None:
        """Number of token ids the model has (valid ids are ``0..vocab_size - 1``), which the
        id guard checks against: ``info.vocab_size``; None (no check) where it is unknown."""
        return self.info.vocab_size

    # ---- public API ------------------------------------------------------------------
    def prefix_cache_stats(self) -> dict[str, int] | None:
        """The prefix cache's budget, use and counters (``budget_bytes``, ``bytes``,
        ``entries``, ``hits``, ``misses``, ``evictions``, ``tokens_reused``); None when this
        engine keeps no prefix cache. The server exports them on ``/metrics``."""
        cache = self.prefix_cache
        return None if cache is None else {str(k): int(v) for k, v in cache.stats().items()}

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        self._check_open()
        return self._tokenize(text, add_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        self._check_open()
        id_list = list(ids)
        self._check_ids(id_list)
        return self._detokenize(id_list)

    def logits(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """One row of vocabulary logits per position (for verification and perplexity)."""
        self._check_open()
        if not ids:
            raise InvalidParameterError("logits() needs at least one token id", where="Model.logits")
        id_list = list(ids)
        self._check_ids(id_list)
        ctx = self.info.context_length
        if ctx is not None and len(id_list) > ctx:
            raise InvalidParameterError(f"{len(id_list)} token ids exceed the context of {ctx}", where="Model.logits",
                                        fix="pass fewer ids, or load with a larger context length")
        with self._lock:
            self._claim_engine_state(None)
            return self._logits(id_list)

    def embed(self, texts: Sequence[str], *, normalize: bool = False) -> list[list[float]]:
        """One vector per text: the **mean** of the model's last hidden states (after the final
        norm) over all of the text's tokens, prompt tokens such as BOS included
        (``tokenize(text)``), as llama.cpp's mean pooling does; a GGUF that declares its own
        pooling (an embedding model) gets llama.cpp's pooled vector instead. ``normalize``:
        scaled to unit L2 length (for cosine similarity by dot product)."""
        import numpy as np

        if isinstance(texts, str):
            raise InvalidParameterError("texts must be a list of strings, not one string", where="texts",
                                        fix="pass [text]")
        self._check_open()
        ctx = self.info.context_length
        out: list[list[float]] = []
        for i, text in enumerate(texts):
            at = f"texts[{i}]"
            if not isinstance(text, str):
                raise InvalidParameterError(f"{at} is a {type(text).__name__}, not a string", where=at)
            ids = self._tokenize(text, True)
            if not ids:
                raise InvalidParameterError(f"{at} is empty and this model adds no start token to it",
                                            where=at, fix="embed non-empty texts")
            self._check_ids(ids)
            if ctx is not None and len(ids) > ctx:
                raise InvalidParameterError(f"{at} is {len(ids)} tokens; the context holds {ctx}",
                                            where=at, fix="shorten the text or load with a larger context")
            with self._lock:
                self._check_open()
                self._claim_engine_state(None)
                try:
                    states = np.asarray(self._hidden_states(ids), dtype=np.float64)
                except InvalidParameterError as exc:
                    if exc.where != "text":
                        raise
                    raise InvalidParameterError(f"{at}: {exc.what}", where=at, fix=exc.fix) from None
            vec = states.mean(axis=0)
            if normalize:
                vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            out.append([float(v) for v in vec])
        return out

    def generate(self, prompt: str, **params: Any) -> Completion:
        """Complete ``prompt``. ``params`` are :class:`GenerationConfig` fields."""
        return self._collect(self.stream(prompt, **params))

    def stream(self, prompt: str, **params: Any) -> Iterator[Chunk]:
        """Like :meth:`generate`, yielding text as it is produced; the last chunk has usage."""
        config = GenerationConfig.build(self.generation_defaults, **params)
        self._check_open()
        ids = self._tokenize(prompt, True)
        return self._stream_ids(ids, config)

    def chat(self, messages: Sequence[Mapping[str, Any]], *, template: str | None = None,
             tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None, **params: Any) -> Completion:
        """Answer the last user message (or tool results) of ``messages`` through a chat template.

        ``tools`` (OpenAI's shape) are rendered by the template; the calls the model writes (in
        its template's format, see :mod:`openllm_hub.core.tool_calls`) come back as
        ``Completion.tool_calls`` with ``finish_reason="tool_calls"``, the text around them as
        ``text``. ``tool_choice``: ``"auto"`` (default), ``"none"`` (tools are not offered),
        ``"required"`` or ``{"type": "function", "function": {"name": ...}}`` (the answer is
        constrained to one call: its JSON schema, or a grammar of the format's own syntax)."""
        if tools is not None or tool_choice is not None:  # engines whose stream_chat predates tools never see them
            params.update(tools=tools, tool_choice=tool_choice)
        return self._collect(self.stream_chat(messages, template=template, **params))

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], *, template: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None, **params: Any
    ) -> Iterator[Chunk]:
        """:meth:`chat`, streamed: content goes out as it comes; text that may start a tool call
        is held until the answer ends, and the last chunk carries the calls."""
        tpl = self.chat_template(template)
        offered, reader, constraint = self._tool_plan(tpl, tools, tool_choice)
        pieces = tpl.pieces(messages, tools=offered)  # type: ignore[arg-type]
        if constraint is not None:
            for key in ("json_schema", "grammar", "json_object"):
                if params.get(key) not in (None, False):  # an empty schema {} is one too
                    raise InvalidParameterError(f"{key} cannot be set with tool_choice {tool_choice!r}, which "
                                                "constrains the answer to one tool call", where=key,
                                                fix="leave tool_choice out ('auto'), or drop the other constraint")
            params.update(constraint)
        config = GenerationConfig.build(self.generation_defaults, stop=self._chat_stops(tpl, params.pop("stop", None)),
                                        **params)
        self._check_open()
        stream = self._stream_ids(self._pieces_ids(pieces, model_specials=tpl.model_specials), config)
        if reader is None:
            return stream
        assert isinstance(stream, PreparedStream)
        return PreparedStream(_read_tool_calls(stream, reader), stream.prompt_ids, stream.config)

    def tool_call_reader(self, tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any = None,
                         template: str | None = None) -> ToolCallStream | None:
        """A fresh reader of the tool calls in an answer of :meth:`stream_chat` with these
        arguments (None: no calls are read), for callers that run the stream themselves (the
        server's batch)."""
        return self._tool_plan(self.chat_template(template), tools, tool_choice)[1]

    @staticmethod
    def _tool_plan(tpl: ChatTemplate, tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any
                   ) -> tuple[list[dict[str, Any]] | None, ToolCallStream | None, dict[str, Any] | None]:
        """(the tools to render, the reader of the answer, the generation parameter that
        constrains it: ``json_schema`` or ``grammar``, see :func:`call_constraint`)."""
        checked = validate_tools(tools) if tools is not None else None
        mode, name = tool_choice_mode(tool_choice, checked)
        if checked is None or mode == "none":
            return None, None, None
        if tpl.tools_fn is None:
            raise tpl.refuse_tools("tools")
        if mode == "auto":
            names = [t["function"]["name"] for t in checked]
            return checked, None if tpl.tool_format is None else ToolCallStream(tpl.tool_format, names=names), None
        fmt = tpl.tool_format or "hermes"
        check_call_schemas(checked, name)
        return checked, ToolCallStream(fmt, constrained=True), call_constraint(checked, fmt, name)

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]], *, template: str | None = None,
                        tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """The prompt ids :meth:`chat` feeds for ``messages``: the template's pieces with message
        text tokenized as plain text (a message cannot inject a control token) and control
        tokens inserted by id. (``chat_template().render()`` only shows them.)"""
        self._check_open()
        tpl = self.chat_template(template)
        offered = validate_tools(tools) if tools is not None else None
        return self._pieces_ids(tpl.pieces(messages, tools=offered),  # type: ignore[arg-type]
                                model_specials=tpl.model_specials)

    def special_tokens(self) -> dict[str, int]:
        """The model's control tokens, spelling -> id."""
        self._check_open()
        return dict(self._special_tokens())

    def special_token_id(self, name: str) -> int:
        """The id of the control token spelled ``name`` (``"</s>"``, ``"<|user|>"``, ...)."""
        self._check_open()
        tid = self._special_token_id(name)
        if tid is None:
            raise InvalidParameterError(f"the vocabulary of this {self.info.family} model has no special token "
                                        f"{name!r}", where="chat_template",
                                        fix="pick a chat template made for this model (openllm-hub templates lists "
                                            "them)")
        return tid

    def chat_template(self, name: str | None = None) -> ChatTemplate:
        """The template called ``name`` (None: the default). ``"model"`` is the model's own Jinja
        template (its control tokens, written by the template, become ids)."""
        name = name or self.default_chat_template
        if name != MODEL_TEMPLATE:
            return get_template(name)
        if self._model_template_error is not None:
            raise self._model_template_error
        if self.model_chat_template is None:
            raise InvalidParameterError(f"this {self.info.family} model ships no chat template", where="chat_template",
                                        fix="pick a named template (openllm-hub templates lists them)")
        if self._model_template_pieces is None:
            self._model_template_pieces = self.model_chat_template.chat_template(self._special_tokens())
        return self._model_template_pieces

    def _set_model_chat_template(self, source: object, variables: Mapping[str, str]) -> None:
        """Engines: the Jinja template the model file ships (GGUF ``tokenizer.chat_template``, HF
        ``chat_template``) becomes the default template, ``"model"``; ``variables`` are the
        special-token strings it sees (``bos_token``, ``eos_token``, ...). A template that does not
        compile leaves the default alone; ``chat_template("model")`` then raises its error.
        Family engines that set their own default afterwards (from what they know of the
        format) keep it; the model's is still there by name."""
        if not isinstance(source, str) or not source.strip():
            return
        try:
            self.model_chat_template = JinjaTemplate(source, dict(variables))
        except ChatTemplateError as exc:
            self._model_template_error = exc
            return
        self._model_template_pieces = None
        self.default_chat_template = MODEL_TEMPLATE

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return f"<{type(self).__name__} family={i.family} format={i.format} engine={i.engine} device={i.device}>"

    # ---- shared mechanics --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the model is closed", where=self.info.path, fix="load it again")

    def _check_ids(self, ids: Sequence[int]) -> None:
        """Refuse ids outside ``0..vocab_size - 1`` (one pass over the ids, before any engine call)."""
        vocab = self.vocab_size
        if vocab is None or not ids or (0 <= min(ids) and max(ids) < vocab):
            return
        bad = next(i for i in ids if not 0 <= i < vocab)
        raise InvalidParameterError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", where="token ids",
                                    fix="pass ids that tokenize() gives for this model")

    @staticmethod
    def _chat_stops(template: ChatTemplate, stop: Any) -> Any:
        """The stop strings of a chat call: the caller's ``stop`` (a string or a list of them),
        then the template's, each once, in that order. Anything else is handed on unchanged for
        :class:`GenerationConfig` to refuse. Engines that override :meth:`stream_chat` call this."""
        user = (stop,) if isinstance(stop, str) else (stop or ())
        if not isinstance(user, (list, tuple)):
            return stop
        return tuple(dict.fromkeys((*user, *template.stop)))

    def _pieces_ids(self, pieces: Sequence[Piece], *, model_specials: bool) -> list[int]:
        """Ids of a template's pieces: each run of :class:`Text` through :meth:`_plain_ids`,
        each :class:`Special` by id (an optional one the model lacks as text), then with
        ``model_specials`` the model's prompt tokens around them. Engines that override
        :meth:`stream_chat` call this."""
        ids: list[int] = []
        run: list[str] = []

        def flush() -> None:
            text = "".join(run)
            run.clear()
            if text:
                ids.extend(self._plain_ids(text))

        for piece in pieces:
            if isinstance(piece, Text):
                run.append(piece.text)
            elif isinstance(piece, Special):
                tid = self._special_token_id(piece.name)
                if tid is None and piece.optional:
                    run.append(piece.name)
                    continue
                flush()
                ids.append(self.special_token_id(piece.name) if tid is None else tid)
            elif isinstance(piece, Cut):
                flush()
            else:
                raise InvalidParameterError(f"a chat template gave {piece!r}, not a Text, Special or Cut piece",
                                            where="chat template")
        flush()
        if model_specials:
            head, tail = self._prompt_affixes()
            ids = [*head, *ids, *tail]
        return ids

    def _check_prompt(self, prompt_ids: Sequence[int]) -> None:
        """Refuse a prompt to generate from: no ids, ids outside the vocabulary, or so many
        that the context holds no generated token. Engines with their own generation entry
        points (beam search, ...) call this too."""
        if not prompt_ids:
            raise InvalidParameterError("the prompt is empty, and this model adds no start token to it",
                                        where="prompt", fix="give a non-empty prompt")
        self._check_ids(prompt_ids)
        ctx = self.info.context_length
        if ctx is not None and len(prompt_ids) >= ctx:
            raise InvalidParameterError(
                f"the prompt is {len(prompt_ids)} tokens; the context holds {ctx}",
                where="prompt",
                fix="shorten the prompt or load with a larger context length",
            )

    def _stream_ids(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        from openllm_hub.core.constrain import bind

        config = bind(config.with_seed(), self)
        self._check_prompt(prompt_ids)
        return PreparedStream(self._run(prompt_ids, config), prompt_ids, config)

    def _run(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        with self._lock:
            self._check_open()
            self._claim_engine_state(None)
            out = SequenceOutput(self._detokenize, self.eos_token_ids, prompt_ids, config, self._token_bytes)
            stream = self._token_stream(prompt_ids, config)
            try:
                for token in stream:
                    chunk = out.push(token)
                    if chunk is not None:
                        yield chunk
                    if out.done:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            yield out.final()

    @staticmethod
    def _collect(chunks: Iterator[Chunk]) -> Completion:
        texts: list[str] = []
        ids: list[int] = []
        scores: list[TokenLogprob] | None = None
        last: Chunk | None = None
        calls: list[ToolCall] = []
        for chunk in chunks:
            texts.append(chunk.text)
            calls.extend(chunk.tool_calls or ())
            ids.extend(chunk.token_ids)
            if chunk.logprobs is not None:
                scores = scores if scores is not None else []
                scores.extend(chunk.logprobs)
            last = chunk
        assert last is not None and last.finish_reason is not None and last.usage and last.timings
        text = "".join(texts).strip() if calls else "".join(texts)  # content around calls, as the formats read it
        return Completion(text, tuple(ids), last.finish_reason, last.usage, last.timings,
                          None if scores is None else tuple(scores), tuple(calls) if calls else None)

    # ---- several sequences at once (continuous batching) -------------------------------
    #: Where this engine keeps its generation state, for the core's interleaving of several
    #: sequences when it has no batched decoder: ``"independent"`` (each ``_token_stream``
    #: generator holds its own cache or state, as with ``generate_tokens`` and a per-call
    #: cache), ``"swap"`` (one state on the model: implement :meth:`_save_sequence_state` and
    #: :meth:`_restore_sequence_state`) or ``"serial"`` (one sequence after the other).
    #: The conformance kit's batch checks catch a wrong claim.
    sequence_interleaving: Interleaving = "independent"

    #: who used a "swap" engine's one state last (an interleaving decoder, or None)
    _state_user: Any = None

    def _claim_engine_state(self, user: Any) -> None:
        """Called (under the lock) before ``user`` uses a ``"swap"`` engine's one generation
        state (None: a single call): the interleaving decoder that used it last saves its
        running sequence's state first. Engines with their own entry points into that state
        call it too."""
        if self.sequence_interleaving != "swap":
            return
        previous = self._state_user
        if previous is not None and previous is not user:
            previous.evict()
        self._state_user = user

    def _batch_decoder(self, slots: int) -> BatchDecoder | None:
        """Hook for engines that decode several sequences in one forward pass: a
        :class:`~openllm_hub.core.batch.BatchDecoder` for up to ``slots`` sequences at once
        (join between steps, one token per sequence per step, leave and free the cache). None
        (the default): the core interleaves ``_token_stream`` generators instead."""
        return None

    def _save_sequence_state(self) -> Any:
        """``"swap"`` engines: the generation state of the sequence running now (e.g. its KV
        cache and position), taken before another sequence runs."""
        raise NotImplementedError(f"{type(self).__name__} declares sequence_interleaving='swap' "
                                  "but does not implement _save_sequence_state")

    def _restore_sequence_state(self, state: Any) -> None:
        """``"swap"`` engines: make ``state`` (from :meth:`_save_sequence_state`) current again."""
        raise NotImplementedError(f"{type(self).__name__} declares sequence_interleaving='swap' "
                                  "but does not implement _restore_sequence_state")

    @property
    def batching(self) -> Batching:
        """How this model serves several sequences: ``"batched"`` (one forward pass for all),
        ``"interleaved"`` (one token each in turn) or ``"serial"`` (one after the other)."""
        if type(self)._batch_decoder is not Model._batch_decoder:
            return "batched"
        return "serial" if self.sequence_interleaving == "serial" else "interleaved"

    def new_batch(self, slots: int | None = None) -> Batch:
        """An empty :class:`~openllm_hub.core.batch.Batch` of this model, for callers that
        schedule sequences themselves (the server does): ``add`` sequences, ``step`` them,
        ``cancel`` one; at most ``slots`` at a time (None: no limit)."""
        self._check_open()
        return Batch(self, slots)

    def _batch_requests(self, prompts: Sequence[str], params: Sequence[Mapping[str, Any]] | None,
                        shared: Mapping[str, Any]) -> list[tuple[list[int], GenerationConfig]]:
        if isinstance(prompts, str):
            raise InvalidParameterError("prompts must be a list of strings, not one string", where="prompts",
                                        fix="pass [prompt], or call generate() for one prompt")
        if params is not None and len(params) != len(prompts):
            raise InvalidParameterError(f"{len(params)} parameter sets for {len(prompts)} prompts", where="params",
                                        fix="give one mapping of parameters per prompt, or none")
        self._check_open()
        out = []
        for i, prompt in enumerate(prompts):
            config = GenerationConfig.build(self.generation_defaults, **{**shared, **(params[i] if params else {})})
            ids = self._tokenize(prompt, True)
            self._check_prompt(ids)
            out.append((ids, config.with_seed()))
        return out

    def stream_batch(self, prompts: Sequence[str], params: Sequence[Mapping[str, Any]] | None = None, *,
                     slots: int | None = None, **shared: Any) -> Iterator[tuple[int, Chunk]]:
        """Generate for every prompt together, yielding ``(index, chunk)`` as text is produced;
        each index's last chunk has its finish reason and usage.

        ``params``: one mapping of :class:`GenerationConfig` fields per prompt (its own seed,
        temperature, stop strings, ...), over the ``shared`` ones. At most ``slots`` sequences
        run at a time (None: all); the next prompt joins as soon as one finishes. Every
        prompt and parameter set is checked before anything runs. Each sequence samples from
        its own generator, seeded from its config, so a prompt gives the same text as
        :meth:`generate` with the same seed and parameters: token for token on engines that
        interleave (see :attr:`batching`); an engine whose batched forward pass rounds
        differently from a single row's documents where its results can differ. A sequence
        that fails raises its exception here (the batch ends)."""
        requests = self._batch_requests(prompts, params, shared)
        from openllm_hub.core.batch import stream_batch

        return stream_batch(self, requests, slots)

    def generate_batch(self, prompts: Sequence[str], params: Sequence[Mapping[str, Any]] | None = None, *,
                       slots: int | None = None, **shared: Any) -> list[Completion]:
        """Complete every prompt in one batch (offline jobs); the results are in input order.
        Parameters as :meth:`stream_batch`: per-prompt ``params`` over ``shared`` ones."""
        chunks: list[list[Chunk]] = [[] for _ in prompts]
        for index, chunk in self.stream_batch(prompts, params, slots=slots, **shared):
            chunks[index].append(chunk)
        return [self._collect(iter(c)) for c in chunks]


def _read_tool_calls(chunks: Iterator[Chunk], reader: ToolCallStream) -> Iterator[Chunk]:
    """``chunks`` with their text passed through ``reader``: content as it may go out, the calls
    on the last chunk (``finish_reason="tool_calls"`` when there are any)."""
    for chunk in chunks:
        text = reader.feed(chunk.text)
        if chunk.finish_reason is None:
            yield replace(chunk, text=text)
            continue
        rest, calls = reader.finish()
        yield replace(chunk, text=text + rest, tool_calls=tuple(calls) if calls else None,
                      finish_reason="tool_calls" if calls else chunk.finish_reason)
