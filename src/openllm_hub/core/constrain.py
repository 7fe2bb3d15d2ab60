"""Structured output: a grammar (JSON schema, any JSON object, or a Lark grammar) as a token mask.

``GenerationConfig.json_schema`` / ``json_object`` / ``grammar`` are compiled by llguidance
into a matcher over the model's vocabulary (each token id's bytes, ``Model._vocab_bytes``).
Before each draw the matcher's mask sets every token the grammar cannot continue with to
``-inf`` in the logits row, in ONE place per sampler: the core numpy
:class:`~openllm_hub.core.sampling.Sampler` (every torch/numpy engine) and the llama.cpp
engine's sampler chain (its logits row is masked in place before the chain runs). The
end-of-sequence ids are allowed only where the grammar accepts, so a generation that ends
by EOS is always complete; one cut by ``max_new_tokens`` is not, so give it room (a tiny
random model needs a few hundred tokens for a nested schema: the grammar forces the tokens
it leaves no choice for, but a random model picks long strings and numbers freely).
Logprobs stay those of the raw logits (before the mask).

Why llguidance (measured by benchmarks/bench_structured.py: 32,000-token byte vocabulary, the
24 schemas of tests/test_structured.py, 1 CPU thread; benchmarks/RESULTS.md "Structured output"):

====================  =======================================  ========  ==============  =================
library               installed size, dependencies             schemas   compile ms      mask us/token
                                                               accepted  (median / max)  (median / p95)
====================  =======================================  ========  ==============  =================
llguidance 1.9.1      7.6 MB, none                             24/24     0.3 / 0.5       10 / 135
xgrammar 0.2.9        3.9 MB + tvm-ffi 13 MB; torch,           24/24     0.3 / 2.7       1 / 9
                      transformers, triton required
outlines-core 0.2.14  5.3 MB, none                             23/24     1.4 / 35        0 / 48
====================  =======================================  ========  ==============  =================

End to end on the tiny LLaMA (32k vocabulary) the mask costs +0.06 ms/token on llama.cpp
(0.43 -> 0.49 ms) and is within noise on transformers. All three are fast enough; llguidance
is correct on the whole set, needs no torch (the llama.cpp-only install stays light), compiles
lazily (no per-schema index over the vocabulary, which makes outlines-core's start slow), takes
Lark grammars (and GBNF through ``llguidance.gbnf_to_lark``) and is what llama.cpp itself
links for ``%llguidance`` grammars.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from openllm_hub.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    from openllm_hub.core.config import GenerationConfig
    from openllm_hub.core.model import Model

#: any JSON object (``response_format: {"type": "json_object"}``)
ANY_OBJECT: dict[str, Any] = {"type": "object"}
_FIX_SCHEMA = ("give a JSON schema llguidance supports (types, properties/required, items, enum/const, anyOf/oneOf, "
               "minimum/maximum, minLength/maxLength, pattern, $defs/$ref)")


def grammar_text(config: GenerationConfig) -> str | None:
    """The llguidance grammar of ``config``'s constraint, None when it has none. Raises
    :class:`InvalidParameterError` naming the field when it is not valid."""
    if not config.constrained:
        return None
    try:
        import llguidance  # noqa: F401 - the optional extra 'structured'
    except ImportError:
        raise InvalidParameterError("structured output (json_schema, json_object, grammar) needs llguidance, "
                                    "which is not installed", where="json_schema",
                                    fix="pip install 'openllm-hub[structured]'") from None
    field, grammar = _grammar(config)
    if grammar is None:
        return None
    ok, messages = _validate(grammar)
    if not ok:
        raise InvalidParameterError(f"the {field} cannot be compiled: {messages[0] if messages else 'invalid'}",
                                    where=field, fix=_FIX_SCHEMA if field != "grammar" else
                                    "give a Lark grammar (llguidance's syntax, start rule 'start') or GBNF")
    return grammar


def _grammar(config: GenerationConfig) -> tuple[str, str | None]:
    from llguidance import LLMatcher

    given = [n for n in ("json_schema", "grammar") if getattr(config, n) is not None]
    if config.json_object:
        given.append("json_object")
    if len(given) > 1:
        raise InvalidParameterError(f"{' and '.join(given)} are both set; one constraint at a time",
                                    where=given[1], fix="set only one of json_schema, json_object, grammar")
    if config.json_schema is not None:
        try:
            return "json_schema", LLMatcher.grammar_from_json_schema(json.dumps(config.json_schema),
                                                                     defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as exc:
            raise InvalidParameterError(f"the json_schema is not valid: {exc}", where="json_schema",
                                        fix=_FIX_SCHEMA) from None
    if config.json_object:
        return "json_object", LLMatcher.grammar_from_json_schema(json.dumps(ANY_OBJECT),
                                                                 defaults={"whitespace_flexible": False})
    if config.grammar is not None:
        text = config.grammar
        if "::=" in text:  # GBNF (llama.cpp's grammar form)
            from llguidance.gbnf_to_lark import gbnf_to_lark

            try:
                text = gbnf_to_lark(text)
            except Exception as exc:  # noqa: BLE001 - the converter raises plain exceptions
                raise InvalidParameterError(f"the grammar (GBNF) cannot be converted: {exc}", where="grammar",
                                            fix="check the GBNF syntax (root ::= ...)") from None
        return "grammar", LLMatcher.grammar_from_lark(text)
    return "", None


def _validate(grammar: str) -> tuple[bool, list[str]]:
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    return not is_error, list(messages)


class _Vocab:
    """What llguidance's ``TokenizerWrapper`` reads: every id's bytes, EOS/BOS, specials, and a
    greedy byte tokenizer (used by llguidance for grammar literals only)."""

    def __init__(self, tokens: Sequence[bytes], eos: Sequence[int], bos: int | None) -> None:
        self.tokens = list(tokens)
        self.eos_token_id = eos[0]
        self.bos_token_id = bos
        self.special_token_ids = sorted({*eos, *([bos] if bos is not None else []),
                                         *(i for i, t in enumerate(self.tokens) if not t)})
        self._by_bytes = {t: i for i, t in reversed(list(enumerate(self.tokens))) if t}
        self._longest = max((len(t) for t in self.tokens), default=1)

    def __call__(self, text: bytes) -> list[int]:
        out, i = [], 0
        while i < len(text):
            for n in range(min(self._longest, len(text) - i), 0, -1):
                tid = self._by_bytes.get(text[i : i + n])
                if tid is not None:
                    out.append(tid)
                    i += n
                    break
            else:
                i += 1  # a byte no token spells: skipped (only literal healing uses this)
        return out


_TOKENIZERS: weakref.WeakKeyDictionary[Model, Any] = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _tokenizer(model: Model) -> Any:
    """llguidance's tokenizer of ``model``, built once per model (a few hundred ms for 32k ids)."""
    with _TOKENIZERS_LOCK:
        tok = _TOKENIZERS.get(model)
        if tok is None:
            from llguidance import LLTokenizer, TokenizerWrapper

            eos = list(model.eos_token_ids)
            if not eos:
                raise InvalidParameterError("structured output needs an end-of-sequence token; this model has none",
                                            where="json_schema")
            tokens = model._vocab_bytes()
            affixes = model._prompt_affixes()[0]
            vocab = _Vocab(tokens, eos, affixes[0] if len(affixes) == 1 else None)
            tok = LLTokenizer(TokenizerWrapper(vocab), n_vocab=len(tokens), eos_token=eos, slices=None)
            _TOKENIZERS[model] = tok
        return tok


