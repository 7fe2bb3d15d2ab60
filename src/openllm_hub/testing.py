"""Conformance kit: the contract every :class:`~openllm_hub.core.model.Model` must keep.

A plugin author subclasses :class:`ModelConformance` in a test module and says how to load
a small model of the plugin's own::

    from openllm_hub.testing import ModelConformance

    class TestMyModel(ModelConformance):
        def load_model(self):
            return openllm_hub.load(MY_TINY_MODEL, device="cpu")

pytest then runs every ``test_*`` below against it. Each check is also a plain function
(``check_*``) for use outside pytest. Class attributes tune prompts for models whose
tokenizers cannot encode everything. One check puts a prompt of :data:`LONG_PROMPT_TOKENS`
(1,024) tokens in a batch (rotary and position bugs hide at short positions), or of half the
model's context where that is smaller; give the tiny model a context of at least 2,048 tokens
to check the full length. Engines with a batched decoder have stricter checks further down
(``check_greedy_batch_matches_single_runs``, ``check_batched_logits_match_alone``,
``check_long_prompt_in_batch``, ``check_long_prompt_does_not_stall_the_others``,
``check_logprobs_match_logits``, ...) to call from their own tests, as are the checks of an
engine with a prefix cache (``check_prefix_cache_*``), of its core fallback without a batched
decoder (``check_fallback_equals_single_runs``) and of ``embed()`` between two batch steps.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from openllm_hub.core.chat import Special
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.model import Completion, Model
from openllm_hub.errors import InvalidParameterError, ModelClosedError, OpenLLMHubError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from openllm_hub.core.batch import BatchDecoder, Batching
    from openllm_hub.engines.torch_batch import RowBatchDecoder


def _params(**extra: Any) -> dict[str, Any]:
    return {"max_new_tokens": 12, "temperature": 0.9, "top_k": 40, "top_p": 0.95, **extra}


#: The text :func:`long_prompt` repeats: plain words every tokenizer reads, varied enough that a
#: position bug shows (a repeated piece is not one token over and over).
LONG_TEXT = ("The little dog ran to the big house, and the old cat slept by the warm fire while the rain "
             "fell on the green hills. One two three four five six seven eight nine ten.")
#: How long a long prompt is: rotary and position bugs hide at short positions.
LONG_PROMPT_TOKENS = 1024


def long_prompt(model: Model, min_tokens: int = LONG_PROMPT_TOKENS, text: str = LONG_TEXT) -> str:
    """The shortest run of whole words of ``text`` repeated (joined by spaces) for which
    ``model.tokenize`` gives at least ``min_tokens`` ids."""
    def count(words: list[str]) -> int:
        return len(model.tokenize(" ".join(words)))

    unit = text.split()
    words = list(unit)
    while count(words) < min_tokens:
        words += unit * max(1, len(words) * (min_tokens - count(words)) // max(1, count(words) * len(unit)))
    lo, hi = 1, len(words)  # the fewest words that give min_tokens ids
    while lo < hi:
        mid = (lo + hi) // 2
        if count(words[:mid]) >= min_tokens:
            hi = mid
        else:
            lo = mid + 1
    while count(words[:lo]) < min_tokens:  # tokenizers that merge across words need not be monotonic
        lo += 1
    return " ".join(words[:lo])


def check_seeded_determinism(model: Model, prompt: str) -> None:
    """Same seed and parameters give the same text and ids; sampling is really seeded."""
    a = model.generate(prompt, **_params(seed=1234))
    b = model.generate(prompt, **_params(seed=1234))
    assert a.text == b.text and a.token_ids == b.token_ids, "same seed must give the same output"
    outs = {model.generate(prompt, **_params(seed=s, max_new_tokens=16, temperature=1.5, top_k=0,
                                               top_p=1.0)).token_ids for s in range(1, 7)}
    assert len(outs) > 1, "different seeds never changed the output: is sampling seeded at all?"


def check_stream_equals_generate(model: Model, prompt: str) -> None:
    """Concatenated stream chunks equal generate(): text, ids, finish reason, usage."""
    full = model.generate(prompt, **_params(seed=7))
    chunks = list(model.stream(prompt, **_params(seed=7)))
    assert chunks and chunks[-1].finish_reason is not None
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == full.text
    assert tuple(i for c in chunks for i in c.token_ids) == full.token_ids
    assert chunks[-1].finish_reason == full.finish_reason and chunks[-1].usage == full.usage


def check_max_new_tokens(model: Model, prompt: str) -> None:
    """max_new_tokens bounds the output; a run that hits it says finish_reason=length."""
    for n in (1, 5):
        out = model.generate(prompt, max_new_tokens=n, temperature=0.0, repeat_penalty=1.0)
        assert len(out.token_ids) <= n
        if out.finish_reason == "length":
            assert len(out.token_ids) == n


def check_stop_strings(model: Model, prompt: str) -> None:
    """A stop string taken from the model's own greedy output ends generation before it."""
    ref = model.generate(prompt, max_new_tokens=24, temperature=0.0, repeat_penalty=1.0)
    text = ref.text
    if len(text.strip()) < 4:
        raise AssertionError(f"greedy output too short to test stop strings: {text!r}")
    mid = len(text) // 2
    stop = text[mid : mid + 2] if text[mid : mid + 2].strip() else text[mid - 1 : mid + 1]
    cut = text.find(stop)
    out = model.generate(prompt, max_new_tokens=24, temperature=0.0, repeat_penalty=1.0, stop=[stop])
    assert out.finish_reason == "stop"
    assert out.text == text[:cut], f"expected {text[:cut]!r}, got {out.text!r} (stop {stop!r})"
    streamed = "".join(c.text for c in model.stream(prompt, max_new_tokens=24, temperature=0.0,
                                                    repeat_penalty=1.0, stop=[stop]))
    assert streamed == out.text


