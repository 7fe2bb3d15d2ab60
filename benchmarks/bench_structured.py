"""Structured output libraries compared: compile time, mask time per token, schema-set coverage.

Run: ``python benchmarks/bench_structured.py`` in an environment with any of llguidance,
xgrammar (needs torch) and outlines-core. A 32,000-token byte vocabulary (256 single bytes
plus the most frequent substrings of this repository's sources) stands in for a LLaMA
tokenizer; each schema of tests/test_structured.py is compiled, then a valid instance of
it (a fixed example) is walked token by token (greedy longest-match tokenization), timing
the mask computation before each token, one CPU thread.
"""

from __future__ import annotations

import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32000


def vocabulary() -> list[bytes]:
    text = " ".join(p.read_text(errors="ignore") for p in sorted((ROOT / "src").rglob("*.py")))
    words = collections.Counter(re.findall(r" ?[A-Za-z_]+|[0-9]{1,3}|[^\sA-Za-z0-9]{1,3}", text))
    pieces = [bytes([b]) for b in range(256)]
    seen = set(pieces)
    for w, _ in words.most_common():
        b = w.encode()
        if b not in seen:
            seen.add(b)
            pieces.append(b)
        if len(pieces) >= VOCAB - 1:
            break
    n = 0
    while len(pieces) < VOCAB - 1:  # filler: pieces no JSON contains
        pieces.append(b"\xff" + str(n).encode())
        n += 1
    return [*pieces, b""]  # last id: EOS


def tokenize(text: bytes, index: dict[bytes, int]) -> list[int]:
    out, i = [], 0
    while i < len(text):
        for n in range(min(12, len(text) - i), 0, -1):
            if text[i : i + n] in index:
                out.append(index[text[i : i + n]])
                i += n
                break
    return out


