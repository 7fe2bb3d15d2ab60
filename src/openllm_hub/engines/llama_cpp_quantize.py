"""Quantizing GGUF files with llama.cpp's own quantizer (``llama_model_quantize``), for any
architecture llama.cpp knows.

A family registers it for its GGUF files with :func:`gguf_quantizer`. The core has already
checked the scheme name against :data:`QUANT_TYPES`, the source's format and the
destination; :func:`quantize_gguf` maps the name onto llama.cpp's file type and runs the
quantizer into the core's temporary path. The source is validated first
(:func:`~openllm_hub.core.gguf_check.check_gguf`: a file llama.cpp could not load is refused
rather than quantized into another unloadable one) and the result is read back (header,
tensor table, hyper-parameters, tensors) before the core renames it into place.
``llama_cpp`` is imported only when it runs.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from openllm_hub.core.gguf_check import check_gguf, find_nonfinite
from openllm_hub.core.quantize import Quantizer, QuantizeRequest
from openllm_hub.errors import ConversionError, CorruptFileError, InvalidParameterError, OpenLLMHubError

#: Scheme name -> llama.cpp ``LLAMA_FTYPE_*`` constant name.
QUANT_FTYPES: dict[str, str] = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
}

#: The scheme names, in the order ``openllm-hub quantize`` lists them.
QUANT_TYPES: tuple[str, ...] = tuple(QUANT_FTYPES)

#: GGUF ``general.file_type`` values of unquantized files (F32, F16, BF16): the only sources
#: llama.cpp quantizes without re-quantizing already rounded weights.
UNQUANTIZED_FILE_TYPES = {0: "f32", 1: "f16", 32: "bf16"}


def quantize_gguf(req: QuantizeRequest) -> None:
    """Write ``req.src`` quantized with ``req.scheme`` to ``req.dst`` (a temporary path)."""
    import llama_cpp

    from openllm_hub.core.device import check_threads
    from openllm_hub.engines.llama_cpp import capture_log, ftype_names, log_error

    if req.scheme not in QUANT_FTYPES:  # the core checks too; this guards direct callers
        raise InvalidParameterError(f"unknown quantization type {req.scheme!r}", where="quantize",
                                    fix=f"valid types: {', '.join(QUANT_FTYPES)}")
    check_threads(req.threads)
    source = check_gguf(req.src)  # a source llama.cpp cannot load is refused, not quantized
    if source.is_adapter:
        raise InvalidParameterError("the source is a LoRA adapter, not a model", where=req.src,
                                    fix="quantize the base model; adapters are applied at load (lora=...)")
    meta = source.metadata
    file_type = meta.get("general.file_type")
    if isinstance(file_type, int) and file_type not in UNQUANTIZED_FILE_TYPES:
        name = ftype_names().get(file_type, str(file_type))
        raise InvalidParameterError(
            f"the source is already quantized ({name}); quantizing it again would compound the rounding",
            where=req.src, fix="quantize from the f32, f16 or bf16 GGUF file")
    params: Any = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(req.threads or 0)  # 0: llama.cpp uses every hardware thread
    params.ftype = int(getattr(llama_cpp, QUANT_FTYPES[req.scheme]))
    with capture_log() as log:
        rc = llama_cpp.llama_model_quantize(str(req.src).encode("utf-8"), str(req.dst).encode("utf-8"),
                                            ctypes.byref(params))
    if rc != 0:
        reason = log_error(log)
        if "invalid data" in reason or "nan" in "".join(log).lower():
            bad = find_nonfinite(source)
            if bad is not None:
                raise CorruptFileError(f"the source's weights hold NaN or Inf values (tensor {bad!r})", where=req.src,
                                       fix="the file is damaged: download or convert the model again")
        if not req.dst.parent.is_dir() or not os.access(req.dst.parent, os.W_OK):
            raise ConversionError(f"cannot write the quantized file: {reason}", where=req.dst.parent,
                                  fix="choose an output folder you can write to")
        raise ConversionError(f"llama.cpp could not quantize to {req.scheme}: {reason}", where=req.src,
                              fix="check that the source is a complete f32/f16/bf16 GGUF file")
    try:
        check_gguf(req.dst)  # read back what was written before the core renames it into place
    except OpenLLMHubError as exc:
        raise ConversionError(f"llama.cpp wrote an invalid {req.scheme} file: {exc.what}", where=req.src,
                              fix="nothing was written; report this with the source file") from exc


def gguf_quantizer() -> Quantizer:
    """The :class:`Quantizer` a family registers for its ``gguf`` files."""
    return Quantizer("gguf", QUANT_TYPES, quantize_gguf, description="llama.cpp's quantizer (llama_model_quantize)")


__all__ = ["QUANT_FTYPES", "QUANT_TYPES", "UNQUANTIZED_FILE_TYPES", "gguf_quantizer", "quantize_gguf"]
