"""Turning a stream of token ids into text: UTF-8-safe detokenization and stop strings.

Both work for any tokenizer that can decode a list of ids to text, so every engine shares
them (llama.cpp, transformers, the ChatGLM and RWKV engines, third-party plugins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
#: A UTF-8 character is at most 4 bytes, so at most 4 byte-fallback tokens can be pending.
MAX_HELD_TOKENS = 4
#: How many earlier ids to decode together with new ones, so that a tokenizer's handling of
#: leading spaces (sentencepiece's "▁") sees real context.
CONTEXT_IDS = 6


class IncrementalDetokenizer:
    """Emit text for each new id, never a broken UTF-8 sequence.

    Decodes a short window ``ids[prefix:]`` and emits only what it adds to the text of
    ``ids[prefix:read]``, the same windowed diff that text-generation-inference uses. While
    the window's text ends in U+FFFD (a character split across byte-fallback tokens, such as
    Chinese or emoji) nothing is emitted; the next token completes it.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(context[-CONTEXT_IDS:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one id; return the new text it completes (maybe empty)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (with U+FFFD for an incomplete sequence)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        held = len(self._ids) - self._read
        if not final and after.endswith(REPLACEMENT) and held < MAX_HELD_TOKENS:
            return ""
        # tokenizers decode a window's prefix identically with or without what follows it, so
        # the new text is what the longer window adds
        text = after[len(before) :]
        self._prefix = self._read
        self._read = len(self._ids)
        # keep the window short: only the last few ids are needed as context
        if self._prefix > CONTEXT_IDS:
            drop = self._prefix - CONTEXT_IDS
            del self._ids[:drop]
            self._prefix -= drop
            self._read -= drop
        return text


class StopMatcher:
    """Cut generated text at the first stop string, holding back possible beginnings of one.

    ``push`` returns the text that is safe to emit now and whether a stop string was found;
    text after a stop string is dropped, and the stop string itself is not emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buf[:cut]
        keep = self._held_suffix(buf)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
