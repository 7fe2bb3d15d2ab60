"""The RWKV engine: ``rwkv.model.RWKV`` behind the SDK's :class:`~openllm_hub.core.model.Model`.

Generation goes through the core loop (:func:`~openllm_hub.core.generate.generate_tokens`)
and sampler; the step function feeds tokens to the RNN and applies ChatRWKV's penalties
(:mod:`openllm_hub_rwkv.penalties`). Prompts are read in chunks of ``chunk_len`` tokens.

Chat keeps the state between turns instead of re-reading the history. The prompt is the
ids of the template's pieces for the whole conversation (plain text: RWKV's formats have no
control tokens, so ``chat`` equals ``generate`` on the rendered prompt, unless a message spells
an added special token, which chat keeps as text). States are cached by the exact token ids they have read: after
the stable part of each prompt (the tokens that a probe of the next turn leaves unchanged)
and after each answer (prompt plus the tokens fed during generation). A new turn starts from
the longest cached state whose ids are a prefix of its own and reads only the rest; with no
such state it reads from the start. Reading the same ids in other chunk splits changes only
the float rounding (the tests bound it and check identical greedy continuations); a state
saved with ``save_state`` and restored with ``load_state`` continues bit for bit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.plugin import (
    Chunk,
    CorruptFileError,
    GenerationConfig,
    InvalidParameterError,
    LoadRequest,
    ModelInfo,
    OpenLLMHubError,
    Text,
    generate_tokens,
    get_template,
)
from openllm_hub_rwkv.checkpoint import read_pth_index
from openllm_hub_rwkv.options import RwkvOptions
from openllm_hub_rwkv.penalties import PenaltyTracker, RwkvPenalty
from openllm_hub_rwkv.runtime import Workdir, build_package_model
from openllm_hub_rwkv.spec import Arch, analyse, context_from_name
from openllm_hub_rwkv.state import Snapshot, load_snapshots, save_snapshots
from openllm_hub_rwkv.strategy import Strategy, parse_strategy, strategy_from_placement
from openllm_hub_rwkv.templates import continuation_probe
from openllm_hub_rwkv.tokenizer import END_OF_TEXT, RwkvTextModel, RwkvTokenizer, choose_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch

_MAX_PLANS = 16


@dataclass(frozen=True)
class _ChatRead:
    """A chat prompt's ids and how many leading ids stay the same when the conversation grows."""

    ids: tuple[int, ...]
    stable: int
    template: str



@dataclass(frozen=True)
class ReadStats:
    """How the last chat prompt was read: tokens taken from a cached state, tokens fed."""

    reused: int
    read: int


def default_template(tokenizer: RwkvTokenizer) -> str:
    return "rwkv-world" if tokenizer.name == "world" else "rwkv-raven"


