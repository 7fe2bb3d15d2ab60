"""The generic ``gguf`` family: any GGUF model file whose architecture llama.cpp runs.

Families with special handling (``llama``, ``chatglm``, ...) claim their architectures with
high confidence; this family claims every other GGUF model file (``general.type`` = model,
adapters excluded) at :data:`CONFIDENCE`, low enough that a specialised family always wins
(the detection margin is 0.05). It loads the file on the shared llama.cpp engine
(:func:`openllm_hub.engines.llama_cpp.load_gguf`) with llama.cpp's load options; chat uses the
model's own template (GGUF ``tokenizer.chat_template``) when the file ships one, else
``plain``. Whether llama.cpp knows the architecture is llama.cpp's to say (its C API lists no
architectures): a refusal becomes an :class:`~openllm_hub.errors.UnknownFormatError` naming
the architecture and the llama.cpp version.

The family is registered by the core's built-in plugin; nothing here imports an engine at
module level.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.core.detect import Probe
from openllm_hub.core.family import Detection, Family, LoadRequest, TinyBuilder
from openllm_hub.engines.llama_cpp import LlamaCppOptions, device_rows
from openllm_hub.engines.llama_cpp_quantize import gguf_quantizer
from openllm_hub.errors import CorruptFileError, InvalidParameterError, UnknownFormatError

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.model import Model
    from openllm_hub.core.plan import ModelSpec

NAME = "gguf"
#: Below every specialised family's GGUF detection (llama 0.95, chatglm 0.9) by more than the
#: ambiguity margin, so this family is chosen only when no other claims the file.
CONFIDENCE = 0.5
_UNKNOWN_ARCH = re.compile(r"unknown model architecture: '([^']*)'")


class GGUFOptions(LlamaCppOptions):
    """Load options of the generic GGUF family: llama.cpp's (n_ctx, n_batch, use_mmap,
    kv_cache_type, lora, chat_template, repack, seed; see :class:`LlamaCppOptions`)."""


def _detect(probe: Probe) -> Detection | None:
    meta = probe.gguf
    if meta is None or meta.get("general.type", "model") != "model":
        return None
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        return None
    return Detection("gguf", CONFIDENCE, f"GGUF model file with general.architecture={arch} (llama.cpp)",
                     {"architecture": arch})


def _load(req: LoadRequest[GGUFOptions]) -> Model:
    from openllm_hub.engines.llama_cpp import capabilities, load_gguf

    try:
        return load_gguf(req, family=NAME)
    except CorruptFileError as exc:
        m = _UNKNOWN_ARCH.search(exc.what + " " + (exc.fix or ""))
        if m is None:
            raise
        raise UnknownFormatError(
            f"llama.cpp (llama-cpp-python {capabilities()['version']}) does not run the architecture {m.group(1)!r}",
            where=req.path, fix="upgrade llama-cpp-python to a llama.cpp that supports it, or install a plugin "
                                "for this model family") from exc


def memory(path: Path, fmt: str) -> ModelSpec:
    """The model's shapes from the GGUF header alone: sizes under llama.cpp's standard keys,
    one block's matrices and vectors from the tensor table (``blk.0.*``), the embedding and
    output rows; bits per weight from the file size."""
    from openllm_hub.core.gguf_check import check_gguf
    from openllm_hub.core.plan import ModelSpec, gguf_dims, stored_as

    layout = check_gguf(path, model=False)
    meta = layout.metadata
    d = gguf_dims(meta, path)
    arch = layout.architecture
    head_k = int(meta.get(f"{arch}.attention.key_length") or d["hidden"] // max(d["heads"], 1))
    head_v = int(meta.get(f"{arch}.attention.value_length") or head_k)
    block = [t for t in layout.tensors if t.name.startswith("blk.0.")]
    matrices = tuple((t.ne[1], t.ne[0]) for t in block if len(t.ne) == 2)
    small = sum(t.n_elements for t in block if len(t.ne) == 1)
    embedding = sum(t.n_elements for t in layout.tensors if t.name in ("token_embd.weight", "output.weight"))
    if not matrices:
        raise InvalidParameterError("the GGUF file has no blk.0 matrices to plan from", where=path)
    spec = ModelSpec(name=str(path), family=NAME, num_layers=d["layers"], hidden_size=d["hidden"],
                     num_heads=d["heads"], vocab_size=d["vocab"], max_seq=d["context"], layer_matrices=matrices,
                     layer_small=small, embedding_params=embedding or d["vocab"] * d["hidden"],
                     mlp_width=max(o for o, _ in matrices), kv_per_token_layer=d["kv_heads"] * (head_k + head_v))
    return stored_as(spec, path)


def _write_tiny(dst: Path, fmt: str, options: Mapping[str, Any]) -> Path:
    from openllm_hub.core.gguf_tiny import write_tiny_gguf

    return write_tiny_gguf(dst, options)


FAMILY = Family(
    name=NAME,
    aliases=("any-gguf",),
    description="Any GGUF model llama.cpp runs (Qwen, Mistral, Gemma, Phi, ...) on the shared llama.cpp engine, "
                "chat in the model's own template; chosen when no family with special handling claims the file",
    formats=("gguf",),
    detect=_detect,
    load=_load,
    options=GGUFOptions,
    devices=device_rows(("gguf",)),
    memory=memory,
    quantizers=(gguf_quantizer(),),
    tiny=TinyBuilder(("gguf",), _write_tiny, {"seed": "random seed of the weights (default 0)"}),
)


__all__ = ["CONFIDENCE", "FAMILY", "NAME", "GGUFOptions", "memory"]
