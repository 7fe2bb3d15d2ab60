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


def fill_blanks(tok: GLMTokenizer, text: str, complete: Callable[[list[int]], list[int]]) -> BlankFill:
    """Fill every blank of ``text``; ``complete(prompt_ids)`` returns one blank's ids."""
    cmd = tok.commands
    seq = encode_with_masks(tok, text)
    if not MASK_PATTERN.search(text):
        seq.append(cmd["[gMASK]"])
    elif not text.endswith("MASK]"):
        seq.append(cmd["<eos>"])
    mask = cmd[blank_kind(text)]
    ends = {cmd["<eop>"], cmd["<eos>"]}
    blanks: list[str] = []
    while mask in seq:
        at = seq.index(mask)
        out = complete([*seq, cmd["<sop>"]])
        while out and out[-1] in ends:
            out = out[:-1]
        blanks.append(tok.decode(out))
        seq = seq[:at] + out + seq[at + 1 :]
    if seq and seq[-1] == cmd["<eos>"]:
        seq = seq[:-1]
    return BlankFill(tok.decode(seq), tuple(blanks), tuple(seq))
