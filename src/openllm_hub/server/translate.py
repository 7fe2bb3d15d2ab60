"""From an OpenAI request to the SDK's generation parameters and chat messages.

Only what the caller set is passed on, so a model's own ``generation_defaults`` apply to
the rest. Everything is validated here, on a worker thread (the app calls these off the event
loop) and before the request takes a queue slot: a bad request costs no generation time. The
chat template is not rendered here: ``Model.stream_chat`` renders it once, and its errors (a
template that raises, control tokens the model lacks) are 400s from there.
"""

from __future__ import annotations

from typing import Any

from openllm_hub.core.chat import validate_messages
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.logprobs import MAX_TOP_LOGPROBS
from openllm_hub.core.model import Model
from openllm_hub.errors import OpenLLMHubError
from openllm_hub.server.errors import APIError, from_exception, invalid_request
from openllm_hub.server.schemas import ChatCompletionRequest, CompletionRequest, RequestBase


def _unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"{param} is not supported by this server: {why}", param=param, code="unsupported_parameter")


def _common(req: RequestBase, max_tokens: int | None, *, default_max: int, limit: int) -> dict[str, Any]:
    if req.n not in (None, 1):
        raise _unsupported("n", "one choice per request (send several requests instead)")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0.0):
            raise _unsupported(name, "only 0 is accepted; use the repeat_penalty extension")
    if req.logit_bias:
        raise _unsupported("logit_bias", "not implemented")
    if req.stream_options is not None and not req.stream:
        raise invalid_request("stream_options is only allowed with stream=true", param="stream_options")
    wanted = default_max if max_tokens is None else max_tokens
    if wanted > limit:
        raise invalid_request(f"max_tokens is {wanted}; this server allows at most {limit}", param="max_tokens",
                              code="max_tokens_too_large")
    params: dict[str, Any] = {"max_new_tokens": wanted}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("top_k", "top_k"), ("repeat_penalty", "repeat_penalty")):
        value = getattr(req, theirs)
        if value is not None:
            params[ours] = value
    if req.stop is not None:
        params["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.grammar is not None:  # llama-cpp-python's extension (GBNF), Lark too
        if not req.grammar.strip():
            raise invalid_request("grammar is empty; give a GBNF (root ::= ...) or Lark (start: ...) grammar",
                                  param="grammar")
        params["grammar"] = req.grammar
    return params


def _top_logprobs(value: int, param: str) -> int:
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise invalid_request(f"{param} is {value}; it must be between 0 and {MAX_TOP_LOGPROBS}", param=param)
    return value


def response_format(value: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI ``response_format`` as generation parameters: ``text`` (none), ``json_object``
    (any JSON object), ``json_schema`` (``{"name", "schema", "strict"}``: the answer is valid for
    ``schema``; it is always enforced, strict or not)."""
    if value is None:
        return {}
    kind = value.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid_request("response_format.json_schema must be an object with a name and a schema",
                                  param="response_format.json_schema")
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise invalid_request(f"response_format.json_schema.strict is {strict!r}; it must be true or false (the "
                                  "schema is enforced either way)", param="response_format.json_schema.strict")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise invalid_request("response_format.json_schema.schema must be a JSON schema object",
                                  param="response_format.json_schema.schema")
        return {"json_schema": schema}
    raise invalid_request(f"response_format.type is {kind!r}; it must be 'text', 'json_object' or 'json_schema'",
                          param="response_format.type")


_CONSTRAINT_PARAMS = {"json_schema": "response_format.json_schema.schema", "json_object": "response_format"}


def check_params(model: Model, params: dict[str, Any]) -> None:
    """Validate the parameters now, as the model will (so errors are 400s before queueing);
    a structured-output schema is compiled too (the error names response_format's field)."""
    from openllm_hub.core.constrain import grammar_text

    try:
        config = GenerationConfig.build(model.generation_defaults, **params)
        grammar_text(config)
    except OpenLLMHubError as exc:
        err = from_exception(exc)
        if err.param in _CONSTRAINT_PARAMS and ("json_schema" in params or "json_object" in params):
            err.param = _CONSTRAINT_PARAMS[err.param]
        raise err from None


def completion_params(model: Model, req: CompletionRequest, *, limit: int) -> tuple[str, dict[str, Any]]:
    """The prompt and generation parameters of a ``/v1/completions`` request."""
    if req.echo:
        raise _unsupported("echo", "the answer never repeats the prompt")
    if req.best_of not in (None, 1):
        raise _unsupported("best_of", "one candidate per request")
    if req.suffix is not None:
        raise _unsupported("suffix", "no fill-in-the-middle")
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise _unsupported("prompt", "exactly one prompt string per request")
        prompt = req.prompt[0]
    else:
        prompt = req.prompt
    # OpenAI's default for completions is 16 tokens
    params = _common(req, req.max_tokens, default_max=min(16, limit), limit=limit)
    if req.logprobs is not None:  # legacy form: the chosen token's logprob and this many alternatives
        params["logprobs"] = True
        params["top_logprobs"] = _top_logprobs(req.logprobs, "logprobs")
    params.update(response_format(req.response_format))
    check_params(model, params)
    return prompt, params


def _tools(model: Model, req: ChatCompletionRequest, params: dict[str, Any]) -> None:
    """``tools``/``tool_choice`` into ``params`` (for ``stream_chat``), checked: each a 400 naming its field."""
    if req.parallel_tool_calls is False:
        raise _unsupported("parallel_tool_calls", "a model may write several calls in one answer; only true is "
                                                  "accepted")
    if req.tools is None and req.tool_choice is None:
        return
    from openllm_hub.core.tool_calls import tool_choice_mode, validate_tools

    try:
        tools = validate_tools(req.tools) if req.tools is not None else None
        mode, _ = tool_choice_mode(req.tool_choice, tools)
        model.tool_call_reader(tools, req.tool_choice, req.chat_template)  # the template can render them
    except OpenLLMHubError as exc:
        raise from_exception(exc) from None
    if mode == "required":  # the answer is constrained to one call: no other constraint fits with it
        for ours, theirs in (("grammar", "grammar"), ("json_schema", "response_format"),
                             ("json_object", "response_format")):
            if params.get(ours) not in (None, False):  # an empty schema {} is a constraint too
                raise invalid_request(f"{theirs} cannot be combined with tool_choice {req.tool_choice!r}, which "
                                      "constrains the answer to one tool call", param=theirs)
    params.update(tools=tools, tool_choice=req.tool_choice)


def chat_params(
    model: Model, req: ChatCompletionRequest, *, limit: int
) -> tuple[list[dict[str, Any]], str | None, dict[str, Any]]:
    """The messages, template name and generation parameters (with ``tools`` and ``tool_choice``
    when given, and the ``response_format`` constraint) of a ``/v1/chat/completions`` request."""
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise invalid_request("max_tokens and max_completion_tokens disagree", param="max_completion_tokens")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    params = _common(req, max_tokens, default_max=limit, limit=limit)
    params.update(response_format(req.response_format))
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise invalid_request("top_logprobs needs logprobs=true", param="top_logprobs")
        params["top_logprobs"] = _top_logprobs(req.top_logprobs, "top_logprobs")
    if req.logprobs:
        params["logprobs"] = True
    _tools(model, req, params)
    raw: list[dict[str, Any]] = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls is not None:
            msg["tool_calls"] = m.tool_calls
        if m.role == "tool":
            msg.update({k: v for k, v in (("tool_call_id", m.tool_call_id), ("name", m.name)) if v is not None})
        raw.append(msg)
    try:
        messages: list[dict[str, Any]] = [dict(m) for m in validate_messages(raw)]
        model.chat_template(req.chat_template)  # a template name that does not exist is a 400 here
    except OpenLLMHubError as exc:
        raise from_exception(exc) from None
    check_params(model, {k: v for k, v in params.items() if k not in ("tools", "tool_choice")})
    return messages, req.chat_template, params