class Constraint:
    """A compiled grammar for one model; :meth:`matcher` starts one generation's state."""

    def __init__(self, model: Model, grammar: str) -> None:
        self._tokenizer = _tokenizer(model)
        self._grammar = grammar
        self.vocab_size = int(self._tokenizer.vocab_size)

    def matcher(self) -> TokenMask:
        return TokenMask(self._tokenizer, self._grammar, self.vocab_size)


class TokenMask:
    """One generation's grammar state: :meth:`apply` masks a logits row, :meth:`advance`
    consumes the drawn id."""

    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int) -> None:
        import numpy as np
        from llguidance import LLMatcher

        self._m = LLMatcher(tokenizer, grammar, log_level=0)
        if self._m.is_error():
            raise InvalidParameterError(f"the constraint cannot be compiled: {self._m.get_error()}",
                                        where="json_schema")
        self._vocab = vocab_size
        self._bits = np.full(((vocab_size + 31) // 32,), -1, dtype=np.int32)

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Boolean mask over the vocabulary: the ids the grammar allows next."""
        import numpy as np

        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._m.is_error():
            raise InvalidParameterError(f"structured output failed: {self._m.get_error()}", where="json_schema")
        # bit i of word w allows id 32 * w + i (little-endian words, least significant bit first)
        allowed: npt.NDArray[np.bool_] = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[
            : self._vocab].view(np.bool_)
        return allowed

    def apply(self, logits: npt.NDArray[np.float32]) -> None:
        """Set the logits of disallowed ids to -inf, in place (ids past the vocabulary too)."""
        import numpy as np

        allowed = self.allowed()
        n = min(len(allowed), logits.shape[-1])
        np.putmask(logits[:n], ~allowed[:n], -np.inf)
        logits[n:] = -np.inf

    def advance(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise InvalidParameterError(f"structured output failed at token {token}: {self._m.get_error()}",
                                        where="json_schema")


def bind(config: GenerationConfig, model: Model) -> GenerationConfig:
    """``config`` with its constraint compiled for ``model`` (samplers read it with
    :func:`mask_for`); unchanged when it has none."""
    grammar = grammar_text(config)
    if grammar is None:
        return config
    bound = config.model_copy()
    bound._constraint = Constraint(model, grammar)
    return bound


def mask_for(config: GenerationConfig) -> TokenMask | None:
    """A fresh grammar state for one generation with ``config``; None without a constraint.
    A constraint that was set but never bound to a model is a programming error."""
    constraint: Constraint | None = config._constraint
    if constraint is None:
        if config.constrained:
            raise InvalidParameterError("this generation has a constraint that was not bound to the model",
                                        where="json_schema", fix="generate through Model (generate/stream/chat)")
        return None
    return constraint.matcher()
