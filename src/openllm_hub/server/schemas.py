"""Request and response bodies in the shape of OpenAI's API.

Requests reject unknown fields by name (OpenAI does the same), accept the fields every
OpenAI client sends, and refuse, with a clear 400, the ones this server cannot honour
(``n > 1``, penalties other than 0, ...). ``logprobs`` come in OpenAI's two shapes:
chat's ``choices[].logprobs.content[]`` and the legacy completions' parallel lists
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``). ``response_format``
(``json_object``, ``json_schema``) constrains the answer, on completions too. Four llama.cpp-style
extensions are accepted: ``top_k``, ``repeat_penalty``, ``grammar`` (the answer follows a GBNF
grammar, as llama-cpp-python's server takes it, or a Lark grammar in llguidance's syntax; both
endpoints) and ``chat_template`` (a template name). Responses are built from the models below,
so the JSON always has OpenAI's keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: OpenAI accepts at most four stop sequences.
MAX_STOP = 4
SEED_LIMIT = 2**32


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = False


# The fields both completion endpoints share.
class RequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="echoed back; the server answers with the one model it serves")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # llama.cpp-style extensions (pass with the openai client's ``extra_body``)
    top_k: int | None = Field(None, ge=0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    #: the answer follows this grammar: GBNF (llama.cpp's form, ``root ::= ...``) or Lark (llguidance)
    grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    #: an assistant turn's calls (OpenAI's shape), answered by ``tool`` turns naming ``tool_call_id``
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(RequestBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    chat_template: str | None = Field(None, description="extension: a chat template name instead of the model's")


class CompletionRequest(RequestBase):
    prompt: str | list[str]
    echo: bool | None = None
    #: legacy form: the chosen token's logprob plus this many alternatives (OpenAI allows 5, this server 20)
    logprobs: int | None = None
    #: OpenAI's structured output (also accepted on legacy completions, as vLLM and llama-server do)
    response_format: dict[str, Any] | None = None
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="echoed back; the server answers with the one model it serves")
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None
    #: extension: scale each vector to unit length (default: as computed)
    normalize: bool = False


# ---- responses -----------------------------------------------------------------------------
class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    #: the vector, or with ``encoding_format="base64"`` its little-endian float32 bytes in base64
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(BaseModel):
    name: str
    #: the arguments, a JSON object as a string
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ToolCallDelta(BaseModel):
    """A streamed call (OpenAI's shape): each call comes whole, in one delta, at its ``index``."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageOut | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class TextCompletion(BaseModel):
    """A completion, and also each streamed chunk of one (OpenAI uses the same object)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "openllm-hub"
    #: extension: what the model is and the limits this server applies
    meta: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "shutting_down"]
    running: int
    waiting: int
    capacity: int
    completed: int