def bench_llguidance(tokens: list[bytes], schemas: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    import llguidance
    import numpy as np
    from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

    index = {t: i for i, t in enumerate(tokens) if t}

    class V:
        eos_token_id, bos_token_id, special_token_ids = VOCAB - 1, None, [VOCAB - 1]

        def __init__(self) -> None:
            self.tokens = tokens

        def __call__(self, s: bytes) -> list[int]:
            return tokenize(s, index)

    tok = LLTokenizer(TokenizerWrapper(V()), n_vocab=VOCAB, eos_token=VOCAB - 1)
    bits = np.zeros(((VOCAB + 31) // 32,), dtype=np.int32)
    return run(schemas, examples, index, "llguidance " + llguidance.__version__,
               compile=lambda s: LLMatcher(tok, LLMatcher.grammar_from_json_schema(
                   json.dumps(s), defaults={"whitespace_flexible": False}), log_level=0),
               ok=lambda m: not m.is_error(),
               mask=lambda m: m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes),
               advance=lambda m, t: m.consume_token(t))


def bench_xgrammar(tokens: list[bytes], schemas: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo(tokens, vocab_type=xgr.VocabType.RAW, vocab_size=VOCAB, stop_token_ids=[VOCAB - 1])
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    bitmask = xgr.allocate_token_bitmask(1, VOCAB)
    index = {t: i for i, t in enumerate(tokens) if t}
    return run(schemas, examples, index, "xgrammar 0.2.9",
               compile=lambda s: xgr.GrammarMatcher(compiler.compile_json_schema(
                   json.dumps(s), any_whitespace=False, separators=(",", ":"))),
               ok=lambda m: True, mask=lambda m: m.fill_next_token_bitmask(bitmask),
               advance=lambda m, t: m.accept_token(t))


def bench_outlines(tokens: list[bytes], schemas: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    mapping: dict[str, list[int]] = {}
    for i, t in enumerate(tokens[:-1]):
        try:
            mapping.setdefault(t.decode("utf-8"), []).append(i)
        except UnicodeDecodeError:
            pass  # outlines-core's Vocabulary takes str pieces (a byte-level vocab needs its own mapping)
    vocab = Vocabulary(VOCAB - 1, mapping)
    index = {t: i for i, t in enumerate(tokens) if t}
    return run(schemas, examples, index, "outlines-core 0.2.14",
               compile=lambda s: Guide(Index(build_regex_from_schema(json.dumps(s)), vocab)),
               ok=lambda m: True, mask=lambda m: m.get_tokens(), advance=lambda m, t: m.advance(t))


def run(schemas: dict[str, Any], examples: dict[str, Any], index: dict[bytes, int], name: str, *,
        compile: Any, ok: Any, mask: Any, advance: Any) -> dict[str, Any]:
    compiled, walked, compile_ms, per_token = 0, 0, [], []
    for key, schema in schemas.items():
        try:
            t0 = time.perf_counter()
            m = compile(schema)
            mask(m)  # the first mask is part of the start cost
            compile_ms.append((time.perf_counter() - t0) * 1e3)
            if not ok(m):
                continue
        except Exception as exc:  # noqa: BLE001
            print(f"  {name}: {key}: {type(exc).__name__}: {str(exc)[:100]}", file=sys.stderr)
            continue
        compiled += 1
        ids = tokenize(json.dumps(examples[key], separators=(",", ":")).encode(), index)
        try:
            advance(m, ids[0])
            for t in ids[1:]:
                t0 = time.perf_counter()
                mask(m)
                per_token.append((time.perf_counter() - t0) * 1e6)
                if advance(m, t) is False:
                    raise ValueError(f"token {t} refused")
            walked += 1
        except Exception as exc:  # noqa: BLE001
            print(f"  {name}: {key} walk: {type(exc).__name__}: {str(exc)[:100]}", file=sys.stderr)
    return {"library": name, "compiled": f"{compiled}/{len(schemas)}", "walked": f"{walked}/{len(schemas)}",
            "compile+first mask ms (median/max)": f"{statistics.median(compile_ms):.1f}/{max(compile_ms):.1f}",
            "mask us/token (median/p95)": f"{statistics.median(per_token):.0f}/"
                                          f"{sorted(per_token)[int(len(per_token) * 0.95)]:.0f}"}


EXAMPLES: dict[str, Any] = {
    "string": "abc", "integer-bounds": 42, "number-bounds": 1.5, "boolean": True, "null": None, "enum": "green",
    "const": "fixed", "flat-object": {"name": "Ann", "age": 33, "ok": False},
    "optional-props": {"id": 3, "tag": "x"}, "nested-object": {"user": {"name": "Bo", "address": {
        "city": "Rome", "zip": "12345"}}}, "array-of-ints": [1, 22, 3], "array-bounds": ["a", "b"],
    "array-of-objects": [{"k": "p", "v": 0.25}], "enum-in-object": {"color": "red", "size": 2}, "anyOf": 7,
    "anyOf-objects": {"kind": "dog", "good": True}, "oneOf-null": {"v": None}, "pattern": "abc-1",
    "string-lengths": "abcd", "ref-defs": {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 4}},
    "tuple-prefixItems": [True, "y"], "exclusive-bounds": 2, "nested-arrays": [[True], [False, True]],
    "deep": {"a": {"b": {"c": {"d": 7}}}},
}


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_structured import SCHEMAS

    tokens = vocabulary()
    for bench in (bench_llguidance, bench_xgrammar, bench_outlines):
        try:
            print(json.dumps(bench(tokens, SCHEMAS, EXAMPLES)))
        except ImportError as exc:
            print(f"{bench.__name__}: not installed ({exc})")


def end_to_end(gguf: str, runs: int = 5) -> None:
    """Decode ms/token on one model with and without a schema (``--model PATH``): the cost of
    the mask inside the SDK (llguidance mask + numpy unpacking + -inf on the row)."""
    import openllm_hub

    # an unbounded string: a random model writes it (nearly) until max_new_tokens, so fixed
    # costs (prompt, compile) weigh as little as unconstrained
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    with openllm_hub.load(gguf, device="cpu", threads=1) as m:
        for label, params in (("unconstrained", {}), ("json_schema", {"json_schema": schema})):
            per_token: list[float] = []
            tokens: list[int] = []
            for seed in range(runs):
                t0 = time.perf_counter()
                r = m.generate("Answer in JSON:", max_new_tokens=200, seed=seed, **params)
                tokens.append(r.usage.completion_tokens)
                per_token.append((time.perf_counter() - t0) * 1e3 / r.usage.completion_tokens)
            print(f"{m.info.engine} {label}: {statistics.median(per_token):.3f} ms/token "
                  f"(median of {runs}; tokens {tokens})")


if __name__ == "__main__" and "--model" in sys.argv:
    end_to_end(sys.argv[sys.argv.index("--model") + 1])
    sys.exit(0)


if __name__ == "__main__":
    main()
