"""Building OpenAI's response objects from the SDK's chunks, for chat and for completions.

Logprobs (when the request asked for them) go with the text they belong to: each streamed
piece carries the logprobs of its chunk's tokens, the whole answer all of them. A chat request
with tools reads the answer through a :class:`~openllm_hub.core.tool_calls.ToolCallStream`:
content goes out as it comes, the calls in the last chunk (each whole, at its ``index``), with
``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, Protocol

from pydantic import BaseModel

from openllm_hub import __version__
from openllm_hub.core.logprobs import TokenLogprob
from openllm_hub.core.model import Usage
from openllm_hub.core.tool_calls import ToolCall, ToolCallStream
from openllm_hub.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatTokenLogprob,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    Delta,
    FunctionCallOut,
    TextCompletion,
    ToolCallDelta,
    ToolCallOut,
    TopLogprobOut,
    UsageOut,
)

Finish = Literal["stop", "length", "tool_calls"]
Scores = tuple[TokenLogprob, ...] | None
FINGERPRINT = f"openllm-hub-{__version__}"


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens)


class ResponseFormat(Protocol):
    """How one endpoint shapes its answer, whole or streamed."""

    def opening(self) -> list[BaseModel]: ...

    def piece(self, text: str, logprobs: Scores = None) -> BaseModel: ...

    def closing(self, finish: Finish) -> BaseModel: ...

    def usage_chunk(self, usage: Usage) -> BaseModel: ...

    def whole(self, text: str, finish: Finish, usage: Usage, logprobs: Scores = None) -> BaseModel: ...


class _Base:
    prefix = ""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.id = f"{self.prefix}{uuid.uuid4().hex}"
        self.created = int(time.time())


def chat_logprobs(scores: Scores) -> ChoiceLogprobs | None:
    """OpenAI chat's ``logprobs`` object: one ``content`` entry per token."""
    if scores is None:
        return None
    return ChoiceLogprobs(content=[
        ChatTokenLogprob(token=s.token, logprob=s.logprob, bytes=list(s.bytes),
                         top_logprobs=[TopLogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.bytes))
                                       for t in s.top])
        for s in scores])


class ChatFormat(_Base):
    prefix = "chatcmpl-"

    def __init__(self, model_id: str, tool_reader: ToolCallStream | None = None) -> None:
        super().__init__(model_id)
        self.tool_reader = tool_reader

    def _finish_tools(self, finish: Finish) -> tuple[str, list[ToolCall], Finish]:
        """The content not given out yet, the calls, and the finish reason."""
        if self.tool_reader is None:
            return "", [], finish
        rest, calls = self.tool_reader.finish()
        return rest, calls, "tool_calls" if calls else finish

    def _chunk(self, delta: Delta, finish: Finish | None = None, logprobs: Scores = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model_id,
                                   choices=[ChatChunkChoice(delta=delta, finish_reason=finish,
                                                            logprobs=chat_logprobs(logprobs))],
                                   system_fingerprint=FINGERPRINT)

    def opening(self) -> list[BaseModel]:
        return [self._chunk(Delta(role="assistant", content=""))]

    def piece(self, text: str, logprobs: Scores = None) -> BaseModel:
        if self.tool_reader is not None:
            text = self.tool_reader.feed(text)
        return self._chunk(Delta(content=text), logprobs=logprobs)

    def closing(self, finish: Finish) -> BaseModel:
        rest, calls, finish = self._finish_tools(finish)
        deltas = [ToolCallDelta(index=i, id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
                  for i, c in enumerate(calls)]
        return self._chunk(Delta(content=rest or None, tool_calls=deltas or None), finish)

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model_id, choices=[],
                                   usage=usage_out(usage), system_fingerprint=FINGERPRINT)

    def whole(self, text: str, finish: Finish, usage: Usage, logprobs: Scores = None) -> BaseModel:
        calls: list[ToolCall] = []
        if self.tool_reader is not None:
            sent = self.tool_reader.feed(text)
            rest, calls, finish = self._finish_tools(finish)
            text = (sent + rest).strip() if calls else sent + rest
        message = AssistantMessage(content=text or None, tool_calls=[
            ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls
        ]) if calls else AssistantMessage(content=text)
        return ChatCompletion(id=self.id, created=self.created, model=self.model_id,
                              choices=[ChatChoice(message=message, finish_reason=finish,
                                                  logprobs=chat_logprobs(logprobs))],
                              usage=usage_out(usage), system_fingerprint=FINGERPRINT)


class CompletionFormat(_Base):
    """``/v1/completions``. Legacy logprobs: ``text_offset`` counts characters from the start
    of the prompt (``prompt_chars``, as OpenAI and llama-cpp-python do), each token adding the
    length of its ``tokens`` entry; ``top_logprobs`` maps each alternative's text to its logprob."""

    prefix = "cmpl-"

    def __init__(self, model_id: str, prompt_chars: int = 0) -> None:
        super().__init__(model_id)
        self._offset = prompt_chars

    def _legacy(self, scores: Scores) -> CompletionLogprobs | None:
        if scores is None:
            return None
        offsets = []
        for s in scores:
            offsets.append(self._offset)
            self._offset += len(s.token)
        return CompletionLogprobs(tokens=[s.token for s in scores], token_logprobs=[s.logprob for s in scores],
                                  top_logprobs=[{t.token: t.logprob for t in s.top} for s in scores],
                                  text_offset=offsets)

    def _obj(self, text: str, finish: Finish | None = None, usage: Usage | None = None,
             choices: bool = True, logprobs: Scores = None) -> TextCompletion:
        choice = CompletionChoice(text=text, finish_reason=finish, logprobs=self._legacy(logprobs))
        return TextCompletion(id=self.id, created=self.created, model=self.model_id,
                              choices=[choice] if choices else [],
                              usage=usage_out(usage) if usage else None, system_fingerprint=FINGERPRINT)

    def opening(self) -> list[BaseModel]:
        return []

    def piece(self, text: str, logprobs: Scores = None) -> BaseModel:
        return self._obj(text, logprobs=logprobs)

    def closing(self, finish: Finish) -> BaseModel:
        return self._obj("", finish)

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._obj("", usage=usage, choices=False)

    def whole(self, text: str, finish: Finish, usage: Usage, logprobs: Scores = None) -> BaseModel:
        return self._obj(text, finish, usage, logprobs=logprobs)
