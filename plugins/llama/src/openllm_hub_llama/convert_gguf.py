"""HuggingFace (or Meta) LLaMA -> GGUF, streamed tensor by tensor.

The output is what llama.cpp's own ``convert_hf_to_gguf.py`` produces for a LLaMA (and for a
Mistral, which it converts as a LLaMA too): the same
tensor names (``token_embd``, ``blk.N.attn_q`` ... ``output_norm``, ``output``; no output
tensor when embeddings are tied), the q/k rows permuted back to Meta's interleaved rotary
layout (llama.cpp's ``LlamaModel.undo_permute``), 1-D tensors (norms) kept in F32, a q8_0
matrix whose row length is not a multiple of 32 stored as F16 (llama.cpp's fallback), and
q8_0 / bf16 quantized with gguf's numpy quantizers (bit-exact with ggml's reference code).
One addition: a Mistral-style sliding window smaller than the context is recorded as
``llama.attention.sliding_window``, which llama.cpp's converter drops and llama.cpp does not
apply to ``llama`` files; the loader reads it to keep the context honest
(:func:`~openllm_hub_llama.checkpoint.window_context`).

Memory: the GGUF header is written from the checkpoint's headers, then every tensor is read,
converted and written in row chunks of a few tens of MB (q/k projections whole, since their
rows are permuted); safetensors data is read with ``pread``, not memory-mapped. The types,
the encoding and the streaming writer are :mod:`openllm_hub.engines.gguf_write`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from openllm_hub.engines.gguf_write import (
    OUTTYPES,
    GGUFTensor,
    TransformerParams,
    check_outtype,
    file_type,
    tensor_qtype,
    write_gguf_file,
)
from openllm_hub.plugin import ConvertRequest, scratch_dir
from openllm_hub_llama.checkpoint import HFCheckpoint, TensorName, permute_hf_to_meta, row_chunks
from openllm_hub_llama.tokenizer import add_vocab_to_gguf, load_vocab

if TYPE_CHECKING:  # pragma: no cover
    import gguf
    import numpy as np

__all__ = ["OUTTYPES", "convert_hf_to_gguf", "convert_meta_to_gguf", "tensor_qtype", "write_gguf"]

#: float32 bytes converted per step: bounds the converter's working memory (a few such buffers)
CHUNK_BYTES = 16 << 20


def write_gguf(src: Path, dst: Path, outtype: str, *, progress: bool = False, name: str | None = None,
               permute_qk: bool = True) -> None:
    """Convert the HuggingFace LLaMA folder ``src`` into the GGUF file ``dst``.

    ``permute_qk=False`` skips the rotary q/k row permutation: it exists only for the negative
    control test that proves the logit comparison catches that classic bug.
    """
    import gguf

    check_outtype(outtype)
    ck = HFCheckpoint(src)
    hp = ck.hparams
    vocab = load_vocab(src, hp.vocab_size, bos_id=hp.bos_token_id, eos_id=hp.eos_token_id, pad_id=hp.pad_token_id)

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_type("model")
        writer.add_name(name or (ck.config.get("_name_or_path") or src.name).rstrip("/").split("/")[-1])
        writer.add_file_type(file_type(outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(hp.vocab_size)
        TransformerParams(
            context_length=hp.max_position_embeddings, embedding_length=hp.hidden_size, block_count=hp.num_layers,
            feed_forward_length=hp.intermediate_size, head_count=hp.num_heads, head_count_kv=hp.num_kv_heads,
            rms_norm_eps=hp.rms_norm_eps, rope_dimension_count=hp.head_dim, rope_freq_base=hp.rope_theta,
            rope_linear_factor=hp.rope_linear_factor).add_to(writer)
        if hp.sliding_window is not None:  # recorded for the loader (llama.cpp does not apply it to llama files)
            writer.add_sliding_window(hp.sliding_window)
        add_vocab_to_gguf(writer, vocab)

    tensors = [GGUFTensor(t.gguf, t.shape, tensor_qtype(outtype, t.shape), _rows(ck, t, permute_qk),
                          bf16_bits=ck.infos[t.hf].dtype == "BF16") for t in ck.tensors]
    try:
        write_gguf_file(dst, "llama", metadata, tensors, progress=progress, desc="hf -> gguf")
    finally:
        ck.release()


def _rows(ck: HFCheckpoint, t: TensorName, permute_qk: bool) -> Callable[[], Iterator[np.ndarray]]:
    """The tensor's rows in chunks (numpy; bf16 as raw bits): q/k projections whole, since
    their rows are permuted back to Meta's rotary layout, the rest in chunks of a few MB."""
    def rows() -> Iterator[np.ndarray]:
        if t.qk_heads is not None:
            w = ck.read_numpy(t.hf)
            yield permute_hf_to_meta(w, t.qk_heads) if permute_qk else w
        else:
            for start, stop in row_chunks(ck.infos[t.hf].shape, 4, CHUNK_BYTES):
                yield ck.read_numpy(t.hf, start, stop)

    return rows


def convert_hf_to_gguf(req: ConvertRequest, *, permute_qk: bool = True) -> None:
    """Converter entry point: HuggingFace folder ``req.src`` -> GGUF file ``req.dst``."""
    write_gguf(req.src, req.dst, req.outtype or "f16", progress=req.progress,
               name=req.options.get("name"), permute_qk=permute_qk)


def convert_meta_to_gguf(req: ConvertRequest) -> None:
    """Converter entry point: Meta shards -> HF folder (temporary, next to the output) -> GGUF."""
    from openllm_hub_llama.convert_meta import write_hf_from_meta

    with scratch_dir(req.dst) as hf:
        write_hf_from_meta(req.src, hf, "auto", progress=req.progress, options=req.options)
        write_gguf(hf, req.dst, req.outtype or "f16", progress=req.progress,
                   name=req.options.get("name") or req.src.name)
