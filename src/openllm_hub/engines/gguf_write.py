"""Writing GGUF files for llama.cpp, streamed tensor by tensor.

A family's converter decides what is its own: the architecture name, the metadata (its
hyper-parameters, given as :class:`TransformerParams`, and its vocabulary) and each tensor's
GGUF name and source. This module does the rest,
once for every family: the GGML type each tensor gets for an outtype (llama.cpp's choices:
1-D tensors in F32; q8_0 only for rows that are a multiple of 32 long, F16 otherwise),
converting row chunks to that type (through float32, rounded once; q8_0 and bf16 with gguf's
numpy quantizers, bit-exact with ggml's reference code), and writing the file: a
``gguf.GGUFWriter`` on the temporary path of :func:`openllm_hub.core.io.atomic_output`, the
header from the planned tensors, then each tensor's bytes as its chunks arrive, with a
progress bar. The writer is always closed, and a failure leaves no file behind. Before the
file is renamed into place it is read back (:func:`check_written`): its header and tensor
table must hold exactly the planned tensors, at offsets inside the file.

gguf and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from openllm_hub.core.io import atomic_output
from openllm_hub.core.progress import Progress
from openllm_hub.errors import ConversionError, InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import gguf
    import numpy as np

#: Every outtype this module writes; a family offers the subset its converter supports.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
Q8_0_BLOCK = 32


def check_outtype(outtype: str, allowed: Sequence[str] = OUTTYPES) -> None:
    """Refuse an outtype the converter does not offer."""
    if outtype not in allowed:
        raise InvalidParameterError(f"unknown GGUF outtype {outtype!r}", where="outtype",
                                    fix=f"use one of: {', '.join(allowed)}")


def file_type(outtype: str) -> int:
    """``general.file_type`` of an ``outtype`` file (gguf's ``LlamaFileType``)."""
    import gguf

    return int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])


