"""Text from token pieces, the way sentencepiece decodes its vocabularies.

Engines whose vocabulary is a sentencepiece one (LLaMA, ChatGLM2/3, ... in a GGUF file on
llama.cpp, or a ``tokenizer.model`` read by sentencepiece) decode through :func:`join_pieces`
with the pieces of their own vocabulary, so the same ids give the same text in every engine:

* special tokens (control, unknown) are skipped by the caller;
* pieces join as bytes and decode as UTF-8 with ``errors="replace"`` (a broken sequence
  becomes U+FFFD);
* the space the tokenizer put before the first word (a text piece starting with "▁") is
  dropped, as sentencepiece does; a literal space byte (``<0x20>``) is kept.

The result is a pure function of the ids, as the core's windowed incremental decoding needs.
"""

from __future__ import annotations

from collections.abc import Iterable


def join_pieces(pieces: Iterable[tuple[bytes, bool]], *, strip_first_space: bool = True) -> str:
    """``pieces``: (bytes, is_text_piece) per token; text pieces have "▁" already as a space."""
    out = bytearray()
    first = True
    for data, is_text in pieces:
        if not data:
            continue
        if first and strip_first_space and is_text and data.startswith(b" "):
            data = data[1:]
        first = False
        out += data
    return out.decode("utf-8", errors="replace")


__all__ = ["join_pieces"]
