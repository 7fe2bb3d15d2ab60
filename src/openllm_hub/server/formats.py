"""Building OpenAI's response objects from the SDK's chunks, for chat and for completions."""

from __future__ import annotations

import time
import uuid
from typing import Literal, Protocol

from pydantic import BaseModel

from openllm_hub import __version__
from openllm_hub.core.model import Usage
from openllm_hub.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    CompletionChoice,
    Delta,
    TextCompletion,
    UsageOut,
)

Finish = Literal["stop", "length"]
FINGERPRINT = f"openllm-hub-{__version__}"


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens)


class ResponseFormat(Protocol):
    """How one endpoint shapes its answer, whole or streamed."""

    def opening(self) -> list[BaseModel]: ...

    def piece(self, text: str) -> BaseModel: ...

    def closing(self, finish: Finish) -> BaseModel: ...

    def usage_chunk(self, usage: Usage) -> BaseModel: ...

    def whole(self, text: str, finish: Finish, usage: Usage) -> BaseModel: ...


class _Base:
    prefix = ""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.id = f"{self.prefix}{uuid.uuid4().hex}"
        self.created = int(time.time())


class ChatFormat(_Base):
    prefix = "chatcmpl-"

    def _chunk(self, delta: Delta, finish: Finish | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model_id,
                                   choices=[ChatChunkChoice(delta=delta, finish_reason=finish)],
                                   system_fingerprint=FINGERPRINT)

    def opening(self) -> list[BaseModel]:
        return [self._chunk(Delta(role="assistant", content=""))]

    def piece(self, text: str) -> BaseModel:
        return self._chunk(Delta(content=text))

    def closing(self, finish: Finish) -> BaseModel:
        return self._chunk(Delta(), finish)

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model_id, choices=[],
                                   usage=usage_out(usage), system_fingerprint=FINGERPRINT)

    def whole(self, text: str, finish: Finish, usage: Usage) -> BaseModel:
        return ChatCompletion(id=self.id, created=self.created, model=self.model_id,
                              choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)],
                              usage=usage_out(usage), system_fingerprint=FINGERPRINT)


class CompletionFormat(_Base):
    prefix = "cmpl-"

    def _obj(self, text: str, finish: Finish | None = None, usage: Usage | None = None,
             choices: bool = True) -> TextCompletion:
        return TextCompletion(id=self.id, created=self.created, model=self.model_id,
                              choices=[CompletionChoice(text=text, finish_reason=finish)] if choices else [],
                              usage=usage_out(usage) if usage else None, system_fingerprint=FINGERPRINT)

    def opening(self) -> list[BaseModel]:
        return []

    def piece(self, text: str) -> BaseModel:
        return self._obj(text)

    def closing(self, finish: Finish) -> BaseModel:
        return self._obj("", finish)

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._obj("", usage=usage, choices=False)

    def whole(self, text: str, finish: Finish, usage: Usage) -> BaseModel:
        return self._obj(text, finish, usage)
