"""llama.cpp as a shared engine: GGUF files of any llama.cpp architecture (through llama-cpp-python).

Families whose checkpoints llama.cpp runs (LLaMA, ChatGLM2/3, ...) load their GGUF files with
:func:`load_gguf`, giving their family name and options (a :class:`LlamaCppOptions` subclass)
and, when their tokenization or chat defaults differ from llama.cpp's plain behaviour, a
:class:`LlamaCppModel` subclass. The SDK's :class:`~openllm_hub.core.model.Model` sits
directly on llama.cpp's own pieces: the context evaluates tokens (``Llama.eval``), a llama.cpp
sampler chain built from the :class:`~openllm_hub.core.config.GenerationConfig` picks them
(repeat penalty over a window, top-k, top-p, temperature, a seeded draw; greedy at
temperature 0), so generation costs what llama-cpp-python's own loop costs. Token pieces come
from llama.cpp's vocabulary.

``llama_cpp`` is imported only inside the functions that run it, and openllm_hub itself does
not depend on llama-cpp-python: a plugin that runs on this engine declares it (e.g.
``llama-cpp-python==0.3.36``). :func:`device_rows` gives such a plugin its device rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openllm_hub.core.chat_jinja import check_template_metadata
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.debug import debug_enabled
from openllm_hub.core.detok import join_pieces
from openllm_hub.core.device import DeviceSupport, check_threads, thread_limit
from openllm_hub.core.family import LoadRequest
from openllm_hub.core.gguf_check import check_gguf, find_nonfinite, hparam
from openllm_hub.core.logprobs import score
from openllm_hub.core.model import Model, ModelInfo
from openllm_hub.engines.prefix_cache import PrefixCache, default_prefix_cache_mib
from openllm_hub.errors import (
    CorruptFileError,
    IncompatibleDeviceError,
    InvalidParameterError,
    NotFoundError,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    from llama_cpp import Llama

    from openllm_hub.core.batch import BatchDecoder

#: GPU memory kept free for the CUDA context and llama.cpp's compute buffers when layers are
#: fitted automatically (MiB). llama.cpp's compute buffer for a 7B model at 4k context is a few
#: hundred MiB; the CUDA context itself takes 300-500 MiB.
GPU_RESERVE_MIB = 1024
DEFAULT_MAX_CTX = 4096
#: llama.cpp's context length is a 32-bit count.
MAX_CTX = 2**31 - 1


class LlamaCppOptions(BaseModel):
    """Load options of the llama.cpp engine; a family's options model extends this one with
    its own fields (device options dtype/gpu_layers/threads are the core's)."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int | None = Field(None, ge=16, description="context length (default: the model's, at most 4096)")
    n_batch: int = Field(512, ge=1, description="prompt tokens evaluated per batch (llama.cpp)")
    use_mmap: bool = Field(True, description="memory-map the GGUF file (llama.cpp)")
    kv_cache_type: Literal["f16", "f32"] = Field("f16", description="llama.cpp KV cache type (f32 for exactness)")
    lora: list[tuple[str, float]] = Field(default_factory=list, description="GGUF LoRA adapters (path, scale)")
    chat_template: str | None = Field(None, description="default chat template name")
    repack: bool | None = Field(
        None, description="llama.cpp's repacked CPU weight buffers (its --no-repack turns them off); "
                          "None: on, except on CPUs with AMX, where llama.cpp's AMX path is known to crash")
    seed: int | None = Field(None, ge=0, lt=2**32, description="default sampling seed (per call: generate(seed=...))")
    prefix_cache_mib: int | None = Field(
        None, ge=0, description="memory for the KV caches of read prompts, reused by prompts sharing their prefix "
                                "(least recently used evicted first); None: an eighth of the free RAM, at most "
                                "4096; 0: off")


# ---- llama.cpp facts -------------------------------------------------------------------
def _ggml_backends() -> list[str]:
    """Names of the ggml backends compiled into this llama-cpp-python (CPU, BLAS, CUDA, ...)."""
    try:
        from llama_cpp._ggml import libggml
    except (ImportError, OSError):  # pragma: no cover - depends on the build
        return []
    try:
        libggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        libggml.ggml_backend_reg_count.argtypes = []
        libggml.ggml_backend_reg_get.restype = ctypes.c_void_p
        libggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        libggml.ggml_backend_reg_name.restype = ctypes.c_char_p
        libggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        n = libggml.ggml_backend_reg_count()
        return [libggml.ggml_backend_reg_name(libggml.ggml_backend_reg_get(i)).decode() for i in range(n)]
    except AttributeError:  # pragma: no cover - older ggml without a backend registry
        return []


@lru_cache(maxsize=1)
def capabilities() -> dict[str, Any]:
    """What the installed llama-cpp-python was built with: version, backends, GPU offload,
    BLAS and the CPU features from llama.cpp's system info (``openllm-hub devices``)."""
    import llama_cpp

    with _quiet_llama():
        llama_cpp.llama_backend_init()
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    backends = _ggml_backends()
    cpu_features: list[str] = []
    for part in info.split("|"):
        part = part.strip()
        if part.startswith("CPU :"):
            part = part[len("CPU :"):].strip()
        name, _, value = part.partition("=")
        if value.strip() == "1":
            cpu_features.append(name.strip())
    return {
        "version": llama_cpp.__version__,
        "backends": backends,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "blas": any(b.upper() == "BLAS" for b in backends) or "BLAS = 1" in info,
        "mmap": bool(llama_cpp.llama_supports_mmap()),
        "cpu_features": cpu_features,
        "system_info": info,
    }