def check_usage(model: Model, prompt: str) -> None:
    """usage.prompt_tokens is the prompt's length in ids; completion_tokens the ids returned."""
    out = model.generate(prompt, **_params(seed=3))
    assert out.usage.prompt_tokens == len(model.tokenize(prompt))
    assert out.usage.completion_tokens == len(out.token_ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.timings.generation_tokens_per_second >= 0 and out.timings.prompt_tokens_per_second > 0


def check_roundtrip(model: Model, texts: tuple[str, ...]) -> None:
    """detokenize(tokenize(text)) gives the text back."""
    for text in texts:
        ids = model.tokenize(text)
        assert all(isinstance(i, int) for i in ids)
        assert model.detokenize(ids) == text, f"round trip changed {text!r} into {model.detokenize(ids)!r}"


def check_logits(model: Model, prompt: str) -> None:
    """logits() has one vocabulary row per position, and its last row drives greedy decoding."""
    import numpy as np

    ids = model.tokenize(prompt)
    rows = model.logits(ids)
    assert rows.ndim == 2 and rows.shape[0] == len(ids)
    assert np.isfinite(rows).all()
    greedy = model.generate(prompt, max_new_tokens=1, temperature=0.0, repeat_penalty=1.0)
    if greedy.token_ids:
        assert int(np.argmax(rows[-1])) == greedy.token_ids[0]


def _generate_ids(model: Model, prompt_ids: list[int], **params: Any) -> Completion:
    """generate() on prompt ids (what chat() does after laying out its prompt)."""
    from openllm_hub.core.config import GenerationConfig

    config = GenerationConfig.build(model.generation_defaults, **params)
    return model._collect(model._stream_ids(list(prompt_ids), config))


def check_chat_template(model: Model, messages: list[dict[str, str]]) -> None:
    """chat() equals generation on the prompt ids its template lays out (chat_prompt_ids()),
    with its stop strings; those are the ids of the rendered prompt where it holds no special
    token."""
    tpl = model.chat_template()
    ids = model.chat_prompt_ids(messages)
    a = model.chat(messages, max_new_tokens=10, temperature=0.0, seed=5)
    b = _generate_ids(model, ids, max_new_tokens=10, temperature=0.0, seed=5, stop=list(tpl.stop))
    assert a.text == b.text and a.token_ids == b.token_ids and a.usage.prompt_tokens == len(ids)
    assert "".join(c.text for c in model.stream_chat(messages, max_new_tokens=10, temperature=0.0, seed=5)) == a.text
    if not any(isinstance(p, Special) for p in tpl.pieces(messages)):  # type: ignore[arg-type]
        prompt = tpl.render(messages)  # type: ignore[arg-type]
        c = model.generate(prompt, max_new_tokens=10, temperature=0.0, seed=5, stop=list(tpl.stop))
        assert a.text == c.text and a.token_ids == c.token_ids


#: Spellings of control tokens of many families, tried on every model besides its own.
COMMON_SPECIALS = ("<s>", "</s>", "<unk>", "<pad>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<|im_start|>",
                   "<|im_end|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                   "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<sop>", "<eop>", "<|begin_of_text|>",
                   "<|eot_id|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")


def check_chat_special_tokens_stay_text(model: Model, messages: list[dict[str, str]],
                                        templates: tuple[str | None, ...] = (None,)) -> None:
    """Message text that spells special tokens (the model's own, ``special_tokens()``, and
    :data:`COMMON_SPECIALS`) never yields a special id: whichever message holds it (system,
    user, past answer), the special ids of the prompt (control tokens and eos ids) are those
    of the same conversation with harmless text, in the same order; chat() reads that prompt.
    ``templates``: the template names to check (None: the model's default)."""
    special_ids = set(model.special_tokens().values()) | set(model.eos_token_ids)
    spellings = " ".join(dict.fromkeys([*model.special_tokens(), *COMMON_SPECIALS]))
    evil = f"x{spellings}y\n{spellings}"  # glued to text and standing alone
    base = [{"role": "system", "content": "Be brief."}, *messages]
    for name in templates:
        def marks(conv: list[dict[str, str]], name: str | None = name) -> list[int]:
            return [i for i in model.chat_prompt_ids(conv, template=name) if i in special_ids]

        want = marks(base)
        for k in range(len(base)):
            conv = [dict(m) for m in base]
            conv[k]["content"] = evil
            got = marks(conv)
            assert got == want, (f"template {name or model.default_chat_template!r}: {base[k]['role']} text "
                                 f"spelling special tokens changed the special ids {want} into {got}")
        own = list(model.special_tokens())[:6] or list(COMMON_SPECIALS[:6])  # short: tiny contexts
        conv = [*base[:-1], {"role": "user", "content": " ".join(own)}]
        out = model.chat(conv, template=name, max_new_tokens=1, temperature=0.0)
        assert out.usage.prompt_tokens == len(model.chat_prompt_ids(conv, template=name))


def check_invalid_parameters(model: Model, prompt: str) -> None:
    """Unknown or out-of-range parameters raise InvalidParameterError before any work."""
    for bad in ({"temprature": 0.5}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        try:
            model.generate(prompt, **bad)
        except InvalidParameterError:
            continue
        raise AssertionError(f"{bad} was accepted")


def _refused(call: Callable[[Any], object], arg: Any, match: str, what: str) -> None:
    """``call(arg)`` raises InvalidParameterError saying ``match``."""
    try:
        call(arg)
    except InvalidParameterError as exc:
        assert match in str(exc), f"{what}: expected an error saying {match!r}, got {exc}"
        return
    raise AssertionError(f"{what} was accepted")


def check_token_id_range(model: Model, prompt: str) -> None:
    """Ids outside ``0..vocab_size - 1`` are refused by logits() and detokenize() with
    InvalidParameterError; the ids at both edges are accepted; logits() refuses more ids
    than the context holds."""
    vocab = model.info.vocab_size
    assert vocab, "info.vocab_size must be set: Model checks token ids against it"
    ids = model.tokenize(prompt)
    for bad in ([vocab], [-1], [*ids, vocab + 7]):
        _refused(model.logits, bad, "outside the vocabulary", f"logits({bad})")
        _refused(model.detokenize, bad, "outside the vocabulary", f"detokenize({bad})")
    assert model.logits([*ids, vocab - 1]).shape[0] == len(ids) + 1
    assert isinstance(model.detokenize([0, vocab - 1]), str)
    ctx = model.info.context_length
    if ctx is not None:
        _refused(model.logits, [ids[-1]] * (ctx + 1), "exceed the context", "logits() past the context")


def check_empty_prompt(model: Model) -> None:
    """An empty prompt: where the model adds start tokens to every prompt, generate("") runs
    from them; otherwise it is refused with the one InvalidParameterError every engine gives."""
    if model.tokenize(""):
        out = model.generate("", max_new_tokens=2, temperature=0.0)
        assert out.usage.prompt_tokens == len(model.tokenize(""))
    else:
        _refused(model.generate, "", "the prompt is empty", 'generate("")')
        _refused(lambda p: list(model.stream(p)), "", "the prompt is empty", 'stream("")')


def check_chat_stop_merge(model: Model, messages: list[dict[str, str]]) -> None:
    """chat(stop=...) adds the caller's stop strings to the template's (it does not replace
    them): the answer is generate() with both lists, and ends before the first of either."""
    tpl = model.chat_template()
    ids = model.chat_prompt_ids(messages)
    greedy: dict[str, Any] = {"max_new_tokens": 24, "temperature": 0.0, "repeat_penalty": 1.0, "seed": 5}
    free = _generate_ids(model, ids, stop=[], **greedy).text  # no stop strings at all
    user = next((free[i : i + 2] for i in range(len(free) // 2, len(free) - 1) if free[i : i + 2].strip()),
                "\x00never")
    out = model.chat(messages, stop=[user], **greedy)
    both = _generate_ids(model, ids, stop=[user, *tpl.stop], **greedy)
    assert (out.text, out.token_ids, out.finish_reason) == (both.text, both.token_ids, both.finish_reason)
    assert free.startswith(out.text)
    stops = (user, *tpl.stop)
    assert not any(s in out.text for s in stops), f"{out.text!r} holds one of the stops {stops}"
    if any(s in free for s in stops):
        assert out.finish_reason == "stop" and len(out.text) < len(free)
    if user in free and not any(s in free for s in tpl.stop):
        assert out.text == free[: free.find(user)], f"stop {user!r}: {out.text!r}"
    assert model.chat(messages, stop=user, **greedy).text == out.text  # a single string is a list of one


def check_closed_refuses(model: Model, prompt: str) -> None:
    """After close(), every call raises ModelClosedError; close() twice is fine."""
    model.close()
    model.close()
    for call in (lambda: model.generate(prompt), lambda: model.tokenize(prompt), lambda: model.logits([1])):
        try:
            call()
        except ModelClosedError:
            continue
        raise AssertionError("a closed model did work")


def check_logprobs_match_logits(model: Model, prompt: str, *, bound: float, max_new_tokens: int = 12) -> float:
    """``logprobs`` / ``top_logprobs`` equal the log-softmax of ``Model.logits`` at each generated
    token's position, greedy and sampled (with a repeat penalty, which logprobs ignore), whole
    and streamed: every token's log-probability and its 5 most likely alternatives within
    ``bound`` (absolute, in nats). The reference is computed here, apart from the SDK's own
    scoring: float64, ``row - logaddexp.reduce(row)``. Returns the largest difference."""
    import numpy as np

    ids = model.tokenize(prompt)
    worst = 0.0
    for params in ({"temperature": 0.0, "repeat_penalty": 1.0}, {"temperature": 1.2, "top_k": 5, "repeat_penalty": 1.5,
                                                               "seed": 11}):
        kw: dict[str, Any] = {**params, "max_new_tokens": max_new_tokens, "logprobs": True, "top_logprobs": 5}
        done = model.generate(prompt, **kw)
        assert done.logprobs is not None and len(done.logprobs) == len(done.token_ids) > 0, "one logprob per token"
        streamed = [lp for chunk in model.stream(prompt, **kw) for lp in chunk.logprobs or ()]
        assert [lp.token_id for lp in streamed] == list(done.token_ids), "the stream gave other tokens"
        n = len(done.token_ids)
        rows = np.asarray(model.logits([*ids, *done.token_ids])[len(ids) - 1 : len(ids) - 1 + n], dtype=np.float64)
        ref = rows - np.logaddexp.reduce(rows, axis=-1, keepdims=True)
        for scores in (done.logprobs, tuple(streamed)):
            for i, lp in enumerate(scores):
                assert lp.token_id == done.token_ids[i] and len(lp.top) == 5
                best = np.sort(ref[i])[::-1][:5]
                worst = max(worst, abs(lp.logprob - float(ref[i, lp.token_id])),
                            float(np.abs(np.array([t.logprob for t in lp.top]) - best).max()))
    assert worst <= bound, f"logprobs differ from the log-softmax of Model.logits by {worst:.3g}"
    return worst


class ModelConformance:
    """Subclass and implement :meth:`load_model`; pytest runs the contract checks."""

    prompt: ClassVar[str] = "Once upon a time"
    roundtrip_texts: ClassVar[tuple[str, ...]] = (
        "Hello world", "  leading spaces", "中文测试，你好！", "emoji 🦙🚀 ok",
        "tabs\tand\nnewlines\n\n", "x = f(1) + 2",
    )
    chat_messages: ClassVar[list[dict[str, str]]] = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once there was a cat."},
        {"role": "user", "content": "And then?"},
    ]

    def load_model(self) -> Model:  # pragma: no cover - the subclass's job
        raise NotImplementedError

    # one model for the class; pytest's fixture machinery without requiring a conftest
    _model: ClassVar[Model | None] = None

    @classmethod
    def _shared(cls, self: ModelConformance) -> Model:
        if cls._model is None or cls._model.closed:
            cls._model = self.load_model()
        return cls._model

    @classmethod
    def teardown_class(cls) -> None:
        if cls._model is not None:
            cls._model.close()
            cls._model = None

    def test_seeded_determinism(self) -> None:
        check_seeded_determinism(self._shared(self), self.prompt)

    def test_stream_equals_generate(self) -> None:
        check_stream_equals_generate(self._shared(self), self.prompt)

    def test_max_new_tokens(self) -> None:
        check_max_new_tokens(self._shared(self), self.prompt)

    def test_stop_strings(self) -> None:
        check_stop_strings(self._shared(self), self.prompt)

    def test_usage(self) -> None:
        check_usage(self._shared(self), self.prompt)

    def test_roundtrip(self) -> None:
        check_roundtrip(self._shared(self), self.roundtrip_texts)

    def test_logits(self) -> None:
        check_logits(self._shared(self), self.prompt)

    def test_chat_template(self) -> None:
        check_chat_template(self._shared(self), self.chat_messages)

    def test_invalid_parameters(self) -> None:
        check_invalid_parameters(self._shared(self), self.prompt)

    def test_token_id_range(self) -> None:
        check_token_id_range(self._shared(self), self.prompt)

    def test_empty_prompt(self) -> None:
        check_empty_prompt(self._shared(self))

    def test_chat_special_tokens_stay_text(self) -> None:
        check_chat_special_tokens_stay_text(self._shared(self), self.chat_messages)

    def test_chat_stop_merge(self) -> None:
        check_chat_stop_merge(self._shared(self), self.chat_messages)

    def test_closed_model_refuses_work(self) -> None:
        check_closed_refuses(self.load_model(), self.prompt)

    def test_info(self) -> None:
        info = self._shared(self).info
        assert info.family and info.format and info.engine and info.device

    #: prompts of different lengths for the batch checks
    batch_prompts: ClassVar[tuple[str, ...]] = ("Once upon a time", "Hello", "The little dog ran to the big", "A")

    def test_batch_equals_single(self) -> None:
        check_batch_equals_single(self._shared(self), self.batch_prompts)

    def test_batch_join_and_cancel(self) -> None:
        check_batch_join_and_cancel(self._shared(self), self.batch_prompts)

    #: short prompts for :meth:`test_batch_with_a_long_prompt` (five of different token counts are used)
    long_batch_prompts: ClassVar[tuple[str, ...]] = (
        "Once upon a time", "Hello", "The little dog ran to the big", "A", "one two three four five six seven",
        "x y", "In the beginning", "Q: why?")
    #: how long its long prompt is: :data:`LONG_PROMPT_TOKENS`, or half the context where that is less
    long_prompt_tokens: ClassVar[int] = LONG_PROMPT_TOKENS

    def test_batch_with_a_long_prompt(self) -> None:
        """A long prompt (rotary and position bugs hide at short positions) in a greedy batch of
        short ones gives exactly the single runs (:func:`check_long_prompt_in_batch`)."""
        model = self._shared(self)
        ctx = model.info.context_length
        tokens = self.long_prompt_tokens if ctx is None else min(self.long_prompt_tokens, ctx // 2)
        check_long_prompt_in_batch(model, list(self.long_batch_prompts),
                                   {"temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}, min_tokens=tokens)


def run_conformance(model_factory: Any) -> Iterator[tuple[str, OpenLLMHubError | AssertionError | None]]:
    """Run every check outside pytest: yields (check name, failure or None)."""
    kit = ModelConformance()
    kit.load_model = model_factory  # type: ignore[method-assign]
    for name in sorted(n for n in dir(ModelConformance) if n.startswith("test_")):
        try:
            getattr(kit, name)()
            yield name, None
        except (AssertionError, OpenLLMHubError) as exc:
            yield name, exc
    ModelConformance.teardown_class()


# ---- converters: a verification that can fail --------------------------------------------------
#: Names of the weight a broken conversion scales: a layer-0 MLP output matrix in the naming of each
#: format (HF, GGUF, Meta, RWKV, GLM/SAT), else the first 2-D weight of layer 0.
_BREAK_PREFERRED = ("down_proj", "ffn_down", "feed_forward.w2", "ffn.value", "dense_4h_to_h")
_LAYER0 = ("layers.0.", "blk.0.", "blocks.0.", "h.0.", "encoder.layers.0.")


def _pick(names: list[str]) -> str | None:
    layer0 = [n for n in names if any(t in n for t in _LAYER0)]
    for pref in _BREAK_PREFERRED:
        for n in layer0:
            if pref in n:
                return n
    return layer0[0] if layer0 else None


def break_checkpoint(path: str | Path, *, factor: float = 2.0) -> str:
    """Scale one layer-0 weight matrix of the checkpoint at ``path`` by ``factor`` (negate it when it is
    an integer, quantized matrix), in place, as a converter bug would (safetensors, GGUF float
    tensors, torch ``.pth``/``.pt`` state dicts, in a
    file or anywhere under a folder). Returns ``file:tensor``; raises AssertionError if nothing
    could be broken. For negative controls: a ``--verify`` must catch this."""
    import numpy as np

    root = Path(path)
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file, save_file  # torch: bf16 has no numpy dtype

            tstate = load_file(str(f))
            name = _pick([k for k, v in tstate.items() if v.ndim == 2])
            if name is not None:
                from openllm_hub.core.io import read_safetensors_header

                meta = read_safetensors_header(f).get("__metadata__")
                t = tstate[name]
                tstate[name] = (t * factor).to(t.dtype) if t.is_floating_point() else -t
                save_file(tstate, str(f), metadata=meta)
                return f"{f.name}:{name}"
        elif f.suffix == ".gguf":
            from gguf import GGUFReader

            reader = GGUFReader(str(f), "r+")
            floats = [t for t in reader.tensors if t.data.dtype in (np.float32, np.float16) and len(t.shape) == 2]
            name = _pick([t.name for t in floats])
            if name is not None:
                tensor = next(t for t in floats if t.name == name)
                tensor.data[...] = tensor.data * factor
                reader.data.flush()
                return f"{f.name}:{name}"
        elif f.suffix in (".pth", ".pt", ".bin"):
            import torch

            blob = torch.load(f, map_location="cpu", weights_only=True)
            state = blob
            while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
                inner = [v for v in state.values() if isinstance(v, dict)]
                if not inner:
                    break
                state = inner[0]
            if isinstance(state, dict):
                name = _pick([k for k, v in state.items() if isinstance(v, torch.Tensor) and v.ndim == 2])
                if name is not None:
                    t = state[name]
                    # quantized (integer) matrices are negated instead: scaling would only saturate them
                    state[name] = t * factor if t.is_floating_point() else -t
                    torch.save(blob, f)
                    return f"{f.name}:{name}"
    raise AssertionError(f"found no layer-0 weight matrix to break under {root}")


def check_verify_catches_broken_conversion(src: str | Path, dst: str | Path, *, to: str,
                                           outtype: str | None = None, family: str | None = None,
                                           options: dict[str, Any] | None = None) -> str:
    """Negative control for a family's converter: run ``convert(..., verify=True)`` with the
    converter's output broken by :func:`break_checkpoint` before verification; the verification
    must fail with a ConversionError and nothing may appear at ``dst``. Returns the failure text."""
    import dataclasses

    from openllm_hub.api import convert, detect, find_converter
    from openllm_hub.core.registry import get_registry
    from openllm_hub.errors import ConversionError

    fam, det = detect(Path(src), family=family)
    conv = find_converter(fam, det.format, to)
    broken_what: list[str] = []

    def broken_run(req: Any) -> None:
        conv.run(req)
        broken_what.append(break_checkpoint(req.dst))

    broken = dataclasses.replace(conv, run=broken_run)
    reg = get_registry()
    reg.families[fam.name] = dataclasses.replace(
        fam, converters=tuple(broken if c is conv else c for c in fam.converters))
    try:
        try:
            convert(src, dst, to=to, outtype=outtype, verify=True, family=fam.name, options=options)
        except ConversionError as exc:
            assert "verification failed" in str(exc), exc
            assert not Path(dst).exists(), f"a failed verification left {dst} behind"
            assert broken_what, "the converter never ran"
            return str(exc)
        raise AssertionError(f"--verify passed a conversion whose {broken_what} was scaled")
    finally:
        reg.families[fam.name] = fam




# ---- several sequences at once (continuous batching) -------------------------------------------
def _batch_params(seed: int, greedy: bool) -> dict[str, Any]:
    return {"max_new_tokens": 10, "seed": seed, **({"temperature": 0.0} if greedy else
                                                     {"temperature": 1.0, "top_k": 0, "top_p": 1.0})}


def _batch_modes(model: Model) -> tuple[bool, ...]:
    """Greedy always; sampled too where the model interleaves (each sequence then runs the very
    computation of its single run, so even sampled text must be identical)."""
    return (True,) if model.batching == "batched" else (True, False)


def check_batch_equals_single(model: Model, prompts: tuple[str, ...] | list[str]) -> None:
    """A batch of several prompts of different lengths, each with its own seed, gives exactly
    the single runs (greedy: the same ids; sampled too, where the engine interleaves), in input
    order, with the same usage; so does the streaming form, and a batch with fewer slots."""
    assert len(prompts) >= 2 and len({len(p) for p in prompts}) >= 2, "give prompts of different lengths"
    for greedy in _batch_modes(model):
        params = [_batch_params(100 + i, greedy) for i in range(len(prompts))]
        single = [model.generate(p, **kw) for p, kw in zip(prompts, params)]
        batch = model.generate_batch(list(prompts), params)
        for i, (a, b) in enumerate(zip(single, batch)):
            assert b.token_ids == a.token_ids and b.text == a.text, \
                f"prompt {i} ({'greedy' if greedy else 'sampled'}): batch gave {b.text!r}, alone {a.text!r}"
            assert b.finish_reason == a.finish_reason and b.usage == a.usage, f"prompt {i}: finish reason or usage"
        streamed: dict[int, list[str]] = {}
        for index, chunk in model.stream_batch(list(prompts), params, slots=2):
            streamed.setdefault(index, []).append(chunk.text)
        assert ["".join(streamed[i]) for i in range(len(prompts))] == [a.text for a in single], \
            "stream_batch with 2 slots differs from the single runs"


def check_batch_join_and_cancel(model: Model, prompts: tuple[str, ...] | list[str]) -> None:
    """A sequence that joins a running batch and one cancelled in the middle leave the others
    unchanged: each surviving sequence equals its single run (greedy). The cancelled one is
    cancelled at step 3, or at the first step after it has produced tokens, before it ends:
    what it gave is a non-empty prefix of its single run."""
    assert len(prompts) >= 3, "give at least three prompts"
    params = [_batch_params(200 + i, True) for i in range(len(prompts))]
    single = [model.generate(p, **kw) for p, kw in zip(prompts, params)]
    configs = [GenerationConfig.build(model.generation_defaults, **kw) for kw in params]
    ids = [model.tokenize(p) for p in prompts]
    texts: dict[int, list[str]] = {}
    tokens: dict[int, list[int]] = {}
    ended: set[int] = set()
    with model.new_batch() as batch:
        keys = {batch.add(ids[0], configs[0]): 0, batch.add(ids[1], configs[1]): 1}
        steps = 0
        cancelled_at: int | None = None
        while batch.running:
            if steps == 2:  # joins while the others are generating
                keys[batch.add(ids[2], configs[2])] = 2
            if steps >= 3 and cancelled_at is None and tokens.get(1):  # leaves in the middle
                assert 1 not in ended, "sequence 1 ended before it could be cancelled: give it a longer answer"
                victim = next(k for k, i in keys.items() if i == 1)
                batch.cancel(victim)
                ended.add(1)
                cancelled_at = steps
            for key, event in batch.step():
                assert not isinstance(event, BaseException), f"sequence {keys[key]} failed: {event!r}"
                texts.setdefault(keys[key], []).append(event.text)
                tokens.setdefault(keys[key], []).extend(event.token_ids)
                if event.finish_reason is not None:
                    ended.add(keys[key])
            steps += 1
            assert steps < 10_000, "the batch never finished"
    for i in (0, 2):
        assert i in ended, f"sequence {i} never finished"
        got = "".join(texts.get(i, []))
        assert tuple(tokens.get(i, [])) == single[i].token_ids and got == single[i].text, \
            f"prompt {i}: in a batch with a join and a cancel it gave {got!r}, alone {single[i].text!r}"
    assert cancelled_at is not None, "sequence 1 produced no token before it ended: nothing was cancelled mid-batch"
    cancelled = tuple(tokens.get(1, []))
    assert cancelled, "the cancelled sequence produced no token before it left"
    assert cancelled == single[1].token_ids[: len(cancelled)], "the cancelled sequence was corrupted before it left"


def check_embedding_between_batch_steps_changes_no_sequence(model: Model, prompt: str = "Once upon a time",
                                                            **params: Any) -> None:
    """``embed()`` called between two steps of a running batch (``model.new_batch()``, as the
    server may) changes no sequence: the batch's greedy ids equal ``generate()``'s. ``params``:
    generation parameters over the default 8 greedy tokens (e.g. ``repeat_penalty=1.0``)."""
    kw: dict[str, Any] = {"max_new_tokens": 8, "temperature": 0.0, **params}
    alone = model.generate(prompt, **kw)
    ids: list[int] = []
    with model.new_batch() as batch:
        batch.add(model.tokenize(prompt), GenerationConfig.build(model.generation_defaults, **kw))
        while batch.running:
            for _, event in batch.step():
                assert not isinstance(event, BaseException), f"the sequence failed: {event!r}"
                ids.extend(event.token_ids)
            model.embed(["a text between two steps"])
    assert tuple(ids) == alone.token_ids, "an embedding between two batch steps changed the sequence"


def check_fallback_equals_single_runs(model: Model, prompts: tuple[str, ...] | list[str],
                                      batching: Batching = "interleaved") -> None:
    """``model`` without its batched decoder (``Model._batch_decoder`` back to the core's
    default, for this check only) serves batches through the core's fallback, which says
    ``batching`` (``"interleaved"``, or ``"serial"`` for an engine that declares
    ``sequence_interleaving = "serial"``) and uses an :class:`~openllm_hub.core.batch.InterleavedDecoder`;
    its batches equal the single runs (:func:`check_batch_equals_single`)."""
    from openllm_hub.core.batch import InterleavedDecoder

    engine_cls = type(model)
    model.__class__ = type(f"Fallback{engine_cls.__name__}", (engine_cls,), {"_batch_decoder": Model._batch_decoder})
    try:
        assert model.batching == batching, f"without its batched decoder the model says {model.batching!r}"
        with model.new_batch(2) as batch:
            assert isinstance(batch.decoder, InterleavedDecoder), type(batch.decoder)
        check_batch_equals_single(model, prompts)
    finally:
        model.__class__ = engine_cls



# ---- stricter batch checks for engines with a batched decoder -------------------------------------
#: The sampling parameters of :func:`check_sampled_batch_matches_single_runs` (seeds 7, 8, ...).
#: Eight prompts of different lengths (1 to 15 words) for an engine's batch tests.
BATCH_PROMPTS = ["Once upon a time", "Hello", "The little dog ran to the big house and", "A",
                 "one two three four five six seven eight nine ten eleven twelve thirteen fourteen", "Q: why?",
                 "In the beginning", "x y"]
SAMPLED = {"max_new_tokens": 12, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1}


def check_greedy_batch_matches_single_runs(model: Model, prompts: list[str], greedy: dict[str, Any],
                                           slots: tuple[int | None, ...] = (None, 3)) -> None:
    """A greedy batch of prompts of different lengths (``greedy`` parameters, 12, 13, ... new
    tokens) gives exactly the single runs, with each slot limit in ``slots``."""
    assert len({len(model.tokenize(p)) for p in prompts}) >= min(6, len(prompts)), "prompts of one length"
    params = [{**greedy, "max_new_tokens": 12 + i} for i in range(len(prompts))]
    single = [model.generate(p, **kw) for p, kw in zip(prompts, params)]
    for limit in slots:
        batch = model.generate_batch(prompts, params, slots=limit)
        for i, (a, b) in enumerate(zip(single, batch)):
            assert b.token_ids == a.token_ids and b.text == a.text, f"slots={limit}, prompt {i}"
            assert b.usage == a.usage and b.finish_reason == a.finish_reason


def check_sampled_batch_matches_single_runs(model: Model, prompts: list[str]) -> None:
    """Same seeds, same samplers: a sampled batch draws what the single runs draw (where the
    engine's batch arithmetic differs only in the last bits, as on fp32 models)."""
    params = [{**SAMPLED, "seed": 7 + i} for i in range(len(prompts))]
    single = [model.generate(p, **kw) for p, kw in zip(prompts, params)]
    batch = model.generate_batch(prompts, params)
    assert [b.token_ids for b in batch] == [a.token_ids for a in single]


def check_joins_and_cancels_leave_the_others_unchanged(model: Model, prompts: list[str],
                                                       greedy: dict[str, Any]) -> None:
    """Eight greedy sequences: three start, five join at step 3, two (1 and 4) are cancelled at
    step 5 (or, each, at the first step after it has produced tokens, before it ends); the others
    give exactly their single runs and the cancelled ones a non-empty prefix of theirs."""
    assert len(prompts) == 8
    kw = {**greedy, "max_new_tokens": 16}
    single = [model.generate(p, **kw) for p in prompts]
    ids = [model.tokenize(p) for p in prompts]
    got: dict[int, list[int]] = {}

    def config() -> GenerationConfig:
        return GenerationConfig.build(model.generation_defaults, **kw).with_seed()

    to_cancel = {1, 4}
    finished: set[int] = set()
    with model.new_batch(8) as batch:
        keys = {batch.add(ids[i], config()): i for i in range(3)}
        for step in range(60):
            if step == 3:
                keys.update({batch.add(ids[i], config()): i for i in range(3, 8)})
            for i in sorted(to_cancel):
                if step >= 5 and got.get(i):
                    assert i not in finished, f"sequence {i} ended before it could be cancelled"
                    batch.cancel(next(k for k, j in keys.items() if j == i))
                    to_cancel.discard(i)
            for key, event in batch.step():
                assert not isinstance(event, BaseException)
                got.setdefault(keys[key], []).extend(event.token_ids)
                if event.finish_reason is not None:
                    finished.add(keys[key])
            if not batch.running:
                break
        assert not batch.running
    assert not to_cancel, f"sequences {sorted(to_cancel)} produced no token before they ended: none was cancelled"
    for i in range(8):
        if i in (1, 4):
            assert got.get(i), f"the cancelled sequence {i} produced no token before it left"
            assert tuple(got.get(i, [])) == single[i].token_ids[: len(got.get(i, []))]
        else:
            assert tuple(got[i]) == single[i].token_ids, f"prompt {i}"


def check_batch_logprobs_match_single_runs(model: Model, prompts: list[str], greedy: dict[str, Any], *,
                                           top_logprobs: int = 3, atol: float = 1e-4) -> None:
    """Greedy with ``logprobs``, 8 new tokens: each prompt of a batch gets its single run's tokens,
    one log-probability per token (within ``atol``: a batched decoder's rows may differ from the
    single path's in the last bits) and the same ``top_logprobs`` alternatives."""
    import numpy as np

    params = {**greedy, "max_new_tokens": 8, "logprobs": True, "top_logprobs": top_logprobs}
    single = [model.generate(p, **params) for p in prompts]
    batch = model.generate_batch(prompts, [params] * len(prompts))
    for i, (a, b) in enumerate(zip(single, batch)):
        assert b.token_ids == a.token_ids, f"prompt {i}: batch gave other tokens than alone"
        assert a.logprobs is not None and b.logprobs is not None, f"prompt {i}: no logprobs"
        assert len(b.logprobs) == len(a.logprobs) == len(b.token_ids), f"prompt {i}: one logprob per token"
        for x, y in zip(a.logprobs, b.logprobs):
            assert x.token_id == y.token_id and abs(x.logprob - y.logprob) <= atol, f"prompt {i}: {x} vs {y}"
            assert [t.token_id for t in x.top] == [t.token_id for t in y.top] and len(y.top) == top_logprobs
            assert np.allclose([t.logprob for t in x.top], [t.logprob for t in y.top], atol=atol), f"prompt {i}: top"


def check_long_prompt_in_batch(model: Model, prompts: list[str], greedy: dict[str, Any], *,
                               min_tokens: int = LONG_PROMPT_TOKENS,
                               decoder: Callable[..., RowBatchDecoder] | None = None, bound: float = 0.0,
                               full_bound: float = 0.0) -> str:
    """A prompt of >= ``min_tokens`` tokens (:func:`long_prompt`) in a batch with short ones of
    different lengths (the first five of ``prompts`` of different token counts), so a row's
    positions reach far beyond the others' (padding, ragged rows, position ids far out):

    * :func:`check_greedy_batch_matches_single_runs` on the five short prompts with the long one
      fourth (all at once, and with 3 slots, where it joins while the first ones generate);
    * with ``decoder`` (a row-batched engine), :func:`check_batched_logits_match_alone` on four
      short prompts and the long one joining at step 3: every logits row within ``bound`` of the
      single run and ``full_bound`` of ``Model.logits``, the same greedy tokens.

    The model's context must hold the long prompt and its answer. Returns the long prompt."""
    by_length: dict[int, str] = {}
    for p in prompts:
        by_length.setdefault(len(model.tokenize(p)), p)
    short = list(by_length.values())[:5]
    assert len(short) == 5, "give five short prompts of different lengths"
    text = long_prompt(model, min_tokens)
    n = len(model.tokenize(text))
    assert n >= min_tokens
    ctx = model.info.context_length
    assert ctx is None or n + 32 <= ctx, f"a context of {ctx} tokens cannot hold a {n}-token prompt and its answer"
    assert max(by_length) < n // 4, "the other prompts must be short"
    check_greedy_batch_matches_single_runs(model, [*short[:3], text, *short[3:]], greedy, slots=(None, 3))
    if decoder is not None:
        check_batched_logits_match_alone(model, decoder, [*short[:4], text], greedy, bound=bound,
                                         full_bound=full_bound)
    return text


def check_long_prompt_does_not_stall_the_others(model: Model, decoder: BatchDecoder, prompts: list[str], long: str,
                                                greedy: dict[str, Any]) -> int:
    """While a long prompt joins ``decoder`` (an engine's batch decoder, empty) and is read, the
    sequences already generating get one token at every step, no step skipped (tokens are
    counted per step, no clock), and their tokens (greedy) are their single runs'; the long
    one's first token is its single run's. Returns how many steps the long prompt took to
    reach its first token (an engine that reads prompts in chunks under a per-step budget
    takes several; the caller checks how many)."""
    def config() -> GenerationConfig:
        return GenerationConfig.build(model.generation_defaults, **greedy).with_seed()

    got: dict[int, list[int]] = {k: [] for k in range(len(prompts))}
    for key, p in enumerate(prompts):
        decoder.join(key, model.tokenize(p), config())
    for _ in range(100):  # until every short one generates
        for key, token in decoder.step().items():
            assert isinstance(token, int), f"sequence {key} ended: {token!r}"
            got[key].append(token)
        if all(got.values()):
            break
    assert all(got.values()), "the short prompts never started generating"
    late = len(prompts)
    decoder.join(late, model.tokenize(long), config())
    steps = 0
    while True:
        out = decoder.step()
        steps += 1
        for key in got:
            token = out.get(key)
            assert isinstance(token, int), f"step {steps} of reading the long prompt: sequence {key} got {token!r}"
            got[key].append(token)
        if late in out:
            first = out[late]
            assert isinstance(first, int), f"the long prompt's sequence ended: {first!r}"
            break
        assert steps < 10_000, "the long prompt never produced a token"
    decoder.leave(late)
    for key, p in enumerate(prompts):
        alone = model.generate(p, **{**greedy, "max_new_tokens": len(got[key])}).token_ids
        assert tuple(got[key][: len(alone)]) == alone, f"prompt {key}: other tokens while the long prompt was read"
    alone_first = model.generate(long, **{**greedy, "max_new_tokens": 1}).token_ids
    assert alone_first in ((), (int(first),)), "the long prompt's first token differs from its single run"
    return steps


def _relative_diff(a: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]) -> float:
    """The largest difference of two logits rows, relative to ``ref``'s range."""
    return float(abs(a - ref).max()) / float(ref.max() - ref.min())


def check_batched_logits_match_alone(model: Model, decoder: Callable[..., RowBatchDecoder], prompts: list[str],
                                     greedy: dict[str, Any], *, bound: float, full_bound: float
                                     ) -> tuple[float, float]:
    """Every logits row a sequence samples from in a row-batched decoder (its prompt's last row,
    then one per generated token) against the same sequence decoded alone and against
    ``Model.logits`` (one pass over all ids), relative to the row's range: within ``bound`` and
    ``full_bound``, the same greedy token, the prompt's row exactly equal (it is read alone).

    ``decoder(model, keep_logits=True)`` makes the engine's
    :class:`~openllm_hub.engines.torch_batch.RowBatchDecoder`. Five prompts of different lengths
    (``greedy`` parameters, 12 steps): four join at once, the fifth at step 3, the second leaves
    at step 6; at the end every row is gone. Returns the largest differences measured (against
    the single run, against ``Model.logits``), for stating bounds.
    """
    import numpy as np

    assert len(prompts) >= 5, "give five prompts"

    def config(**extra: Any) -> GenerationConfig:
        return GenerationConfig.build(model.generation_defaults, **{**greedy, **extra}).with_seed()

    def rows_alone(ids: list[int], n: int) -> list[npt.NDArray[np.float32]]:
        dec = decoder(model, keep_logits=True)
        try:
            dec.join(0, ids, config(max_new_tokens=n))
            for _ in range(n):
                dec.step()
            return dec.logits[0]
        finally:
            dec.close()

    dec = decoder(model, keep_logits=True)
    ids_of = [model.tokenize(p) for p in prompts[:5]]
    generated: dict[int, list[int]] = {k: [] for k in range(5)}
    try:
        for key, ids in enumerate(ids_of[:4]):
            dec.join(key, ids, config())
        for step in range(12):
            if step == 3:
                dec.join(4, ids_of[4], config())
            if step == 6:
                dec.leave(1)
            for key, token in dec.step().items():
                assert isinstance(token, int), f"sequence {key} ended: {token!r}"
                generated[key].append(token)
        worst = worst_full = 0.0
        for key, ids in enumerate(ids_of):
            rows = dec.logits[key]
            assert len(rows) == len(generated[key]) >= 6
            alone = rows_alone(ids, len(rows))
            np.testing.assert_array_equal(rows[0], alone[0], err_msg=f"sequence {key}: the prompt's row, alone")
            full = model.logits(ids + generated[key][:-1])[len(ids) - 1:]
            for row, ref, ref_full in zip(rows, alone, full):
                worst = max(worst, _relative_diff(row, ref))
                worst_full = max(worst_full, _relative_diff(row, ref_full))
                assert int(np.argmax(row)) == int(np.argmax(ref)), f"sequence {key}: another greedy token"
        assert worst <= bound, f"batch logits differ from the single run by {worst:.3g} of the range"
        assert worst_full <= full_bound, f"batch logits differ from Model.logits by {worst_full:.3g} of the range"
    finally:
        dec.close()
    assert dec.rows == 0, "rows left in the decoder"
    return worst, worst_full


# ---- prefix cache (engines that keep read prompts for prompts sharing their prefix) -------------
#: Questions to put after a shared system prompt (:func:`system_prompt`) in the prefix-cache checks.
PREFIX_QUESTIONS = ("What is the capital of France?", "Tell me a story about a dog.", "Why is the sky blue?",
                    "Count to five.", "Name a colour.")


def system_prompt(rules: int) -> str:
    """A long system prompt for the prefix-cache checks: one sentence, then ``rules`` numbered
    rules of plain words (some 15 to 20 ids each on common tokenizers; give enough for two
    blocks of the cache at least, or 1,024 ids where positions far out are to be checked)."""
    return "You are a careful assistant. " + " ".join(
        f"Rule {i}: answer questions about the number {i * 7} politely and briefly." for i in range(rules))


def check_prefix_cache_hits_equal_cold(model: Model, cold: Model, system: str, questions: list[str], *,
                                       bound: float, single_path_hits: bool = True) -> None:
    """Prompts sharing a long ``system`` prompt reuse what ``model``'s prefix cache stored and
    give what ``cold`` (the same weights, its cache off) gives: greedy tokens exactly and
    log-probabilities (of the token and two alternatives) within ``bound``, on the single path
    and in a batch, for another question after the same system prompt, a prompt that is a prefix
    of a stored one, and under a budget that holds one entry (least recently used evicted).

    ``model.prefix_cache`` is the engine's :class:`~openllm_hub.engines.prefix_cache.PrefixCache`
    (replaced by fresh ones during the check, then put back); ``questions``: at least 4, whose
    prompts share the whole system prompt (two blocks at least: give a long one).
    ``single_path_hits=False`` for an engine whose single path reuses its last prompt's cache
    itself before it asks the store (llama.cpp): its single-path hits are then not counted.
    """
    from openllm_hub.engines.prefix_cache import PrefixCache

    original: PrefixCache | None = model.prefix_cache
    assert original is not None, "this model keeps no prefix cache (Model.prefix_cache is None)"
    assert original.enabled, "the model's prefix cache is off"
    assert cold.prefix_cache is None or not cold.prefix_cache.enabled, "the cold model's prefix cache is on"
    assert len(questions) >= 4, "give at least 4 questions"
    params: dict[str, Any] = {"max_new_tokens": 8, "temperature": 0.0, "logprobs": True, "top_logprobs": 2}
    prompts = [f"{system}\n{q}" for q in questions]
    ids = [model.tokenize(p) for p in prompts]
    shared = min(next((i for i, (a, b) in enumerate(zip(ids[0], x)) if a != b), len(x)) for x in ids[1:])
    block = original.block_tokens

    def same(got: Completion, want: Completion, what: str) -> None:
        assert got.token_ids == want.token_ids, f"{what}: {got.text!r} with the cache, {want.text!r} cold"
        assert got.logprobs is not None and want.logprobs is not None
        worst = 0.0
        for a, b in zip(got.logprobs, want.logprobs):
            worst = max(worst, abs(a.logprob - b.logprob),
                        *(abs(x.logprob - y.logprob) for x, y in zip(a.top, b.top) if x.token_id == y.token_id))
        assert worst <= bound, f"{what}: log-probabilities differ from the cold run's by {worst:.3g} (> {bound})"

    def stats() -> dict[str, int]:
        store: PrefixCache = model.prefix_cache
        return store.stats()

    try:
        model.prefix_cache = PrefixCache(original.budget_bytes, block_tokens=block)
        assert shared >= 2 * block, f"the prompts share {shared} ids: give a system prompt of 2x{block} ids at least"
        # single path: the first prompt is stored, a second one with another question reuses its system prompt
        same(_generate_ids(model, ids[0], **params), _generate_ids(cold, ids[0], **params), "a first prompt")
        assert stats()["entries"] == 1 and stats()["hits"] == 0, stats()
        same(_generate_ids(model, ids[1], **params), _generate_ids(cold, ids[1], **params), "another question")
        if single_path_hits:
            assert stats()["hits"] == 1 and stats()["tokens_reused"] == shared, stats()
        # a prompt that is a prefix of a stored one reuses all of it but its last id (whose logits it needs)
        short = ids[0][:len(ids[0]) - 3]
        same(_generate_ids(model, short, **params), _generate_ids(cold, short, **params), "a prefix of a stored prompt")
        if single_path_hits:
            assert stats()["hits"] == 2 and stats()["tokens_reused"] == shared + len(short) - 1, stats()
        # a batch: both prompts reuse the system prompt, and give the cold single runs
        hits = stats()["hits"]
        batch = model.generate_batch(prompts[2:4], [params, params])
        for i, got in zip((2, 3), batch):
            same(got, _generate_ids(cold, ids[i], **params), f"question {i} in a batch")
        assert stats()["hits"] == hits + 2, stats()
        # a budget that holds one entry: each new system prompt evicts the last one, results stay cold's
        one = max(stats()["bytes"] // max(stats()["entries"], 1), 1)
        model.prefix_cache = PrefixCache(int(one * 1.5), block_tokens=block)
        cases = [(f"Preamble {k % 3}. {system}", questions[k % len(questions)]) for k in range(5)]
        for k, (pre, q) in enumerate(cases):
            case = model.tokenize(f"{pre}\n{q}")
            same(_generate_ids(model, case, **params), _generate_ids(cold, case, **params), f"eviction case {k}")
        got_stats = stats()
        assert got_stats["evictions"] >= 3 and got_stats["entries"] == 1, got_stats
        assert got_stats["bytes"] <= got_stats["budget_bytes"], got_stats
    finally:
        model.prefix_cache = original


def _kept_logits_decoder(model: Model) -> Any:
    """``model``'s own batched decoder (``Model._batch_decoder``, one slot) keeping every logits
    row its tokens are sampled from (``keep_logits``, as the core's row and llama.cpp decoders
    have it)."""
    decoder = model._batch_decoder(1)
    assert decoder is not None and hasattr(decoder, "keep_logits"), \
        "the model has no batched decoder that keeps its logits rows (keep_logits)"
    kept: Any = decoder
    kept.keep_logits = True
    return kept


def _each_alone(model: Model, prompts: list[list[int]], n: int
                ) -> tuple[list[list[int]], list[list[npt.NDArray[np.float32]]]]:
    """Each prompt alone in turn through one batched decoder of ``model`` (greedy, ``n`` tokens):
    its tokens and the logits rows they were sampled from (a later prompt may reuse what an
    earlier one stored in the prefix cache)."""
    dec = _kept_logits_decoder(model)
    tokens: list[list[int]] = []
    try:
        for key, ids in enumerate(prompts):
            dec.join(key, ids, GenerationConfig.build(model.generation_defaults, max_new_tokens=n,
                                                      temperature=0.0).with_seed())
            got: list[int] = []
            while len(got) < n:
                got += [t for t in dec.step().values() if isinstance(t, int)]
            dec.leave(key)
            tokens.append(got)
        return tokens, [dec.logits[k] for k in range(len(prompts))]
    finally:
        dec.close()


def check_prefix_cache_batched_hits_equal_cold(model: Model, cold: Model, first: str, second: str, *,
                                               bound: float, full_bound: float, cut: int = 3,
                                               min_shared: int = 1024, new_tokens: int = 6) -> tuple[float, float]:
    """In the model's batched decoder (``Model._batch_decoder``, each prompt alone in turn):
    ``second`` reuses the system prompt it shares with ``first`` (at least ``min_shared`` ids,
    where rotary and position mistakes show), and ``first`` without its last ``cut`` ids, a
    prefix of a stored prompt, reuses all of it but its last id; only those two hit, and the
    prefix is not stored again. Every logits row the hits sample from is within ``bound`` of
    ``cold``'s decoder (its cache off) and ``full_bound`` of ``cold``'s ``Model.logits``
    (relative to the row's range), the greedy tokens are cold's, and the first prompt's row (no
    hit) is exactly cold's. ``model``'s prefix cache must start empty. Returns the largest
    differences measured (against the cold decoder, against ``Model.logits``)."""
    import numpy as np

    store = model.prefix_cache
    assert store is not None and store.enabled, "the model's prefix cache is off"
    assert len(store) == 0, "the model's prefix cache must start empty"
    prompts = [model.tokenize(first), model.tokenize(second)]
    prompts.append(prompts[0][:-cut])
    shared = next(i for i, (a, b) in enumerate(zip(*prompts[:2])) if a != b)
    assert shared >= min_shared, f"the prompts share {shared} ids: give a system prompt of {min_shared} ids at least"
    tokens, rows = _each_alone(model, prompts, new_tokens)
    stats = store.stats()
    assert stats["hits"] == 2 and stats["tokens_reused"] == shared + len(prompts[2]) - 1, stats
    assert stats["entries"] == 2, stats  # the third prompt was held already (a prefix of the first)
    cold_tokens, cold_rows = _each_alone(cold, prompts, new_tokens)
    assert tokens == cold_tokens, "a hit gave other greedy tokens than cold"
    np.testing.assert_array_equal(rows[0][0], cold_rows[0][0])  # no hit: the very computation
    worst = worst_full = 0.0
    for key in (1, 2):
        full = cold.logits(prompts[key] + tokens[key][:-1])[len(prompts[key]) - 1:]
        for row, ref, ref_full in zip(rows[key], cold_rows[key], full):
            worst = max(worst, _relative_diff(row, ref))
            worst_full = max(worst_full, _relative_diff(row, ref_full))
    assert worst <= bound, f"a hit's logits differ from the cold run by {worst:.3g} of the range"
    assert worst_full <= full_bound, f"a hit's logits differ from Model.logits by {worst_full:.3g} of the range"
    return worst, worst_full


#: The prompts already generating when :func:`check_prefix_cache_join_with_a_hit_equals_cold` joins its one.
RUNNING_PROMPTS = ("Once upon a time", "The little dog ran to the big house and")


def check_prefix_cache_join_with_a_hit_equals_cold(model: Model, cold: Model, stored: str, joining: str, *,
                                                   running: tuple[str, ...] = RUNNING_PROMPTS,
                                                   new_tokens: int = 10) -> None:
    """A sequence joins a running batch (``model.new_batch()``: the ``running`` prompts decoding,
    greedy) at step 3 and reuses the system prompt that ``stored``, generated just before, left
    in the prefix cache: its tokens and its neighbours' equal the same batch on ``cold`` (the
    same weights, its cache off), and the join is one hit."""
    def run(m: Model) -> dict[int, list[int]]:
        m.generate(stored, max_new_tokens=1, temperature=0.0)  # stores the system prompt
        config = GenerationConfig.build(m.generation_defaults, max_new_tokens=new_tokens, temperature=0.0)
        got: dict[int, list[int]] = {}
        with m.new_batch(len(running) + 1) as batch:
            keys = {batch.add(m.tokenize(p), config): i for i, p in enumerate(running)}
            step = 0
            while batch.running:
                if step == 3:
                    keys[batch.add(m.tokenize(joining), config)] = len(running)
                for key, event in batch.step():
                    assert not isinstance(event, BaseException), f"sequence {keys[key]} failed: {event!r}"
                    got.setdefault(keys[key], []).extend(event.token_ids)
                step += 1
                assert step < 10_000, "the batch never finished"
        assert set(got) == set(range(len(running) + 1)), f"sequences that gave no token: {got}"
        return got

    store = model.prefix_cache
    assert store is not None and store.enabled, "the model's prefix cache is off"
    hits = store.stats()["hits"]
    assert run(model) == run(cold), "a join with a prefix-cache hit changed the batch's tokens"
    assert store.stats()["hits"] == hits + 1, store.stats()


def check_prefix_cache_what_is_stored(model: Model, prompt: str, short: str = "Hello there") -> None:
    """What the prefix cache stores: nothing for a stream closed before its prompt was read,
    nothing for a prompt shorter than one block (``short``), and a prompt read in full
    (``prompt``, longer than a block) is. ``model``'s prefix cache must start empty."""
    store = model.prefix_cache
    assert store is not None and store.enabled, "the model's prefix cache is off"
    assert len(store) == 0, "the model's prefix cache must start empty"
    ids = model.tokenize(prompt)
    assert len(ids) > store.block_tokens, "give a prompt longer than one block"
    assert len(model.tokenize(short)) < store.block_tokens, "give a short prompt shorter than one block"
    config = GenerationConfig.build(model.generation_defaults, max_new_tokens=2, temperature=0.0).with_seed()
    stream = model._token_stream(ids, config)
    assert isinstance(stream, Generator), "Model._token_stream must be a generator (closing it ends the stream)"
    stream.close()  # never started
    assert len(store) == 0, "a stream closed before it started stored its prompt"
    model.generate(short, max_new_tokens=2, temperature=0.0)
    assert len(store) == 0, "a prompt shorter than one block was stored"
    model.generate(prompt, max_new_tokens=2, temperature=0.0)
    assert store.covers(ids), "a prompt read in full was not stored"


def check_prefix_cache_server_answers_equal(model: Model, cold: Model, system: str, questions: list[str], *,
                                            max_tokens: int = 6, chat_template: str | None = None) -> None:
    """Two requests sharing the long ``system`` prompt through ``/v1/chat/completions`` (two
    slots; needs fastapi and httpx): the same answers with the cache on (``model``) and off
    (``cold``), and a later request hit the cache."""
    from fastapi.testclient import TestClient

    from openllm_hub.server.app import create_app

    def answers(m: Model) -> list[str]:
        out = []
        extra = {} if chat_template is None else {"chat_template": chat_template}
        with TestClient(create_app(m, parallel=2)) as client:
            for q in questions[:2]:
                r = client.post("/v1/chat/completions", json={
                    "model": "m", "max_tokens": max_tokens, "temperature": 0, **extra,
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
                assert r.status_code == 200, r.text
                out.append(str(r.json()["choices"][0]["message"]["content"]))
        return out

    assert answers(model) == answers(cold)
    store = model.prefix_cache
    assert store is not None and store.stats()["hits"] >= 1, "no request hit the prefix cache"


__all__ = [
    "BATCH_PROMPTS",
    "COMMON_SPECIALS",
    "LONG_PROMPT_TOKENS",
    "LONG_TEXT",
    "PREFIX_QUESTIONS",
    "RUNNING_PROMPTS",
    "SAMPLED",
    "Completion",
    "ModelConformance",
    "break_checkpoint",
    "check_batch_equals_single",
    "check_batch_join_and_cancel",
    "check_batch_logprobs_match_single_runs",
    "check_batched_logits_match_alone",
    "check_chat_special_tokens_stay_text",
    "check_embedding_between_batch_steps_changes_no_sequence",
    "check_fallback_equals_single_runs",
    "check_greedy_batch_matches_single_runs",
    "check_joins_and_cancels_leave_the_others_unchanged",
    "check_logprobs_match_logits",
    "check_long_prompt_does_not_stall_the_others",
    "check_long_prompt_in_batch",
    "check_prefix_cache_batched_hits_equal_cold",
    "check_prefix_cache_hits_equal_cold",
    "check_prefix_cache_join_with_a_hit_equals_cold",
    "check_prefix_cache_server_answers_equal",
    "check_prefix_cache_what_is_stored",
    "check_sampled_batch_matches_single_runs",
    "check_verify_catches_broken_conversion",
    "long_prompt",
    "run_conformance",
    "system_prompt",
]
