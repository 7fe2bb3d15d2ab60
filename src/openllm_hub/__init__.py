"""openllm_hub: open large language models of several families behind one API.

    from openllm_hub import load
    with load("model.gguf") as model:
        print(model.generate("Once upon a time", max_new_tokens=32).text)

Importing this package is light: no engine (torch, transformers, llama_cpp) is imported
until a model needs it.
"""

from __future__ import annotations

from openllm_hub.api import add_model_name, convert, detect, load, merge_lora, quantize, resolve_source
from openllm_hub.core.chat import ChatTemplate, Message
from openllm_hub.core.config import GenerationConfig
from openllm_hub.core.hookspecs import hookimpl
from openllm_hub.core.logprobs import TokenLogprob, TopLogprob
from openllm_hub.core.model import Chunk, Completion, Model, ModelInfo, Timings, Usage
from openllm_hub.core.tool_calls import ToolCall
from openllm_hub.errors import OpenLLMHubError

__version__ = "0.1.0"

__all__ = [
    "ChatTemplate",
    "Chunk",
    "Completion",
    "GenerationConfig",
    "Message",
    "Model",
    "ModelInfo",
    "OpenLLMHubError",
    "Timings",
    "TokenLogprob",
    "ToolCall",
    "TopLogprob",
    "Usage",
    "__version__",
    "add_model_name",
    "convert",
    "detect",
    "hookimpl",
    "load",
    "merge_lora",
    "quantize",
    "resolve_source",
]