class RwkvModel(RwkvTextModel):
    """An RWKV model on the rwkv package, with stateful chat."""

    def __init__(self, info: ModelInfo, *, package_model: Any, arch: Arch, strategy: Strategy,
                 tokenizer: RwkvTokenizer, options: RwkvOptions, workdir: Workdir, fingerprint: str) -> None:
        super().__init__(info, eos_token_ids=(END_OF_TEXT,))
        self.arch = arch
        self.strategy = strategy
        self.tokenizer = tokenizer
        self.options = options
        self.default_chat_template = options.chat_template or default_template(tokenizer)
        self._pkg = package_model
        self._workdir = workdir
        self._fingerprint = fingerprint
        self._cache: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self._plans: dict[tuple[int, ...], _ChatRead] = {}
        self._last: Snapshot | None = None
        self._zero: list[torch.Tensor] | None = None
        self.last_read: ReadStats | None = None

    # ---- engine primitives -------------------------------------------------------------
    def _forward(self, ids: Sequence[int], state: list[torch.Tensor] | None,
                 full: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, new_state = self._pkg.forward([int(t) for t in ids], state, full_output=full)
        return out, new_state

    def _read(self, ids: Sequence[int], state: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Feed ``ids`` in chunks; the logits after the last one, and the new state."""
        if not ids:
            raise ValueError("nothing to read")
        chunk = self.options.chunk_len
        out = None
        for start in range(0, len(ids), chunk):
            out, state = self._forward(ids[start : start + chunk], state)
        assert out is not None and state is not None
        return out.reshape(-1).float().cpu(), state

    def _all_rows(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The package's output at every position of ``ids``, read from the start (zero state)
        in chunks of ``chunk_len``."""
        import torch

        rows = []
        state = None
        chunk = self.options.chunk_len
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            out, state = self._forward(part, state, full=True)
            rows.append(out.reshape(len(part), -1).float().cpu())
        return torch.cat(rows).numpy()

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        return self._all_rows(ids)

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The output of the final layer norm ``ln_out`` at every position of ``ids``, read
        from the start (zero state) in chunks of ``chunk_len`` as :meth:`_logits` reads (both are
        :meth:`_all_rows`): the vectors the ``head`` reads. The package computes ``ln_out(x) @ head`` in one step, so
        for this one pass its head is an identity matrix (in the activation dtype, on
        ``ln_out``'s device): ``x @ I`` is ``x`` exactly. The package's weight dict is replaced
        as a whole (a TorchScript model hands Python a copy of it) and restored afterwards,
        under the model's lock; chat states are not touched. RWKV has no BOS: ``tokenize(text)``
        is the text's ids (``[end-of-text]`` for an empty text), all of them pooled."""
        import torch

        pkg = self._pkg
        attr = "z" if self.arch.version == "7" else "w"
        weights = getattr(pkg, attr)
        ln = weights["ln_out.weight"]
        head = weights["head.weight"]
        swapped = dict(weights)
        swapped["head.weight"] = torch.eye(ln.shape[0], dtype=ln.dtype, device=ln.device)
        setattr(pkg, attr, swapped)
        try:
            return self._all_rows(ids)
        finally:
            swapped["head.weight"] = head
            setattr(pkg, attr, swapped)

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        plan = self._plans.pop(tuple(prompt_ids), None)
        opts = self.options
        if opts.repeat_mode == "rwkv":
            penalty = RwkvPenalty.from_config(config, presence=opts.alpha_presence, frequency=opts.alpha_frequency,
                                              decay=opts.alpha_decay)
            sample_config = config.model_copy(update={"repeat_penalty": 1.0})
        else:
            penalty = RwkvPenalty(0.0, 0.0, 1.0)
            sample_config = config
        tracker = PenaltyTracker(penalty, self._detokenize)
        box: dict[str, Any] = {"fed": list(prompt_ids)}

        def step(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
            if "state" not in box:
                logits, state = self._read_chat(plan) if plan is not None else self._read(new_ids, None)
            else:
                tracker.add(int(new_ids[-1]))
                out, state = self._forward(new_ids, box["state"])
                logits = out.reshape(-1).float().cpu()
                box["fed"].extend(int(t) for t in new_ids)
            box["state"], box["logits"] = state, logits
            return tracker.apply(logits.numpy())

        def run() -> Iterator[int]:
            try:
                # logprobs score the raw logits (as Model.logits gives them), not the penalized row
                yield from generate_tokens(step, prompt_ids, sample_config, prompt_chunk=max(1, len(prompt_ids)),
                                           raw_logits=lambda: box["logits"].numpy())
            finally:
                if plan is not None and "state" in box and len(box["fed"]) > len(prompt_ids):
                    # the state after the answer: the next turn continues from it if its ids agree
                    snap = Snapshot.take(tuple(box["fed"]), box["state"], box["logits"], plan.template)
                    self._remember(snap)
                    self._last = snap

        return run()

    def _close(self) -> None:
        self._pkg = None
        self._cache.clear()
        self._plans.clear()
        self._last = None
        self._zero = None
        self._workdir.close()

    # ---- stateful chat ------------------------------------------------------------------
    def _chat_read(self, messages: Sequence[Mapping[str, str]], template: str | None, *,
                   complete: bool) -> _ChatRead:
        tpl = self.chat_template(template)
        pieces = tpl.pieces(messages, complete=complete)  # type: ignore[arg-type]
        ids = tuple(self._pieces_ids(pieces, model_specials=tpl.model_specials))
        probe = continuation_probe(tpl, messages)
        stable = len(ids)
        if probe:
            longer = self._pieces_ids([*pieces, Text(probe)], model_specials=tpl.model_specials)
            stable = next((i for i, (x, y) in enumerate(zip(ids, longer)) if x != y), len(ids))
        return _ChatRead(ids, stable, tpl.name)

    def _remember(self, snap: Snapshot) -> None:
        if self.options.state_cache == 0:
            return
        self._cache[snap.ids] = snap
        self._cache.move_to_end(snap.ids)
        while len(self._cache) > self.options.state_cache:
            self._cache.popitem(last=False)

    def _lookup(self, ids: tuple[int, ...]) -> Snapshot | None:
        """The cached state with the longest ids that are a prefix of ``ids``."""
        best: Snapshot | None = None
        for key, snap in self._cache.items():
            if len(key) <= len(ids) and (best is None or len(key) > len(best.ids)) and ids[: len(key)] == key:
                best = snap
        if best is not None:
            self._cache.move_to_end(best.ids)
        return best

    def _read_chat(self, plan: _ChatRead) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Read a chat prompt from the longest cached prefix state; cache the stable point."""
        ids = plan.ids
        snap = self._lookup(ids)
        pos = len(snap.ids) if snap is not None else 0
        state = snap.state() if snap is not None else None
        logits = snap.logits if snap is not None else None
        if pos < plan.stable:
            logits, state = self._read(ids[pos : plan.stable], state)
            self._last = Snapshot.take(ids[: plan.stable], state, logits, plan.template)
            self._remember(self._last)
            pos = plan.stable
        elif snap is not None:
            self._last = snap
        if pos < len(ids):
            logits, state = self._read(ids[pos:], state)
        assert logits is not None and state is not None
        reused = len(snap.ids) if snap is not None else 0
        self.last_read = ReadStats(reused=reused, read=len(ids) - reused)
        return logits, state

    def stream_chat(self, messages: Sequence[Mapping[str, str]], *, template: str | None = None,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                    **params: Any) -> Iterator[Chunk]:
        """Answer the last user message, continuing from a cached state of this conversation
        when there is one (see the module docstring). ``tools`` are checked as every model
        checks them: with ``tool_choice="none"`` they are not offered; otherwise the template
        refuses them (RWKV's formats have none, see :mod:`openllm_hub_rwkv.templates`)."""
        self._check_open()
        tpl = self.chat_template(template)
        self._tool_plan(tpl, tools, tool_choice)
        plan = self._chat_read(messages, tpl.name, complete=True)
        stops = self._chat_stops(tpl, params.pop("stop", None))
        config = GenerationConfig.build(self.generation_defaults, stop=stops, **params)
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[plan.ids] = plan
        return self._stream_ids(list(plan.ids), config)

    def prefill_chat(self, messages: Sequence[Mapping[str, str]], *,
                     template: str | None = None) -> npt.NDArray[np.float32]:
        """Read a conversation, or a prefix of one (e.g. only the system prompt), into the
        state cache as chat would, and return the logits after its last token. A system
        prompt read once is reused by every conversation that starts with it."""
        self._check_open()
        plan = self._chat_read(messages, template, complete=False)
        with self._lock:
            logits, _ = self._read_chat(plan)
        return logits.numpy()

    def reset_state(self) -> None:
        """Forget every cached chat state."""
        with self._lock:
            self._cache.clear()
            self._last = None
            self.last_read = None

    def _state_meta(self) -> dict[str, str]:
        a = self.arch
        return {"rwkv_version": a.version, "n_layer": str(a.n_layer), "n_embd": str(a.n_embd),
                "vocab_size": str(a.vocab_size), "fingerprint": self._fingerprint}

    def _zero_state(self) -> list[torch.Tensor]:
        if self._zero is None:
            _, self._zero = self._forward([END_OF_TEXT], None)
        return self._zero

    def save_state(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the latest chat state (after the last answer, with the prompt state it
        extends) to ``path`` as safetensors, with the token ids read, so that ``load_state``
        in another process continues the conversation exactly as this model would."""
        self._check_open()
        with self._lock:
            last = self._last
            if last is None:
                raise InvalidParameterError("there is no chat state to save yet", where="save_state",
                                            fix="call chat(), stream_chat() or prefill_chat() first")
            chain = [s for s in self._cache.values() if len(s.ids) < len(last.ids) and last.ids[: len(s.ids)] == s.ids]
            snaps = [*sorted(chain, key=lambda s: len(s.ids))[-1:], last]
            return save_snapshots(snaps, path, meta=self._state_meta(), sources=[Path(self.info.path)], force=force)

    def load_state(self, path: str | Path) -> None:
        """Restore states saved by :meth:`save_state` (from this same checkpoint); the next
        chat whose conversation extends them continues without re-reading."""
        self._check_open()
        with self._lock:
            snaps = load_snapshots(path, meta=self._state_meta(), like=self._zero_state())
            for snap in snaps:
                self._remember(snap)
            self._last = snaps[-1]


def _fingerprint(path: Path, arch: Arch) -> str:
    """Identity of the weights for state files: architecture plus the final layer norm. The
    memory-mapped state dict is also where NaN/Inf weights are refused, by name, before the
    package builds a model from them (one pass over the file)."""
    from openllm_hub.engines.finite import check_finite
    from openllm_hub.plugin import load_torch_checkpoint

    sd = load_torch_checkpoint(path, mmap=True)
    for name, tensor in sd.items():
        if hasattr(tensor, "dtype"):
            check_finite(name, tensor, path)
    h = hashlib.sha256(arch.describe().encode())
    for key in ("ln_out.weight", "ln_out.bias"):
        h.update(sd[key].float().contiguous().numpy().tobytes())
    del sd
    return h.hexdigest()[:16]


def resolve_strategy(req: LoadRequest[RwkvOptions], arch: Arch) -> tuple[Strategy, str]:
    """The strategy for this load and why: the raw option, else derived from the placement."""
    opts = req.options
    if opts.strategy is not None:
        if opts.int8 or opts.stream:
            raise InvalidParameterError("strategy= already says where layers go and in which precision",
                                        where="load options", fix="drop int8/stream, or drop strategy")
        return parse_strategy(opts.strategy, version=arch.version), "raw strategy option"
    derived = strategy_from_placement(req.placement, n_layer=arch.n_layer, int8=opts.int8, stream=opts.stream)
    return parse_strategy(str(derived), version=arch.version), req.placement.reason or "placement"


def load_rwkv(req: LoadRequest[RwkvOptions]) -> RwkvModel:
    """Load a ``.pth`` checkpoint on the rwkv package."""
    opts = req.options
    path = Path(req.path)
    index = read_pth_index(path)
    arch = analyse(index.tensors, where=path, extras=index.extras)
    strategy, reason = resolve_strategy(req, arch)
    tokenizer = choose_tokenizer(opts.tokenizer, arch.vocab_size, path)
    if opts.chat_template is not None:
        get_template(opts.chat_template)
    if req.placement.threads:
        import torch

        torch.set_num_threads(req.placement.threads)
    fingerprint = _fingerprint(path, arch)
    workdir = Workdir()
    try:
        pkg = build_package_model(path, arch, index.tensors, strategy, jit=opts.jit,
                                  cuda_kernels=opts.cuda_kernels, workdir=workdir)
    except OpenLLMHubError:
        workdir.close()
        raise
    except (AssertionError, KeyError, RuntimeError, ValueError, AttributeError, IndexError) as exc:
        workdir.close()
        raise CorruptFileError(f"the rwkv package could not load this checkpoint: {type(exc).__name__}: {exc}",
                               where=path, fix="check that the file is a complete RWKV checkpoint") from None
    info = ModelInfo(
        family="rwkv", format=req.format, engine="rwkv", path=str(path), device=strategy.device_label(),
        parameters=arch.parameters, quantization="int8" if strategy.int8 else None, context_length=None,
        vocab_size=arch.vocab_size, dtype=strategy.dtype,
        extra={"strategy": str(strategy), "strategy_reason": reason, "rwkv_version": arch.version,
               "n_layer": arch.n_layer, "n_embd": arch.n_embd, "n_head": arch.n_head, "head_size": arch.head_size,
               "tokenizer": tokenizer.name, "chat_template": opts.chat_template or default_template(tokenizer),
               "trained_context": context_from_name(path), "checkpoint_dtype": arch.dtype, "jit": opts.jit,
               "cuda_kernels": opts.cuda_kernels, "repeat_mode": opts.repeat_mode})
    return RwkvModel(info, package_model=pkg, arch=arch, strategy=strategy, tokenizer=tokenizer, options=opts,
                     workdir=workdir, fingerprint=fingerprint)