def default_repack() -> bool:
    """Whether weights are repacked into llama.cpp's extra CPU buffer layouts by default: yes,
    except on CPUs reporting AMX-INT8. There llama.cpp 0.3.36's AMX path segfaults on quantized
    matrices as soon as a batch has more than one token (seen where the kernel does not grant
    the AMX state, as on this project's build machines). Repacking changes only the memory
    layout of the weights, never the results."""
    return "AMX_INT8" not in capabilities()["cpu_features"]


def _available(kind: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        caps = capabilities()
        if kind == "blas":
            return bool(caps.get("blas")), ("the installed llama-cpp-python has no BLAS "
                                            "(see README: build with OpenBLAS)")
        return bool(caps.get("gpu_offload")), ("the installed llama-cpp-python has no GPU offload "
                                               "(build with -DGGML_CUDA=on)")

    return check


def device_rows(formats: tuple[str, ...] = ("gguf",)) -> tuple[DeviceSupport, ...]:
    """The :class:`DeviceSupport` rows of this engine for a family's ``formats``: one CUDA GPU
    with partial offload, the CPU with BLAS, the plain CPU. Each checks at load time that the
    installed llama-cpp-python was built for it."""
    return (
        DeviceSupport("cuda", ("file",), formats=formats, partial_offload=True, available=_available("gpu")),
        DeviceSupport("cpu", ("file",), formats=formats, blas=True, available=_available("blas")),
        DeviceSupport("cpu", ("file",), formats=formats),
    )


_LOG_LOCK = threading.RLock()
#: Open ``capture_log`` blocks, innermost last; llama.cpp's log goes to the innermost.
_SINKS: list[list[str]] = []
_COLLECTOR: Any = None


def _collector() -> Any:
    """The one ctypes log callback (kept alive here): it feeds the innermost sink, and
    otherwise drops llama.cpp's chatter (printed on stderr only when :func:`debug_enabled`)."""
    global _COLLECTOR
    if _COLLECTOR is None:
        import llama_cpp

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", errors="replace")
            if _SINKS:
                _SINKS[-1].append(line)
            if debug_enabled():
                sys.stderr.write(line)

        _COLLECTOR = collect
    return _COLLECTOR


def quiet_llama_cpp() -> None:
    """Route llama.cpp's log through :func:`_collector` from now on (llama-cpp-python's own
    logger prints errors on stderr, which would add lines before the SDK's one-line error)."""
    import llama_cpp
    import llama_cpp._logger  # installs its own callback when first imported: ours goes after it

    with _LOG_LOCK:
        llama_cpp.llama_log_set(_collector(), ctypes.c_void_p(0))


@contextlib.contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (instead of printing them) while the block runs, so a
    failed load or quantization can say *why*. What C code writes straight to the stderr
    file descriptor meanwhile (ggml's ``ggml_validate_row_data: found nan ...``) is collected
    too, unless :func:`debug_enabled`, where it goes to stderr as written."""
    lines: list[str] = []
    with _LOG_LOCK:
        quiet_llama_cpp()
        _SINKS.append(lines)
        try:
            with _stderr_into(lines):
                yield lines
        finally:
            _SINKS.pop()


@contextlib.contextmanager
def _stderr_into(lines: list[str]) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file while the block runs; its text is added to
    ``lines`` after. (llama.cpp is kept from aborting by validating its input first, see
    :func:`load_gguf`; with ``OPENLLM_HUB_DEBUG`` nothing is redirected, so the text of an
    abort would be seen.)"""
    if debug_enabled():
        yield
        return
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", errors="replace").splitlines(keepends=True))


@contextlib.contextmanager
def _quiet_llama() -> Iterator[None]:
    with capture_log():
        yield


#: llama.cpp's summary lines, which say that something failed but not what.
_GENERIC = ("failed to load model", "failed to read tensor data", "failed to quantize")


def log_error(lines: Sequence[str]) -> str:
    """The most telling line of a llama.cpp log: the first one naming a problem, skipping
    the generic summaries llama.cpp adds on its way out."""
    text = "".join(lines)
    candidates = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keys = ("error", "failed", "corrupt", "not within", "invalid", "expected", "wrong", "unsupported", "cannot")
    hits = [ln for ln in candidates if any(k in ln.lower() for k in keys)]
    specific = [ln for ln in hits if not any(g in ln.lower() for g in _GENERIC)]
    if specific:
        return specific[0]
    if hits:
        return hits[-1]
    return candidates[-1] if candidates else "no message from llama.cpp"


# ---- file types ----------------------------------------------------------------------------
def ftype_names() -> dict[int, str]:
    """llama.cpp's file-type ids -> our names (f32, f16, q4_0, q4_K_M, ...)."""
    import llama_cpp

    out: dict[int, str] = {}
    for attr in dir(llama_cpp):
        if not attr.startswith("LLAMA_FTYPE_") or attr == "LLAMA_FTYPE_GUESSED":
            continue
        value = getattr(llama_cpp, attr)
        if not isinstance(value, int):
            continue
        name = attr[len("LLAMA_FTYPE_"):].replace("MOSTLY_", "").replace("ALL_", "")
        out[value] = name[0].lower() + name[1:] if "_K" in name else name.lower()
    return out


# ---- placement ---------------------------------------------------------------------------
def plan_gpu_layers(file_bytes: int, n_layers: int, free_mib: int, kv_bytes_per_layer: int,
                    reserve_mib: int = GPU_RESERVE_MIB) -> int:
    """How many layers fit in ``free_mib`` of GPU memory: -1 for all of them (the output layer
    too), else a count. A layer is charged the file size divided by the layer count (an
    overestimate, since embeddings are in the file too) plus its KV cache."""
    if n_layers <= 0:
        return -1
    per_layer = file_bytes / n_layers + kv_bytes_per_layer
    budget = (free_mib - reserve_mib) * 1024 * 1024
    if budget <= 0:
        return 0
    fit = int(budget // per_layer)
    return -1 if fit >= n_layers + 1 else min(fit, n_layers)


def _kv_bytes_per_layer(meta: dict[str, Any], arch: str, n_ctx: int, kv_type: str) -> int:
    def num(key: str, default: int) -> int:  # per-layer arrays (hybrid architectures): the widest layer
        v = meta.get(f"{arch}.{key}", default)
        v = max(v) if isinstance(v, list) and v else v
        return int(v) if isinstance(v, int) and v > 0 else default

    n_head = num("attention.head_count", 1)
    n_kv = num("attention.head_count_kv", n_head)
    k_len = num("attention.key_length", num("embedding_length", 0) // n_head)  # head sizes other than width/heads
    return n_ctx * n_kv * (k_len + num("attention.value_length", k_len)) * (4 if kv_type == "f32" else 2)


# ---- the model -------------------------------------------------------------------------------
def _u8_pointer(buf: npt.NDArray[np.uint8]) -> Any:
    """A ``uint8_t *`` to ``buf``'s bytes for llama.cpp's state calls (``buf`` must outlive it)."""
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


class LlamaCppModel(Model):
    """A GGUF model on llama.cpp. One context; its KV cache is reused across calls when a new
    prompt starts with the tokens already evaluated (chat turns), and prompts sharing a longer
    prefix with an earlier one (of this path or of a batch) take its KV cells from the
    :attr:`prefix_cache` (``prefix_cache_mib``; see :meth:`_remember_prefix`).

    Families subclass it when their prompts differ from llama.cpp's plain tokenization (a
    prefix of special tokens, role tokens) or when they bring chat defaults: override
    :meth:`_configure` (called once the context exists, before the caller's template and
    seed apply) and :meth:`_tokenize`, and pass the class to :func:`load_gguf`. Chat prompts do
    not go through :meth:`_tokenize`: template text is tokenized with control-token parsing off
    (:meth:`_plain_ids`) and the template's special tokens are inserted by id.
    """

    def __init__(self, llm: Llama, info: ModelInfo, *, eos_token_ids: Sequence[int], add_space_prefix: bool,
                 default_template: str | None, seed: int | None, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(info, eos_token_ids=eos_token_ids)
        self._llm = llm
        self._n_vocab = llm.n_vocab()
        self._n_ctx = llm.n_ctx()
        self._vocab = llm._model.vocab
        self._pieces: dict[int, tuple[bytes, bool]] = {}
        self._controls: dict[str, int] | None = None
        self._add_space_prefix = add_space_prefix
        #: KV caches of read prompts, for prompts sharing their prefix (load_gguf sizes it; see _remember_prefix)
        self.prefix_cache = PrefixCache(0)
        self._adopt_gguf_chat_template(metadata or {})
        self._configure(dict(metadata or {}))
        if default_template:
            self.default_chat_template = default_template
        if seed is not None:
            self.generation_defaults = self.generation_defaults.model_copy(update={"seed": seed})

    def _adopt_gguf_chat_template(self, metadata: Mapping[str, Any]) -> None:
        """The file's Jinja ``tokenizer.chat_template`` becomes the default template (``"model"``),
        with the spellings of its BOS/EOS/UNK/PAD ids as ``bos_token`` etc. (as llama.cpp passes them)."""
        import llama_cpp

        variables = {}
        for kind in ("bos", "eos", "unk", "pad"):
            tid = metadata.get(f"tokenizer.ggml.{kind}_token_id")
            if isinstance(tid, int) and 0 <= tid < self._n_vocab:
                variables[f"{kind}_token"] = llama_cpp.llama_vocab_get_text(self._vocab, tid).decode("utf-8", "replace")
        self._set_model_chat_template(metadata.get("tokenizer.chat_template"), variables)

    def _configure(self, metadata: dict[str, Any]) -> None:
        """Hook for family subclasses: special ids, extra eos ids, chat template and sampling
        defaults, from the file's GGUF ``metadata`` and the vocabulary."""

    @property
    def llama(self) -> Llama:
        """The underlying ``llama_cpp.Llama`` (for what the SDK does not cover)."""
        self._check_open()
        return self._llm

    def _special_token_id(self, name: str) -> int | None:
        """The id of the control token spelled ``name`` (e.g. ``"<|user|>"``), None if the
        vocabulary has no such token."""
        ids = list(self._llm.tokenize(name.encode("utf-8"), add_bos=False, special=True))
        if len(ids) != 1:
            return None
        import llama_cpp

        attr = int(llama_cpp.llama_vocab_get_attr(self._vocab, ids[0]))
        return ids[0] if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL else None

    def _special_tokens(self) -> dict[str, int]:
        """Every control token of the vocabulary, spelling -> id (read once)."""
        if self._controls is None:
            import llama_cpp

            self._controls = {}
            for i in range(self._n_vocab):
                if int(llama_cpp.llama_vocab_get_attr(self._vocab, i)) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                    text = llama_cpp.llama_vocab_get_text(self._vocab, i)
                    self._controls[text.decode("utf-8", errors="replace")] = i
        return self._controls

    def _text_ids(self, text: str) -> list[int]:
        """llama.cpp's ids of plain ``text`` (no BOS; special-token spellings stay text)."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else []

    def _plain_ids(self, text: str) -> list[int]:
        # chat message text: control-token parsing off; template specials are inserted by id
        return self._text_ids(text)

    # -- tokens
    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=False))

    def _piece(self, token: int) -> tuple[bytes, bool]:
        """(bytes, is a text piece) of a token; control and unknown tokens give no bytes."""
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            attr = int(llama_cpp.llama_vocab_get_attr(self._vocab, token))
            piece = (buf.raw[:n], bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_NORMAL))
            self._pieces[token] = piece
        return piece

    def _detokenize(self, ids: Sequence[int]) -> str:
        # special=False above renders control/unknown tokens as nothing; see detok.join_pieces
        return join_pieces((self._piece(int(t)) for t in ids), strip_first_space=self._add_space_prefix)

    # -- generation
    def _sampler(self, config: GenerationConfig, prompt_ids: Sequence[int]) -> Any:
        from llama_cpp import _internals

        s: Any = getattr(_internals, "LlamaSampler")()  # noqa: B009 - untyped in llama-cpp-python
        penalize = config.repeat_penalty != 1.0 and config.repeat_last_n > 0
        if penalize:
            s.add_penalties(n_vocab=self._n_vocab, penalty_last_n=config.repeat_last_n,
                            penalty_repeat=config.repeat_penalty, penalty_freq=0.0, penalty_present=0.0)
        if config.greedy:
            s.add_greedy()
        else:
            if config.top_k > 0:
                s.add_top_k(config.top_k)
            if config.top_p < 1.0:
                s.add_top_p(config.top_p, 1)
            s.add_temp(config.temperature)
            assert config.seed is not None
            s.add_dist(config.seed)
        if penalize:
            # As llama.cpp's CLI does: the prompt counts toward the penalty window too.
            for t in prompt_ids[-config.repeat_last_n:]:
                s.accept(t)
        from openllm_hub.core.constrain import mask_for

        mask = mask_for(config)
        return s if mask is None else _MaskedSampler(s, mask, self._n_vocab)

    def _evaluate_prompt(self, prompt_ids: list[int]) -> None:
        """Bring the context to ``prompt_ids``, reusing the cached prefix of the last call or a
        longer one from the prefix cache, which then gets this prompt's cells."""
        import numpy as np

        llm = self._llm
        cached = llm.input_ids[: llm.n_tokens]
        keep = 0
        for a, b in zip(cached, prompt_ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt_ids) - 1)  # at least one token is evaluated, for fresh logits
        if len(prompt_ids) - keep > self.prefix_cache.block_tokens:  # a stored prefix may save more
            hit = self.prefix_cache.lookup(prompt_ids, max_length=len(prompt_ids) - 1)
            if hit is not None and hit.length > keep:
                llm.n_tokens = 0
                if self._restore_prefix(llm._ctx.ctx, llm._ctx.memory, 0, hit.value, hit.length):
                    llm.input_ids[: hit.length] = prompt_ids[: hit.length]
                    keep = hit.length
                else:
                    keep = 0
        llm.n_tokens = keep
        llm.eval(prompt_ids[keep:])
        if self.prefix_cache.enabled and bool(np.isfinite(self._last_logits()).all()):  # never store a broken state
            self._remember_prefix(llm._ctx.ctx, 0, prompt_ids)

    # -- the prefix cache (openllm_hub.engines.prefix_cache), shared by the single path and the batched decoder
    def _remember_prefix(self, ctx: Any, seq_id: int, prompt_ids: Sequence[int]) -> None:
        """Store sequence ``seq_id``'s KV cells of context ``ctx``, which hold exactly ``prompt_ids``
        (called right after a successful decode of the prompt's last token), unless the cache
        holds them already: llama.cpp's ``llama_state_seq_get_data``, a blob any context of this
        model can take back (same KV type)."""
        import llama_cpp

        cache = self.prefix_cache
        if not cache.enabled or cache.covers(prompt_ids):
            return
        size = int(llama_cpp.llama_state_seq_get_size(ctx, seq_id))
        if size > cache.budget_bytes:
            return
        import numpy as np

        # numpy.empty, not a ctypes array: that one is zero-filled first, which took three
        # quarters of the store's time (25 ms vs 6 ms for a 37 MB state; benchmarks/RESULTS.md)
        buf = np.empty(size, dtype=np.uint8)
        written = int(llama_cpp.llama_state_seq_get_data(ctx, _u8_pointer(buf), size, seq_id))
        if written:
            cache.put(prompt_ids, (buf, written), size)

    @staticmethod
    def _restore_prefix(ctx: Any, memory: Any, seq_id: int, value: Any, length: int) -> bool:
        """Put a stored prompt's KV cells into sequence ``seq_id`` (emptied first) and keep its
        first ``length`` positions; False (the sequence left empty) when llama.cpp finds no room."""
        import llama_cpp

        buf, written = value
        llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        if int(llama_cpp.llama_state_seq_set_data(ctx, _u8_pointer(buf), written, seq_id)) == 0:
            llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
            return False
        llama_cpp.llama_memory_seq_rm(memory, seq_id, length, -1)
        return True

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        llm = self._llm
        try:
            self._evaluate_prompt(prompt_ids)
        except RuntimeError as exc:
            llm.n_tokens = 0
            raise InvalidParameterError(f"llama.cpp could not evaluate the prompt: {exc}",
                                        where=self.info.path) from exc
        sampler = self._sampler(config, prompt_ids)
        scored, top_k = config.wants_logprobs, config.top_logprobs
        try:
            while True:
                logits = self._last_logits()
                self._check_finite(logits)
                # logprobs: the raw row the context computed, read before the sampler chain runs
                row = logits.copy() if scored else None
                token = sampler.sample(llm._ctx, -1)
                yield score(row, token, top_k) if row is not None else token
                if llm.n_tokens + 1 >= self._n_ctx:
                    return
                llm.eval([token])
        finally:
            sampler.close()

    # -- several sequences in one forward pass (openllm_hub.engines.llama_cpp_batch)
    def _batch_decoder(self, slots: int) -> BatchDecoder | None:
        """A decoder of up to ``slots`` sequences in one ``llama_decode`` per step, on its own
        context over this model's weights (the single-sequence path keeps the model's context)."""
        from openllm_hub.engines.llama_cpp_batch import LlamaCppBatchDecoder

        return LlamaCppBatchDecoder(self, slots)

    # -- several sequences without a batched decoder: the core interleaves them, swapping the one context's state
    #: One context holds one sequence's KV cache, so the core's interleaving of several
    #: sequences saves and restores it around each switch (see openllm_hub.core.batch).
    sequence_interleaving = "swap"

    def _save_sequence_state(self) -> Any:
        """The running sequence's state: its evaluated ids and its KV cells (llama.cpp's
        ``llama_state_seq_get_data`` of sequence 0, the used cells only, no logits)."""
        import llama_cpp
        import numpy as np

        llm = self._llm
        ctx = llm._ctx.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        buf = np.empty(size, dtype=np.uint8)  # not zero-filled (see _remember_prefix)
        written = int(llama_cpp.llama_state_seq_get_data(ctx, _u8_pointer(buf), size, 0))
        return (llm.n_tokens, llm.input_ids[: llm.n_tokens].copy(), buf, written)

    def _restore_sequence_state(self, state: Any) -> None:
        import llama_cpp

        n_tokens, ids, buf, written = state
        llm = self._llm
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        if written and int(llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, _u8_pointer(buf), written, 0)) == 0:
            llm.n_tokens = 0
            raise RuntimeError("llama.cpp could not restore a sequence's KV cache")
        llm.input_ids[:n_tokens] = ids
        llm.n_tokens = n_tokens

    def _last_logits(self) -> npt.NDArray[np.float32]:
        import numpy as np

        ptr = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def _check_finite(self, logits: npt.NDArray[np.float32]) -> None:
        """Refuse non-finite logits, naming the tensor of the file that holds NaN/Inf.

        Checked on every logits row llama.cpp returns (one ``isfinite`` over the vocabulary
        per token, negligible next to the forward pass) rather than by scanning the weights
        at load: a scan reads the whole file (gigabytes, defeating the memory map's lazy
        loading) on every load to find a fault that is rare. A NaN confined to one row of the
        embedding shows only when that token comes, which the per-step check also catches.
        Only then is the file scanned (:func:`~openllm_hub.core.gguf_check.find_nonfinite`)."""
        import numpy as np

        if bool(np.isfinite(logits).all()):
            return
        self._llm.n_tokens = 0  # the context holds non-finite state: the next call starts afresh
        path = self.info.path
        name = find_nonfinite(check_gguf(path, model=False)) if path else None
        if name is not None:
            raise CorruptFileError(f"the weights hold NaN or Inf values (tensor {name!r}); llama.cpp computed "
                                   "non-finite logits", where=path,
                                   fix="the file is damaged: download or convert the model again")
        lora = self.info.extra.get("lora") or []
        raise CorruptFileError("llama.cpp computed non-finite logits (NaN/Inf) although no tensor of the file holds "
                               "one" + (" (a LoRA adapter may)" if lora else ""), where=path,
                               fix="check the LoRA adapters and their scales" if lora else
                                   "the model overflows in this precision: try kv_cache_type='f32' or another "
                                   "quantization of the model")

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        import numpy as np

        llm: Any = self._llm
        out = np.empty((len(ids), self._n_vocab), dtype=np.float32)
        llm.n_tokens = 0
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        for start in range(0, len(ids), llm.n_batch):
            chunk = ids[start : start + llm.n_batch]
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
            llm._ctx.decode(llm._batch)
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk) * self._n_vocab,))
            self._check_finite(rows)
            out[start : start + len(chunk)] = rows.reshape(len(chunk), self._n_vocab)
            llm.input_ids[start : start + len(chunk)] = chunk
            llm.n_tokens = start + len(chunk)
        return out

    def _token_bytes(self, token_id: int) -> bytes:
        return self._piece(token_id)[0]

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """llama.cpp's embedding mode on the model's own context: ``llama_set_embeddings`` on
        for one pass over ``ids`` (sequence 0, an output for every token), then off again.

        A generative model's context has llama.cpp's pooling ``none``: the per-token embeddings
        (``llama_get_embeddings_ith``) are the final-norm hidden states, and :meth:`Model.embed`
        mean-pools them, which is what llama.cpp's ``pooling_type=MEAN`` computes. A GGUF that
        declares its own pooling (an embedding model: mean, CLS, last) gets llama.cpp's pooled
        vector (``llama_get_embeddings_seq``) as the one row, so its own pooling applies; such
        a text must fit one batch. The KV cache is cleared (the next call re-evaluates)."""
        import llama_cpp
        import numpy as np

        llm: Any = self._llm
        ctx = llm._ctx.ctx
        n_embd = int(llama_cpp.llama_model_n_embd(llm._model.model))
        pooled = int(llama_cpp.llama_pooling_type(ctx)) not in (llama_cpp.LLAMA_POOLING_TYPE_NONE, -1)
        if pooled and len(ids) > llm.n_batch:
            raise InvalidParameterError(f"the text is {len(ids)} tokens; this embedding model pools a text in one "
                                        f"batch of at most {llm.n_batch}", where="text",
                                        fix="shorten the text or load with a larger n_batch")
        out = np.empty((1 if pooled else len(ids), n_embd), dtype=np.float32)
        llm.n_tokens = 0
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama_cpp.llama_set_embeddings(ctx, True)
        try:
            for start in range(0, len(ids), llm.n_batch):
                chunk = ids[start : start + llm.n_batch]
                llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
                llm._ctx.decode(llm._batch)
                rows = [llama_cpp.llama_get_embeddings_seq(ctx, 0)] if pooled else \
                    [llama_cpp.llama_get_embeddings_ith(ctx, i) for i in range(len(chunk))]
                for i, ptr in enumerate(rows):
                    if not ptr:
                        raise RuntimeError("llama.cpp returned no embedding")
                    out[start + i] = np.ctypeslib.as_array(ptr, shape=(n_embd,))
        finally:
            llama_cpp.llama_set_embeddings(ctx, False)
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            llm.n_tokens = 0
        self._check_finite(out)
        return out

    def _close(self) -> None:
        self.prefix_cache.clear()
        self._llm.close()


