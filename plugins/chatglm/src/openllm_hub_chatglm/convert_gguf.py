"""ChatGLM2/3 checkpoint -> GGUF for llama.cpp's ``chatglm`` architecture.

Names and metadata follow llama.cpp (``conversion/chatglm.py``, ``src/models/chatglm.cpp``):
``token_embd``, ``blk.N.attn_norm``, ``blk.N.attn_qkv`` (fused, with bias),
``blk.N.attn_output``, ``blk.N.ffn_norm``, ``blk.N.ffn_up`` (the fused gate+up of
``dense_h_to_4h``, gate first, SwiGLU), ``blk.N.ffn_down``, ``output_norm``, ``output``;
``chatglm.rope.dimension_count`` is half the head size (rotary on half of each head, adjacent
pairs: llama.cpp's NORM rope), ``rope.freq_base`` 10000 x ``rope_ratio``. The vocabulary is
the sentencepiece model's pieces with scores and types (``tokenizer.ggml.model = llama``,
pre-tokenizer ``chatglm-spm``), then the specials ``[MASK] [gMASK] [sMASK] sop eop`` (and v3's
role tokens) as control tokens and ``[PADn]`` for the padding rows. ChatGLM-6B (v1) has no
llama.cpp architecture and is refused.

Tensor data is streamed: the header is written from the shards' shapes, then each tensor is
converted and appended, so memory stays at about one tensor. The types, the encoding and the
streaming writer (closed on failure, no partial file) are :mod:`openllm_hub.engines.gguf_write`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from openllm_hub.engines import gguf_write
from openllm_hub.engines.hf_folder import HFFolder
from openllm_hub.plugin import ConversionError, read_json
from openllm_hub_chatglm.spec import GLMSpec, read_spec
from openllm_hub_chatglm.tokenizer import V2_FILE, V2_SPECIALS, V3_ROLES

if TYPE_CHECKING:  # pragma: no cover
    import gguf
    import numpy as np

    from openllm_hub.plugin import ConvertRequest

OUTTYPES = ("f32", "f16", "q8_0")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attention.query_key_value.weight": "attn_qkv.weight",
    "self_attention.query_key_value.bias": "attn_qkv.bias",
    "self_attention.dense.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.dense_h_to_4h.weight": "ffn_up.weight",
    "mlp.dense_4h_to_h.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "transformer.embedding.word_embeddings.weight": "token_embd.weight",
    "transformer.encoder.final_layernorm.weight": "output_norm.weight",
    "transformer.output_layer.weight": "output.weight",
}


def gguf_name(name: str) -> str | None:
    """The GGUF tensor name of a ChatGLM2/3 checkpoint key (None: not written)."""
    if name.endswith("inv_freq"):
        return None
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    prefix = "transformer.encoder.layers."
    if name.startswith(prefix):
        layer, _, rest = name[len(prefix):].partition(".")
        if rest in _LAYER_NAMES and layer.isdigit():
            return f"blk.{layer}.{_LAYER_NAMES[rest]}"
    raise ConversionError(f"no GGUF name for tensor {name!r}", where="convert to gguf",
                          fix="only unquantized ChatGLM2/3 checkpoints convert")


def _vocab(folder: Path, spec: GLMSpec) -> tuple[list[bytes], list[float], list[int]]:
    import sentencepiece as spm
    from gguf import TokenType

    sp = spm.SentencePieceProcessor(model_file=str(folder / V2_FILE))
    n = sp.get_piece_size()
    specials = list(V2_SPECIALS) + (list(V3_ROLES) if spec.variant == "chatglm3" else [])
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    renamed = {0: "<unk>", 1: "<bos>", 2: "<eos>"}
    for i in range(spec.vocab_size):
        if i < n:
            piece = renamed.get(i, sp.id_to_piece(i))
            score = float(sp.get_score(i))
            if sp.is_unknown(i):
                kind = TokenType.UNKNOWN
            elif sp.is_control(i):
                kind = TokenType.CONTROL
            elif sp.is_unused(i):
                kind = TokenType.UNUSED
            elif sp.is_byte(i):
                kind = TokenType.BYTE
            else:
                kind = TokenType.NORMAL
        elif i - n < len(specials):
            piece, score, kind = specials[i - n], 0.0, TokenType.CONTROL
        else:
            piece, score, kind = f"[PAD{i}]", 0.0, TokenType.UNUSED
        tokens.append(piece.encode("utf-8"))
        scores.append(score)
        types.append(int(kind))
    return tokens, scores, types


def convert_hf_to_gguf(req: ConvertRequest) -> None:
    """Write ``req.src`` (ChatGLM2/3 folder) as a GGUF file at ``req.dst``."""
    src = Path(req.src)
    cfg = read_json(src / "config.json")
    spec = read_spec(src, cfg, str(req.options.get("variant", "auto")))
    if spec.version == 1:
        raise ConversionError("llama.cpp has no ChatGLM-6B (v1) architecture", where=src,
                              fix="run ChatGLM-6B with load() on the torch engine")
    if spec.quantization_bit:
        raise ConversionError("cannot convert an INT4/INT8 ChatGLM checkpoint to GGUF", where=src,
                              fix="convert the float16 checkpoint")
    outtype = req.outtype or "f16"
    gguf_write.check_outtype(outtype, OUTTYPES)
    folder = HFFolder(src)
    tokens, scores, types = _vocab(src, spec)

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_name(str(cfg.get("_name_or_path") or src.name))
        # ChatGLM3 folds rope_ratio into the base; ChatGLM2's divides positions: linear scaling
        linear = not (spec.version == 3 or spec.rope_ratio == 1.0)
        gguf_write.TransformerParams(
            context_length=spec.max_length, embedding_length=spec.hidden_size, block_count=spec.num_layers,
            feed_forward_length=spec.ffn_size, head_count=spec.num_heads, head_count_kv=spec.num_kv_heads,
            rms_norm_eps=spec.eps, rope_dimension_count=spec.head_dim // 2,
            rope_freq_base=10000.0 if linear else 10000.0 * spec.rope_ratio,
            rope_linear_factor=spec.rope_ratio if linear else None).add_to(writer)
        writer.add_file_type(gguf_write.file_type(outtype))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("chatglm-spm")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_eos_token_id(spec.eos_token_id if spec.eos_token_id is not None else 2)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(False)

    def rows(name: str) -> Callable[[], Iterator[np.ndarray]]:
        def read() -> Iterator[np.ndarray]:
            yield folder.tensor(name).float().numpy()

        return read

    tensors = [gguf_write.GGUFTensor(str(gguf_name(name)), shape, gguf_write.tensor_qtype(outtype, shape), rows(name))
               for name, shape in folder.tensor_shapes() if gguf_name(name) is not None]
    try:
        gguf_write.write_gguf_file(Path(req.dst), "chatglm", metadata, tensors, progress=req.progress,
                                   desc="hf -> gguf")
    finally:
        folder.release()
