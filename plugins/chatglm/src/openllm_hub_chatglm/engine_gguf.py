"""ChatGLM2/3 on llama.cpp: GGUF files (llama.cpp's ``chatglm`` architecture) on the core's
shared engine (:mod:`openllm_hub.engines.llama_cpp`), and checkpoint folders loaded with a
llama.cpp quantization type (``quantize="q4_0"``, ...), converted once into the cache.

What is ChatGLM's own stays here: prompts start with ``[gMASK] sop`` (the GGUF sets no BOS),
ChatGLM3's role tokens are encoded as the official tokenizer does (the same
:func:`~openllm_hub_chatglm.tokenizer.encode_v2` as the torch engine, with llama.cpp's
vocabulary for the text in between), ``<|user|>`` and ``<|observation|>`` end a v3 answer,
and each version's chat template and sampling defaults apply. Chat message text is tokenized
by the shared engine's plain path (no role token parsed out of it). The variant is read from the
vocabulary: a v3 file has the role tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from openllm_hub.engines.llama_cpp import LlamaCppModel, load_gguf
from openllm_hub.plugin import CorruptFileError, Family, InvalidParameterError, LoadRequest
from openllm_hub_chatglm.options import ChatGLMOptions
from openllm_hub_chatglm.templates import CHAT_DEFAULTS
from openllm_hub_chatglm.tokenizer import V3_ROLES, encode_v2


class ChatGLMGGUFModel(LlamaCppModel):
    """A ChatGLM2/3 GGUF file on llama.cpp, tokenizing and chatting like the torch engine."""

    variant: str
    _prefix: list[int]
    _roles: dict[str, int]

    def _configure(self, metadata: dict[str, Any]) -> None:
        gmask, sop = self._special_token_id("[gMASK]"), self._special_token_id("sop")
        if gmask is None or sop is None:
            raise CorruptFileError("the GGUF vocabulary lacks ChatGLM's [gMASK]/sop control tokens",
                                   where=self.info.path, fix="convert the checkpoint again with openllm-hub convert")
        roles = {r: self._special_token_id(r) for r in V3_ROLES}
        self._roles = {r: i for r, i in roles.items() if i is not None}
        self.variant = "chatglm3" if len(self._roles) == len(V3_ROLES) else "chatglm2"
        if self.variant == "chatglm2":
            self._roles = {}
        self._prefix = [gmask, sop]
        if self._roles:  # the official v3 chat() stops at the next role
            self.eos_token_ids = self.eos_token_ids | {self._roles["<|user|>"], self._roles["<|observation|>"]}
        self.default_chat_template = self.variant
        self.generation_defaults = CHAT_DEFAULTS[self.variant]
        self.info = dataclasses.replace(self.info, extra={**self.info.extra, "variant": self.variant})

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return encode_v2(text, self._text_ids, prefix=self._prefix if add_special else (),
                         roles=self._roles or None)


def _gguf_options(opts: ChatGLMOptions) -> ChatGLMOptions:
    """The options llama.cpp sees: ``context_length`` is ``n_ctx`` there, ``quantize`` is done."""
    from openllm_hub_chatglm.engine_torch import context_cap

    return opts.model_copy(update={"n_ctx": context_cap(opts), "quantize": None})


def _check_variant(model: ChatGLMGGUFModel, asked: str) -> ChatGLMGGUFModel:
    if asked not in ("auto", model.variant):
        model.close()
        raise InvalidParameterError(f"this GGUF file holds {model.variant}, not {asked}", where=model.info.path,
                                    fix="omit variant (GGUF files say which they are)")
    return model


def load_chatglm_gguf(req: LoadRequest[ChatGLMOptions]) -> ChatGLMGGUFModel:
    """A ChatGLM2/3 GGUF file on llama.cpp with the request's placement and options."""
    opts = req.options
    if opts.quantize is not None:
        raise InvalidParameterError(f"quantize={opts.quantize!r} does not apply to a GGUF file", where=req.path,
                                    fix=f"quantize the file: openllm-hub quantize {req.path} OUT.gguf q4_0")
    if opts.variant == "chatglm":
        raise InvalidParameterError("llama.cpp has no ChatGLM-6B (v1) architecture", where=req.path,
                                    fix="omit variant (GGUF files say which they are)")
    model = load_gguf(req, family="chatglm", options=_gguf_options(opts), model_class=ChatGLMGGUFModel)
    assert isinstance(model, ChatGLMGGUFModel)
    return _check_variant(model, opts.variant)


def load_quantized_via_gguf(req: LoadRequest[ChatGLMOptions], family: Family) -> ChatGLMGGUFModel:
    """``quantize=<llama.cpp type>`` on a checkpoint folder: convert it once to an f16 GGUF in
    the cache with ``family``'s hf->gguf converter, quantize that with its GGUF quantizer
    (llama.cpp's; also cached, keyed by the folder's files), and run it on llama.cpp."""
    from openllm_hub.engines.llama_cpp_cache import cached_gguf
    from openllm_hub.plugin import read_json
    from openllm_hub_chatglm.spec import read_spec

    opts = req.options
    assert opts.quantize is not None, "the family's load sends only quantize=<llama.cpp type> here"
    folder = Path(req.path)
    spec = read_spec(folder, read_json(folder / "config.json"), opts.variant)
    if spec.version == 1:
        raise InvalidParameterError(f"quantize={opts.quantize!r} runs on llama.cpp, which has no ChatGLM-6B (v1)",
                                    where=folder, fix="use quantize='int8' or 'int4' (this plugin's torch engine)")
    if spec.quantization_bit:
        raise InvalidParameterError(f"this checkpoint is already INT{spec.quantization_bit}; llama.cpp types are "
                                    "made from the float checkpoint", where=folder,
                                    fix=f"omit quantize, or pass quantize='int{spec.quantization_bit}'")
    gguf = cached_gguf(folder, family, source_format="hf", scheme=opts.quantize,
                       convert_options={"variant": opts.variant} if opts.variant != "auto" else None)
    gguf_req = LoadRequest(path=gguf, format="gguf", detection=req.detection, placement=req.placement,
                           options=req.options)
    model = load_gguf(gguf_req, family="chatglm", options=_gguf_options(opts), model_class=ChatGLMGGUFModel,
                      info_extra={"source": str(folder)})
    assert isinstance(model, ChatGLMGGUFModel)
    return _check_variant(model, spec.variant if opts.variant == "auto" else opts.variant)


__all__ = ["ChatGLMGGUFModel", "load_chatglm_gguf", "load_quantized_via_gguf"]
