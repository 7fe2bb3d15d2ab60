"""HuggingFace (or Meta) LLaMA -> GGUF, streamed tensor by tensor.

The output is what llama.cpp's own ``convert_hf_to_gguf.py`` produces for a LLaMA: the same
tensor names (``token_embd``, ``blk.N.attn_q`` ... ``output_norm``, ``output``; no output
tensor when embeddings are tied), the q/k rows permuted back to Meta's interleaved rotary
layout (llama.cpp's ``LlamaModel.undo_permute``), 1-D tensors (norms) kept in F32, a q8_0
matrix whose row length is not a multiple of 32 stored as F16 (llama.cpp's fallback), and
q8_0 / bf16 quantized with gguf's numpy quantizers (bit-exact with ggml's reference code).

Memory: the GGUF header is written from the checkpoint's headers, then every tensor is read,
converted and written in row chunks of a few tens of MB (q/k projections whole, since their
rows are permuted); safetensors data is read with ``pread``, not memory-mapped.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from openllm_hub.core.convert import ConvertRequest
from openllm_hub.core.io import TMP_MARK
from openllm_hub.core.progress import Progress
from openllm_hub.errors import InvalidParameterError
from openllm_hub_llama.checkpoint import HFCheckpoint, TensorName, permute_hf_to_meta, row_chunks
from openllm_hub_llama.tokenizer import add_vocab_to_gguf, load_vocab

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
Q8_0_BLOCK = 32
#: float32 bytes converted per step: bounds the converter's working memory (a few such buffers)
CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class _Plan:
    tensor: TensorName
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # as GGUFWriter.add_tensor_info wants it: bytes for quantized (uint8) data
    nbytes: int


def _file_type(outtype: str) -> Any:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def tensor_qtype(outtype: str, shape: tuple[int, ...]) -> Any:
    """The GGML type a tensor of ``shape`` gets in an ``outtype`` file, as llama.cpp chooses it."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) <= 1 or outtype == "f32":
        return T.F32
    if outtype == "q8_0":
        return T.Q8_0 if shape[-1] % Q8_0_BLOCK == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[outtype]


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 (raw uint16 bits) to float32, exactly."""
    import numpy as np

    return (bits.astype(np.uint32) << 16).view(np.float32)


def _encode(chunk: np.ndarray, qtype: Any, src_dtype: str) -> np.ndarray:
    """Convert rows of a tensor (numpy; bf16 as raw bits) to the bytes of ``qtype``.

    Like llama.cpp's converter, values go through float32 (exact for every source dtype)
    and are rounded to the target type once."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    if qtype == T.BF16 and src_dtype == "BF16":
        return chunk
    if qtype == T.F16 and src_dtype == "F16":
        return chunk
    f32 = bf16_bits_to_f32(chunk) if src_dtype == "BF16" else chunk.astype(np.float32, copy=False)
    if qtype == T.F32:
        return f32
    if qtype == T.F16:
        return f32.astype(np.float16)
    return gguf.quants.quantize(f32, qtype)


def _write_chunk(fh: BinaryIO, arr: np.ndarray) -> int:
    fh.write(arr.reshape(-1).view("uint8").data)
    return int(arr.nbytes)


