"""A tiny random GGUF of an architecture no specialised family claims (``qwen2``), for
``openllm-hub tiny gguf OUT``: the generic GGUF family's checkpoint, written with the shared
GGUF writer from seeded numpy weights, and a small SentencePiece-style vocabulary
(:func:`add_tiny_vocab`: control tokens, the 256 byte tokens, letters) that llama.cpp's
``llama`` tokenizer reads, so any text tokenizes (byte fallback).

numpy and gguf are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import gguf

#: Letters and a few words, as pieces after the control and byte tokens.
_PIECES = [*"abcdefghijklmnopqrstuvwxyz", *(f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
           "\u2581", "\u2581the", "\u2581time", "\u2581upon", "\u2581Once"]


def tiny_vocab(n_vocab: int, controls: tuple[str, ...] = ()) -> list[str]:
    """``n_vocab`` (at least 259) token spellings: ``<unk>``, ``<s>``, ``</s>``, ``<0x00>`` ..
    ``<0xFF>``, then letters and words, the further control tokens ``controls`` (e.g. a chat
    format's ``<|user|>``), then ``<extra_N>`` fillers."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *_PIECES, *controls]
    if n_vocab < len(tokens):
        raise ValueError(f"this tiny vocabulary needs at least {len(tokens)} tokens")
    tokens += [f"<extra_{i}>" for i in range(n_vocab - len(tokens))]
    return tokens


def add_tiny_vocab(writer: gguf.GGUFWriter, n_vocab: int, *, chat_template: str | None = None,
                   controls: tuple[str, ...] = ()) -> None:
    """Add the :func:`tiny_vocab` vocabulary as llama.cpp's ``llama`` (SentencePiece) tokenizer:
    tokens, scores (longer pieces first), token types (unknown, control, byte, normal), BOS 1,
    EOS 2, and the chat template when given."""
    import gguf

    tokens = tiny_vocab(n_vocab, controls)
    T = gguf.TokenType
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, *([T.BYTE] * 256)]
    types += [T.CONTROL if t in controls else T.USER_DEFINED if t.startswith("<extra_") else T.NORMAL
              for t in tokens[len(types):]]
    scores = [0.0] * 259 + [-1000.0 + len(t) for t in tokens[259:]]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def write_tiny_gguf(dst: Path, options: Mapping[str, Any]) -> Path:
    """A tiny random ``qwen2`` GGUF (2 blocks, width 64, 4 heads, 2 KV heads, 320 tokens; f32)
    at ``dst``; ``options``: ``seed``."""
    import gguf
    import numpy as np

    from openllm_hub.core.tiny import int_option
    from openllm_hub.engines.gguf_write import GGUFTensor, TransformerParams, file_type, write_gguf_file

    seed = int_option(options, "seed", 0)
    rng = np.random.default_rng(seed)
    vocab, embd, layers, ffn, heads, kv_heads = 320, 64, 2, 128, 4, 2
    head = embd // heads
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, embd), "output_norm.weight": (embd,),
                                          "output.weight": (vocab, embd)}
    for i in range(layers):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (embd,), b + "attn_q.weight": (embd, embd),
                       b + "attn_q.bias": (embd,), b + "attn_k.weight": (kv_heads * head, embd),
                       b + "attn_k.bias": (kv_heads * head,), b + "attn_v.weight": (kv_heads * head, embd),
                       b + "attn_v.bias": (kv_heads * head,), b + "attn_output.weight": (embd, embd),
                       b + "ffn_norm.weight": (embd,), b + "ffn_gate.weight": (ffn, embd),
                       b + "ffn_up.weight": (ffn, embd), b + "ffn_down.weight": (embd, ffn)})
    data = {name: (np.ones(s, np.float32) if name.endswith("norm.weight")
                   else rng.normal(0.0, 0.08, s).astype(np.float32)) for name, s in shapes.items()}

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_type("model")
        writer.add_name("tiny-qwen2")
        writer.add_file_type(file_type("f32"))
        TransformerParams(context_length=512, embedding_length=embd, block_count=layers, feed_forward_length=ffn,
                          head_count=heads, head_count_kv=kv_heads, rms_norm_eps=1e-6, rope_dimension_count=head,
                          rope_freq_base=10000.0).add_to(writer)
        add_tiny_vocab(writer, vocab)

    def rows(arr: np.ndarray) -> Callable[[], list[np.ndarray]]:
        return lambda: [arr]

    tensors = [GGUFTensor(name, arr.shape, gguf.GGMLQuantizationType.F32, rows(arr)) for name, arr in data.items()]
    write_gguf_file(dst, "qwen2", metadata, tensors)
    return dst


__all__ = ["add_tiny_vocab", "tiny_vocab", "write_tiny_gguf"]
