"""Blank filling as GLM-130B's ``generate.py`` does it, over any per-blank generator.

The blank kind is ``[MASK]`` if the text has one, else ``[sMASK]``, else ``[gMASK]`` (appended
when the text has no mask at all). Blanks of that kind are filled left to right: the sequence
with ``<sop>`` appended is generated from, the generated ids (without the end token) replace
the first remaining mask, and the next blank sees the text filled so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from openllm_hub_glm130b.tokenizer import MASK_PATTERN, GLMTokenizer, encode_with_masks


@dataclass(frozen=True)
class BlankFill:
    text: str
    blanks: tuple[str, ...]
    token_ids: tuple[int, ...]


def blank_kind(text: str) -> str:
    if "[MASK]" in text:
        return "[MASK]"
    if "[sMASK]" in text:
        return "[sMASK]"
    return "[gMASK]"


class BlankFiller:
    """One text's blanks, filled left to right: :meth:`prompt` gives the next blank's prompt ids
    (None once every blank is filled), :meth:`take` puts that blank's generated ids in. Several
    texts' fillers can be advanced together (one batch of sequences, one blank of each text at
    a time: ``GLM130BModel.fill_blanks_batch``)."""

    def __init__(self, tok: GLMTokenizer, text: str) -> None:
        cmd = tok.commands
        seq = encode_with_masks(tok, text)
        if not MASK_PATTERN.search(text):
            seq.append(cmd["[gMASK]"])
        elif not text.endswith("MASK]"):
            seq.append(cmd["<eos>"])
        self.tok, self.seq = tok, seq
        self.mask, self.sop, self.eos = cmd[blank_kind(text)], cmd["<sop>"], cmd["<eos>"]
        self.ends = {cmd["<eop>"], cmd["<eos>"]}
        self.blanks: list[str] = []

    def prompt(self) -> list[int] | None:
        """The ids to generate the first remaining blank from (the text so far, ``<sop>``)."""
        return [*self.seq, self.sop] if self.mask in self.seq else None

    def take(self, out: list[int]) -> str:
        """Fill the first remaining blank with ``out`` (its end token dropped); returns its text."""
        while out and out[-1] in self.ends:
            out = out[:-1]
        at = self.seq.index(self.mask)
        self.blanks.append(self.tok.decode(out))
        self.seq = self.seq[:at] + out + self.seq[at + 1 :]
        return self.blanks[-1]

    def result(self) -> BlankFill:
        seq = self.seq[:-1] if self.seq and self.seq[-1] == self.eos else self.seq
        return BlankFill(self.tok.decode(seq), tuple(self.blanks), tuple(seq))


def fill_blanks(tok: GLMTokenizer, text: str, complete: Callable[[list[int]], list[int]]) -> BlankFill:
    """Fill every blank of ``text``; ``complete(prompt_ids)`` returns one blank's ids."""
    filler = BlankFiller(tok, text)
    while (ids := filler.prompt()) is not None:
        filler.take(complete(ids))
    return filler.result()