def tensor_qtype(outtype: str, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
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


def encode(chunk: np.ndarray, qtype: gguf.GGMLQuantizationType, *, bf16_bits: bool = False) -> np.ndarray:
    """Rows of a tensor (float32 / float16 numpy, or raw bfloat16 bits with ``bf16_bits``) as
    the bytes of ``qtype``. Like llama.cpp's converter, values go through float32 (exact for
    every source dtype) and are rounded to the target type once; a source already in the
    target type passes through."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    if qtype == T.BF16 and bf16_bits:
        return chunk
    if qtype == T.F16 and chunk.dtype == np.float16:
        return chunk
    f32 = bf16_bits_to_f32(chunk) if bf16_bits else chunk.astype(np.float32, copy=False)
    if qtype == T.F32:
        return f32
    if qtype == T.F16:
        return f32.astype(np.float16)
    out: np.ndarray = gguf.quants.quantize(f32, qtype)
    return out


@dataclass(frozen=True)
class TransformerParams:
    """The hyper-parameters every llama.cpp decoder architecture reads, under its own
    ``{arch}.`` prefix. ``rope_linear_factor`` set: linear rope scaling by that factor."""

    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    rms_norm_eps: float
    rope_dimension_count: int
    rope_freq_base: float
    rope_linear_factor: float | None = None

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Add the key/values (in llama.cpp's converter order)."""
        import gguf

        writer.add_context_length(self.context_length)
        writer.add_embedding_length(self.embedding_length)
        writer.add_block_count(self.block_count)
        writer.add_feed_forward_length(self.feed_forward_length)
        writer.add_rope_dimension_count(self.rope_dimension_count)
        writer.add_rope_freq_base(self.rope_freq_base)
        if self.rope_linear_factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(self.rope_linear_factor)
        writer.add_head_count(self.head_count)
        writer.add_head_count_kv(self.head_count_kv)
        writer.add_layer_norm_rms_eps(self.rms_norm_eps)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor to write: its GGUF name, logical shape (rows first, as in the checkpoint),
    GGML type, and ``rows``, which yields its data as row chunks (float32 / float16 numpy, or
    raw bfloat16 bits with ``bf16_bits``) in order; it is called once, when the tensor's turn
    comes, so only one tensor's chunk is in memory at a time."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    rows: Callable[[], Iterable[np.ndarray]]
    bf16_bits: bool = False

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape ``GGUFWriter.add_tensor_info`` wants: the logical one for F32/F16 data,
        bytes (uint8) for quantized and bf16 data."""
        import gguf

        T = gguf.GGMLQuantizationType
        if self.qtype in (T.F32, T.F16):
            return self.shape
        return tuple(int(d) for d in gguf.quant_shape_to_byte_shape(self.shape, self.qtype))

    @property
    def nbytes(self) -> int:
        import gguf

        T = gguf.GGMLQuantizationType
        n = {T.F32: 4, T.F16: 2}.get(self.qtype, 1)
        for d in self.stored_shape:
            n *= d
        return n

    def np_dtype(self) -> Any:
        import gguf
        import numpy as np

        T = gguf.GGMLQuantizationType
        return {T.F32: np.float32, T.F16: np.float16}.get(self.qtype, np.uint8)


def write_gguf_file(dst: Path, arch: str, metadata: Callable[[gguf.GGUFWriter], None],
                    tensors: Sequence[GGUFTensor], *, progress: bool = False, desc: str = "gguf") -> None:
    """Write the GGUF file ``dst`` for llama.cpp architecture ``arch``.

    ``metadata`` adds the key/values to the writer (in the order the family wants them);
    then the tensor infos, the header, and each tensor's bytes in ``tensors`` order. The file
    appears at ``dst`` only when complete; on any failure the writer is closed and nothing is
    left behind."""
    import gguf

    with atomic_output(dst, force=True) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            metadata(writer)
            try:
                for t in tensors:
                    writer.add_tensor_info(t.name, t.stored_shape, t.np_dtype(), t.nbytes, raw_dtype=t.qtype)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
            except (ValueError, TypeError, OverflowError, struct.error) as exc:  # the gguf library's refusals
                raise ConversionError(f"the GGUF header cannot be written: {exc}", where=dst,
                                      fix="check the source checkpoint's tensor names, shapes and metadata") from exc
            assert writer.fout is not None
            fh: BinaryIO = writer.fout[0]
            with Progress(total=len(tensors), desc=desc, unit="tensor", enabled=progress) as bar:
                for t in tensors:
                    writer.write_padding(fh, fh.tell())
                    written = 0
                    for chunk in t.rows():
                        written += _write_chunk(fh, encode(chunk, t.qtype, bf16_bits=t.bf16_bits))
                    if written != t.nbytes:
                        raise ConversionError(f"internal: {t.name} wrote {written} bytes, planned {t.nbytes}",
                                              where=dst)
                    writer.write_padding(fh, t.nbytes)
                    bar.update()
        finally:
            writer.close()
        check_written(tmp, tensors, where=dst)


def check_written(path: Path, tensors: Sequence[GGUFTensor], *, where: Path) -> None:
    """Read back a written GGUF file's header and tensor table
    (:func:`~openllm_hub.core.gguf_check.check_gguf`, structure and hyper-parameters) and
    compare its tensors with the planned ones: names, order, GGML types and sizes."""
    from openllm_hub.core.gguf_check import check_gguf
    from openllm_hub.errors import OpenLLMHubError

    try:
        layout = check_gguf(path, model=False)
    except OpenLLMHubError as exc:
        raise ConversionError(f"the written GGUF file does not read back: {exc.what}", where=where,
                              fix="nothing was written; report this with the source checkpoint") from exc
    got = [(t.name, int(t.ggml_type), t.nbytes) for t in layout.tensors]
    planned = [(t.name, int(t.qtype), t.nbytes) for t in tensors]
    if got != planned:
        diff = next((f"{a} != {b}" for a, b in zip(got, planned) if a != b), f"{len(got)} vs {len(planned)} tensors")
        raise ConversionError(f"the written GGUF file's tensor table differs from the plan ({diff})", where=where,
                              fix="nothing was written; report this with the source checkpoint")


def _write_chunk(fh: BinaryIO, arr: np.ndarray) -> int:
    fh.write(arr.reshape(-1).view("uint8").data)
    return int(arr.nbytes)


__all__ = ["OUTTYPES", "Q8_0_BLOCK", "GGUFTensor", "TransformerParams", "bf16_bits_to_f32", "check_outtype", "encode",
           "file_type", "tensor_qtype", "write_gguf_file"]