# ---- loading ---------------------------------------------------------------------------------
class _MaskedSampler:
    """llama.cpp's sampler chain behind a structured-output mask: the context's logits row is
    masked in place (disallowed ids -inf) before the chain samples it, then the grammar
    consumes the drawn id. Callers read their raw row (logprobs) before ``sample``."""

    def __init__(self, chain: Any, mask: Any, n_vocab: int) -> None:
        self._chain, self._mask, self._n_vocab = chain, mask, n_vocab

    def sample(self, ctx: Any, index: int) -> int:
        import numpy as np

        row = np.ctypeslib.as_array(ctx.get_logits_ith(index), shape=(self._n_vocab,))
        self._mask.apply(row)
        token = int(self._chain.sample(ctx, index))
        self._mask.advance(token)
        return token

    def accept(self, token: int) -> None:
        self._chain.accept(token)

    def close(self) -> None:
        self._chain.close()


def _gpu_layers(req: LoadRequest[Any], meta: dict[str, Any], arch: str, n_ctx: int, kv_type: str) -> tuple[int, str]:
    """llama.cpp's ``n_gpu_layers`` for this placement, and a note saying why."""
    p = req.placement
    if p.kind != "cuda":
        return 0, "cpu"
    if p.gpu_layers is not None:
        return p.gpu_layers, f"gpu_layers={p.gpu_layers} requested"
    from openllm_hub.core.device import probe_machine

    n_layers = int(meta.get(f"{arch}.block_count", 0))
    gpus = {g.index: g for g in probe_machine().gpus}
    gpu = gpus.get(p.gpu_ids[0] if p.gpu_ids else 0)
    if gpu is None:
        return -1, "all layers (GPU memory unknown)"
    n = plan_gpu_layers(req.path.stat().st_size, n_layers, gpu.free_mib,
                        _kv_bytes_per_layer(meta, arch, n_ctx, kv_type))
    return n, ("all layers fit" if n == -1 else f"{n} of {n_layers} layers fit in {gpu.free_mib} MiB free")