def write_gguf(src: Path, dst: Path, outtype: str, *, progress: bool = False, name: str | None = None,
               permute_qk: bool = True) -> None:
    """Convert the HuggingFace LLaMA folder ``src`` into the GGUF file ``dst``.

    ``permute_qk=False`` skips the rotary q/k row permutation: it exists only for the negative
    control test that proves the logit comparison catches that classic bug.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise InvalidParameterError(f"unknown GGUF outtype {outtype!r}", where="outtype",
                                    fix=f"use one of: {', '.join(OUTTYPES)}")
    ck = HFCheckpoint(src)
    hp = ck.hparams
    vocab = load_vocab(src, hp.vocab_size, bos_id=hp.bos_token_id, eos_id=hp.eos_token_id, pad_id=hp.pad_token_id)

    plans: list[_Plan] = []
    for t in ck.tensors:
        qtype = tensor_qtype(outtype, t.shape)
        byte_shape = gguf.quant_shape_to_byte_shape(t.shape, qtype) if qtype not in (
            gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else t.shape
        item = {gguf.GGMLQuantizationType.F32: 4, gguf.GGMLQuantizationType.F16: 2}.get(qtype, 1)
        nbytes = item
        for d in byte_shape:
            nbytes *= d
        plans.append(_Plan(t, qtype, tuple(byte_shape), nbytes))

    writer = gguf.GGUFWriter(dst, "llama")
    try:
        writer.add_type("model")
        writer.add_name(name or (ck.config.get("_name_or_path") or src.name).rstrip("/").split("/")[-1])
        writer.add_file_type(int(_file_type(outtype)))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(hp.vocab_size)
        writer.add_context_length(hp.max_position_embeddings)
        writer.add_embedding_length(hp.hidden_size)
        writer.add_block_count(hp.num_layers)
        writer.add_feed_forward_length(hp.intermediate_size)
        writer.add_rope_dimension_count(hp.head_dim)
        writer.add_rope_freq_base(hp.rope_theta)
        if hp.rope_linear_factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(hp.rope_linear_factor)
        writer.add_head_count(hp.num_heads)
        writer.add_head_count_kv(hp.num_kv_heads)
        writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
        add_vocab_to_gguf(writer, vocab)
        for p in plans:
            writer.add_tensor_info(p.tensor.gguf, p.shape, _np_dtype(p.qtype), p.nbytes, raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fh: BinaryIO = writer.fout[0]
        with Progress(total=len(plans), desc="hf -> gguf", unit="tensor", enabled=progress) as bar:
            for p in plans:
                writer.write_padding(fh, fh.tell())
                _write_tensor(ck, fh, p, permute_qk)
                writer.write_padding(fh, p.nbytes)
                bar.update()
        ck.release()
    finally:
        writer.close()


def _np_dtype(qtype: Any) -> Any:
    import gguf
    import numpy as np

    return {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(qtype, np.uint8)


def _write_tensor(ck: HFCheckpoint, fh: BinaryIO, p: _Plan, permute_qk: bool) -> None:
    from openllm_hub.errors import ConversionError

    t = p.tensor
    info = ck.infos[t.hf]
    written = 0
    if t.qk_heads is not None:
        w = ck.read_numpy(t.hf)
        if permute_qk:
            w = permute_hf_to_meta(w, t.qk_heads)
        written += _write_chunk(fh, _encode(w, p.qtype, info.dtype))
    else:
        for start, stop in row_chunks(info.shape, 4, CHUNK_BYTES):
            written += _write_chunk(fh, _encode(ck.read_numpy(t.hf, start, stop), p.qtype, info.dtype))
    if written != p.nbytes:
        raise ConversionError(f"internal: {t.gguf} wrote {written} bytes, planned {p.nbytes}")


def convert_hf_to_gguf(req: ConvertRequest, *, permute_qk: bool = True) -> None:
    """Converter entry point: HuggingFace folder ``req.src`` -> GGUF file ``req.dst``."""
    write_gguf(req.src, req.dst, req.outtype or "f16", progress=req.progress,
               name=req.options.get("name"), permute_qk=permute_qk)


def convert_meta_to_gguf(req: ConvertRequest) -> None:
    """Converter entry point: Meta shards -> HF folder (temporary, next to the output) -> GGUF."""
    from openllm_hub_llama.convert_meta import write_hf_from_meta

    with tempfile.TemporaryDirectory(prefix=TMP_MARK, dir=req.dst.parent) as tmp:
        hf = Path(tmp)
        write_hf_from_meta(req.src, hf, "auto", progress=req.progress, options=req.options)
        write_gguf(hf, req.dst, req.outtype or "f16", progress=req.progress,
                   name=req.options.get("name") or req.src.name)
