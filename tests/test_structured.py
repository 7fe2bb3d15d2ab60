"""Structured output (:mod:`openllm_hub.core.constrain`): every answer parses and validates.

24 JSON schemas (nested objects, arrays, enums, const, numbers with bounds, required and
optional properties, anyOf/oneOf, $ref, string patterns and formats) on every engine family,
with tiny *random* models: every schema, with two seeds and greedy, on the bigram model,
llama.cpp (tiny LLaMA GGUF), transformers (the same LLaMA as an HF folder), ChatGLM-6B,
ChatGLM3, RWKV-7 and GLM-130B (one loaded model per family, shared by its schemas).

A random model closes the JSON only because the grammar's mask leaves it no other choice
once its strings/arrays reach their bounds and EOS is allowed only where the grammar
accepts. So the schemas bound their strings (maxLength) and arrays (maxItems) and say
``additionalProperties: false`` (free keys and unbounded strings let a random model write
forever), and generation gets ``max_new_tokens=MAX_NEW`` (400): enough for these schemas
(the longest answer measured here is well under it); every answer must end by EOS
(``finish_reason == "stop"``), never by the token limit, except a bare number on the engine
families (:data:`ENDLESS`: its digits may go on forever; cut by the limit, it must still
parse and validate).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import openllm_hub
from openllm_hub.core.model import Model
from openllm_hub.errors import InvalidParameterError

MAX_NEW = 400
S = {"type": "string", "maxLength": 8}


def obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


SCHEMAS: dict[str, dict[str, Any]] = {
    "string": S,
    "integer-bounds": {"type": "integer", "minimum": -5, "maximum": 250},
    "number-bounds": {"type": "number", "minimum": 0.5, "maximum": 2.5},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "enum": {"enum": ["red", "green", "blue"]},
    "const": {"const": "fixed"},
    "flat-object": obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                        "ok": {"type": "boolean"}}),
    "optional-props": obj({"id": {"type": "integer", "minimum": 0, "maximum": 9}, "note": S, "tag": S}, ["id"]),
    "nested-object": obj({"user": obj({"name": S, "address": obj({"city": S, "zip": {"type": "string",
                                                                                       "pattern": "^[0-9]{5}$"}})})}),
    "array-of-ints": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 4},
    "array-bounds": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2, "maxItems": 3},
    "array-of-objects": {"type": "array", "maxItems": 3,
                         "items": obj({"k": S, "v": {"type": "number", "minimum": -1, "maximum": 1}})},
    "enum-in-object": obj({"color": {"enum": ["red", "green"]}, "size": {"enum": [1, 2, 3]}}),
    "anyOf": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, S]},
    "anyOf-objects": {"anyOf": [obj({"kind": {"const": "cat"}, "lives": {"type": "integer", "minimum": 1,
                                                                          "maximum": 9}}),
                                obj({"kind": {"const": "dog"}, "good": {"type": "boolean"}})]},
    "oneOf-null": obj({"v": {"oneOf": [{"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 3}]}}),
    "pattern": {"type": "string", "pattern": "^[a-c]{2,4}-[0-9]$"},
    "string-lengths": {"type": "string", "minLength": 3, "maxLength": 5},
    "ref-defs": {"$defs": {"pt": obj({"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                      "y": {"type": "integer", "minimum": 0, "maximum": 9}})},
                 "type": "object", "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
                 "required": ["a", "b"], "additionalProperties": False},
    "tuple-prefixItems": {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": ["x", "y"]}],
                          "items": False},
    "exclusive-bounds": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4},
    "nested-arrays": {"type": "array", "maxItems": 2,
                      "items": {"type": "array", "maxItems": 2, "items": {"type": "boolean"}}},
    "deep": obj({"a": obj({"b": obj({"c": obj({"d": {"enum": [True, 7, "z"]}})})})}),
}


#: Schemas whose whole answer is one JSON number: its digits may go on forever (the grammar allows
#: EOS after every digit but never forces it), and a random model may sample digits until the
#: token limit (measured on ChatGLM-6B and RWKV-7: 400 digits). Such an answer, cut by the limit,
#: is still a number, so it must still parse and validate.
ENDLESS = {"number-bounds"}


def check(model: Model, name: str, seed: int = 0, *, endless_ok: bool = False, **params: Any) -> Any:
    """Generate under schema ``name``: the answer ends by EOS (with ``endless_ok``, one of the
    :data:`ENDLESS` schemas may end by the token limit) and parses and validates."""
    schema = SCHEMAS[name]
    r = model.generate("Answer in JSON:", json_schema=schema, max_new_tokens=MAX_NEW, seed=seed, **params)
    if endless_ok and name in ENDLESS and r.finish_reason == "length":
        assert len(r.token_ids) == MAX_NEW
    else:
        assert r.finish_reason == "stop", (name, r.text)
    value = json.loads(r.text)
    jsonschema.validate(value, schema)
    return value


@pytest.fixture(scope="module")
def bigram() -> Iterator[Model]:
    from openllm_hub_bigram import BUILTIN_MODEL

    with openllm_hub.load(BUILTIN_MODEL, device="cpu") as m:
        yield m


def test_schema_set_size() -> None:
    assert len(SCHEMAS) >= 20


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_bigram_every_schema(bigram: Model, name: str) -> None:
    for seed in (0, 1):
        check(bigram, name, seed)
    check(bigram, name, 0, temperature=0.0)  # greedy too


def test_bigram_json_object_and_grammar(bigram: Model) -> None:
    r = bigram.generate("{", grammar='start: "{\\"n\\": " NUM "}"\nNUM: /[0-9]{1,3}/', max_new_tokens=50, seed=3)
    assert r.finish_reason == "stop" and isinstance(json.loads(r.text)["n"], int)
    gbnf = 'root ::= "yes" | "no"'
    assert bigram.generate("?", grammar=gbnf, max_new_tokens=10, seed=1).text in ("yes", "no")
    # any object: unbounded keys and strings, so a random model may write until the limit (then
    # the text is an unfinished object); whatever ends by EOS is one object. Seeds 1 and 4 end.
    ended = 0
    for seed in range(6):
        r = bigram.generate("Answer in JSON:", json_object=True, max_new_tokens=MAX_NEW, seed=seed)
        assert r.text.startswith("{")
        if r.finish_reason == "stop":
            ended += 1
            assert isinstance(json.loads(r.text), dict)
    assert ended >= 2


def test_stream_and_batch_and_logprobs(bigram: Model) -> None:
    schema = SCHEMAS["flat-object"]
    whole = bigram.generate("x", json_schema=schema, max_new_tokens=MAX_NEW, seed=5)
    assert "".join(c.text for c in bigram.stream("x", json_schema=schema, max_new_tokens=MAX_NEW, seed=5)) \
        == whole.text
    batch = bigram.generate_batch(["x", "y"], json_schema=schema, max_new_tokens=MAX_NEW, seed=5)
    assert batch[0].text == whole.text
    for r in batch:
        jsonschema.validate(json.loads(r.text), schema)
    scored = bigram.generate("x", json_schema=schema, max_new_tokens=MAX_NEW, seed=5, logprobs=True)
    assert scored.text == whole.text and scored.logprobs is not None  # raw logits' logprobs, mask or not


#: Every engine family besides the bigram model: (id, how to load its tiny model). llama.cpp and
#: transformers read the module's tiny LLaMA (GGUF, HF folder); the others the folders
#: ``openllm-hub tiny FAMILY --format FMT -o layers=1`` writes.
FAMILIES = ["llama.cpp", "transformers", "chatglm-6b", "chatglm3", "rwkv7", "glm130b"]
_TINY = {"chatglm-6b": ("chatglm", "chatglm"), "chatglm3": ("chatglm", "chatglm3"), "rwkv7": ("rwkv", "rwkv7"),
         "glm130b": ("glm130b", "sat")}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tiny_llama: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """One loaded tiny model per engine family, shared by every schema of the family."""
    if request.param in ("llama.cpp", "transformers"):
        path = tiny_llama[1] if request.param == "llama.cpp" else tiny_llama[0]
    else:
        from openllm_hub.cli import main

        name, fmt = _TINY[request.param]
        path = tmp_path_factory.mktemp("tiny") / fmt
        assert main(["tiny", name, str(path), "--format", fmt, "-o", "layers=1"]) == 0
    with openllm_hub.load(path, device="cpu", threads=1) as m:
        yield m


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_schema_on_every_engine_family(family: Model, name: str) -> None:
    """The whole schema set on each engine family, as on the bigram model: two seeds and greedy.
    The enums also catch a vocabulary whose pieces lost their leading space (the sentencepiece
    engines' tokens are read after a plain prefix, see ``Model._vocab_bytes``)."""
    for seed in (0, 1):
        check(family, name, seed, endless_ok=True)
    check(family, name, 0, endless_ok=True, temperature=0.0)


def test_llama_cpp_batched_decoder(tiny_llama: tuple[Path, Path]) -> None:
    schema = SCHEMAS["nested-object"]
    with openllm_hub.load(tiny_llama[1], device="cpu", threads=1) as m:
        out = m.generate_batch(["a", "b", "c"], json_schema=schema, max_new_tokens=MAX_NEW, seed=2)
        for r in out:
            assert r.finish_reason == "stop"
            jsonschema.validate(json.loads(r.text), schema)
        assert out[0].text == m.generate("a", json_schema=schema, max_new_tokens=MAX_NEW, seed=2).text


@pytest.mark.parametrize(("params", "field"), [
    ({"json_schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}},
     "json_schema"),
    ({"json_schema": {"type": "no-such-type"}}, "json_schema"),
    ({"grammar": "start: (("}, "grammar"),
    ({"grammar": "root ::= ("}, "grammar"),
    ({"json_schema": {"type": "string"}, "json_object": True}, "json_object"),
])
def test_bad_constraints_are_one_clear_error(bigram: Model, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        bigram.generate("x", max_new_tokens=5, **params)
    assert info.value.where == field and field in str(info.value)