def _check_context(req: LoadRequest[Any], layout_meta: Mapping[str, Any], arch: str, n_ctx: int, kv_type: str,
                   train_ctx: int) -> int:
    """Refuse a context whose KV cache cannot fit the device, with the numbers, before
    llama.cpp tries to allocate it; returns the KV cache's size in bytes."""
    from openllm_hub.core.plan import device_memory, size

    fix = f"use a smaller context (-c N, n_ctx=N; this model was trained with {train_ctx} tokens)"
    if n_ctx > MAX_CTX:
        raise InvalidParameterError(f"n_ctx={n_ctx} exceeds llama.cpp's limit of {MAX_CTX} tokens", where="n_ctx",
                                    fix=fix)
    n_layers = int(layout_meta.get(f"{arch}.block_count", 0) or 0)
    need = n_layers * _kv_bytes_per_layer(dict(layout_meta), arch, n_ctx, kv_type)
    have = device_memory(req.placement)
    if have is not None and need > have[0]:
        raise IncompatibleDeviceError(
            f"a {n_ctx}-token context needs a {kv_type} KV cache of {size(need)} ({n_layers} layers), but "
            f"{have[1]}", where="n_ctx", fix=fix)
    return need


def load_gguf(req: LoadRequest[Any], *, family: str, options: LlamaCppOptions | None = None,
              model_class: type[LlamaCppModel] = LlamaCppModel,
              info_extra: Mapping[str, Any] | None = None, context_limit: int | None = None) -> LlamaCppModel:
    """Open the GGUF file ``req.path`` on llama.cpp with the request's placement.

    ``family`` names the model in its :class:`ModelInfo`; ``options`` (default:
    ``req.options``, which must then be a :class:`LlamaCppOptions`) size the context and
    choose the KV cache, LoRA adapters, repacking, template and seed; ``model_class`` is the
    family's :class:`LlamaCppModel` subclass, if it has one; ``info_extra`` is merged into
    ``info.extra`` (e.g. the checkpoint a cached GGUF was made from); ``context_limit``: the
    most tokens a sequence may hold when that must be exactly ``n_ctx`` (llama.cpp rounds its
    context up to a multiple of 256; e.g. a sliding window the architecture does not apply).
    """
    import llama_cpp
    from llama_cpp import Llama

    from openllm_hub.core.device import probe_machine

    opts = req.options if options is None else options
    if not isinstance(opts, LlamaCppOptions):
        raise TypeError(f"load_gguf needs LlamaCppOptions (or a subclass), got {type(opts).__name__}")
    if getattr(opts, "batch_kv_mib", None) is not None:  # a family's options shared with its torch engine
        raise InvalidParameterError("batch_kv_mib bounds the torch engines' batched decoder; llama.cpp's slots "
                                    "share its one context", where="batch_kv_mib",
                                    fix="size llama.cpp's KV cache with n_ctx (and kv_cache_type), or load the "
                                        "checkpoint folder on its torch engine")
    path = Path(req.path)
    if not path.is_file():
        raise NotFoundError("GGUF file not found", where=path)
    # header, tensor table, hyper-parameters, vocabulary and the architecture's tensors, before
    # llama.cpp sees the file (it aborts or misreads on several of these)
    layout = check_gguf(path)
    meta = dict(layout.metadata)
    check_template_metadata(meta, path)  # llama-cpp-python compiles the file's chat templates while loading
    arch = layout.architecture
    caps = capabilities()
    if req.placement.kind == "cuda" and not caps["gpu_offload"]:
        raise IncompatibleDeviceError(
            "the installed llama-cpp-python was built without GPU offload", where=path,
            fix='reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                "llama-cpp-python, or use device='cpu'")
    train_ctx = hparam(layout, "context_length") or DEFAULT_MAX_CTX
    n_ctx = opts.n_ctx or min(train_ctx, DEFAULT_MAX_CTX)
    kv_type = opts.kv_cache_type
    kv_bytes = _check_context(req, meta, arch, n_ctx, kv_type, train_ctx)
    check_threads(req.placement.threads)
    n_gpu_layers, gpu_note = _gpu_layers(req, meta, arch, n_ctx, kv_type)
    cpu_threads = min(probe_machine().cpu_threads, thread_limit())
    threads = req.placement.threads or max(1, cpu_threads // 2)
    for lora_path, _ in opts.lora:
        if not Path(lora_path).is_file():
            raise NotFoundError("LoRA adapter not found", where=lora_path)
        check_gguf(lora_path, model=False)  # header and tensor table, before llama.cpp reads it
    ggml_kv = llama_cpp.GGML_TYPE_F32 if kv_type == "f32" else llama_cpp.GGML_TYPE_F16
    kwargs: dict[str, Any] = {
        "n_gpu_layers": n_gpu_layers,
        "n_ctx": n_ctx,
        "n_batch": min(opts.n_batch, n_ctx),
        "n_threads": threads,
        "n_threads_batch": req.placement.threads or cpu_threads,
        "use_mmap": opts.use_mmap,
        "type_k": ggml_kv,
        "type_v": ggml_kv,
        # verbose: llama-cpp-python would point stderr at /dev/null while loading, losing
        # llama.cpp's reasons; capture_log collects them instead (printed only when debugging)
        "verbose": True,
    }
    if req.placement.kind == "cuda":
        kwargs["split_mode"] = llama_cpp.LLAMA_SPLIT_MODE_NONE
        kwargs["main_gpu"] = req.placement.gpu_ids[0] if req.placement.gpu_ids else 0
    else:
        kwargs["offload_kqv"] = False
        kwargs["op_offload"] = False
    repack = opts.repack if opts.repack is not None else default_repack()
    with capture_log() as log, model_params(use_extra_bufts=repack):
        try:
            llm = Llama(model_path=str(path), **kwargs)
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            raise _load_failure(exc, log, path, n_ctx=n_ctx, kv_type=kv_type, kv_bytes=kv_bytes) from exc
        llm.verbose = debug_enabled()  # no timing prints from llama-cpp-python's own generation loop
        try:
            adapters = _attach_loras(llm, opts.lora)
        except Exception:
            llm.close()
            raise
    model_ptr = llm._model.model
    vocab = llm._model.vocab
    cache_mib = opts.prefix_cache_mib if opts.prefix_cache_mib is not None else default_prefix_cache_mib()
    eos = {llm.token_eos()}
    eos.update(t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
    eos.discard(-1)
    ftype = ftype_names().get(int(llama_cpp.llama_model_ftype(model_ptr)), "unknown")
    n_layers = int(llama_cpp.llama_model_n_layer(model_ptr))
    if req.placement.kind == "cuda":
        on_gpu = n_layers if n_gpu_layers < 0 else min(n_gpu_layers, n_layers)
        device = f"cuda:{kwargs['main_gpu']} ({on_gpu}/{n_layers} layers; {gpu_note})"
    else:
        device = "cpu:blas" if req.placement.blas else "cpu"
    info = ModelInfo(
        family=family, format="gguf", engine="llama.cpp", path=str(path), device=device,
        parameters=int(llama_cpp.llama_model_n_params(model_ptr)), quantization=ftype,
        context_length=min(llm.n_ctx(), context_limit or llm.n_ctx()), vocab_size=llm.n_vocab(), dtype=ftype,
        extra={"n_ctx_train": train_ctx, "n_layers": n_layers, "n_gpu_layers": n_gpu_layers,
               "threads": threads, "kv_cache_type": kv_type, "repack": repack, "n_batch": llm.n_batch,
               # what one token's KV cache costs (a batch holds slots x n_ctx of them; serve's default --parallel)
               "kv_bytes_per_token": kv_bytes // n_ctx,
               "description": llm._model.desc(), "size_bytes": int(llama_cpp.llama_model_size(model_ptr)),
               "lora": [{"path": p, "scale": s} for p, s in opts.lora], "llama_cpp": caps["version"],
               "loras_attached": adapters, "prefix_cache_mib": cache_mib, **(info_extra or {})},
    )
    add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    try:
        model = model_class(llm, info, eos_token_ids=sorted(eos), add_space_prefix=add_space_prefix,
                            default_template=opts.chat_template, seed=opts.seed, metadata=meta)
    except Exception:
        llm.close()
        raise
    if context_limit is not None:
        model._n_ctx = min(model._n_ctx, context_limit)
    model.prefix_cache = PrefixCache(cache_mib * 2**20)
    return model


def _load_failure(exc: BaseException, log: Sequence[str], path: Path, *, n_ctx: int, kv_type: str,
                  kv_bytes: int) -> Exception:
    """The SDK error for a failed ``Llama()``: llama.cpp's own reason, blaming the context (with
    the KV cache's size) when the model loaded but its context could not be made."""
    from openllm_hub.core.plan import size

    reason = log_error(log)
    if "context" in str(exc).lower() or isinstance(exc, MemoryError):
        return IncompatibleDeviceError(
            f"llama.cpp could not create a {n_ctx}-token context (its {kv_type} KV cache alone needs "
            f"{size(kv_bytes)}): {reason}", where="n_ctx", fix="use a smaller context (-c N, n_ctx=N)")
    if "not within the file bounds" in reason or "truncated" in reason.lower():
        return CorruptFileError("tensor data runs past the end of the file (truncated or corrupt)",
                                where=path, fix=f"download or convert the file again (llama.cpp: {reason})")
    return CorruptFileError(f"llama.cpp cannot load this GGUF file: {reason}", where=path,
                            fix="check that the file is complete and was made by a current converter")


@contextlib.contextmanager
def model_params(**fields: Any) -> Iterator[None]:
    """Set ``llama_model_params`` fields that ``Llama()`` has no keyword for (it builds them
    from ``llama_model_default_params()``, which is wrapped for the duration of the block)."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def patched() -> Any:
        params = original()
        for key, value in fields.items():
            setattr(params, key, value)
        return params

    with _LOG_LOCK:  # one Llama() at a time sees the patched defaults
        low.llama_model_default_params = patched
        try:
            yield
        finally:
            low.llama_model_default_params = original


def _attach_loras(llm: Llama, loras: Sequence[tuple[str, float]]) -> int:
    """Load GGUF LoRA adapters and apply them to the context with their scales (any number)."""
    if not loras:
        return 0
    import llama_cpp

    ptrs = []
    for path, _scale in loras:
        with capture_log() as log:
            adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode("utf-8"))
        if not adapter:
            raise CorruptFileError(f"llama.cpp cannot load this LoRA adapter: {log_error(log)}", where=path,
                                   fix="convert the adapter to GGUF for this base model "
                                       "(llama.cpp's convert_lora_to_gguf.py)")
        ptrs.append(adapter)
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(ptrs))(*ptrs)
    scales = (ctypes.c_float * len(ptrs))(*[float(s) for _, s in loras])
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, arr, len(ptrs), scales) != 0:
        raise CorruptFileError("llama.cpp refused the LoRA adapters for this model", where=loras[0][0],
                               fix="check that the adapters were made for this base model")
    # the adapters are owned by the model and freed with it
    llm._openllm_hub_loras = (arr, scales)  # type: ignore[attr-defined]
    return len(ptrs)


__all__ = ["LlamaCppModel", "LlamaCppOptions", "capabilities", "capture_log", "check_threads", "debug_enabled",
           "default_repack", "device_rows", "ftype_names", "load_gguf", "log_error", "model_params", "plan_gpu_layers",
           "quiet_llama_cpp", "thread_limit"]
