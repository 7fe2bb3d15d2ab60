"""Tokenizers for GLM-130B-shaped models, pluggable by name.

GLM-130B uses icetk (a sentencepiece model with 20000 image ids in front and the commands
``[MASK] [gMASK] [sMASK] <eod> <sop> <eop>`` at 150000+). icetk fetches its model file from
the network on first use, so this plugin also runs any sentencepiece ``.model`` with an id
offset and command ids from the config (the tests train one). Other tokenizers plug in with
:func:`register_tokenizer` (a factory ``(spec, checkpoint_folder) -> GLMTokenizer``), named by
``tokenizer.type`` in ``glm130b_config.json``; or pass a tokenizer object to the model.

Mask handling is shared: :func:`encode_with_masks` turns ``[MASK]``-style markers in text into
command ids, and :func:`generation_prompt` builds the prompt GLM-130B's ``generate.py`` builds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from openllm_hub.plugin import InvalidParameterError, NotFoundError
from openllm_hub_glm130b.spec import TokenizerSpec

MASK_PATTERN = re.compile(r"\[[sg]?MASK\]")
MASKS = ("[MASK]", "[sMASK]", "[gMASK]")


class GLMTokenizer(Protocol):
    """What the model needs of a tokenizer."""

    @property
    def commands(self) -> Mapping[str, int]:
        """Ids of [MASK], [gMASK], [sMASK], <sop>, <eop>, <eos> (and any other specials)."""

    def encode(self, text: str) -> list[int]:
        """Ids of plain text (no special tokens)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, skipping command ids; invalid UTF-8 becomes U+FFFD."""


class SentencePieceGLMTokenizer:
    """A sentencepiece model whose ids are shifted by ``id_offset``; commands come from the config."""

    def __init__(self, model_file: str | Path, commands: Mapping[str, int], id_offset: int = 0) -> None:
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise NotFoundError("sentencepiece tokenizer model not found", where=path,
                                fix="set tokenizer.path in glm130b_config.json, or pass tokenizer=... to load()")
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.commands = dict(commands)
        self.id_offset = id_offset
        self._size = int(self._sp.get_piece_size())
        self._special = set(self.commands.values())

    def encode(self, text: str) -> list[int]:
        return [i + self.id_offset for i in self._sp.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        keep = [i - self.id_offset for i in ids
                if i not in self._special and self.id_offset <= i < self.id_offset + self._size]
        return str(self._sp.decode(keep))


class IceTokenizer:
    """GLM-130B's own tokenizer through the ``icetk`` package (optional extra ``[icetk]``).

    icetk downloads ``ice_text.model`` on first use; without network access, copy the file into
    icetk's cache folder beforehand.
    """

    def __init__(self, commands: Mapping[str, int]) -> None:
        try:
            from icetk import icetk  # type: ignore[import-not-found]
        except ImportError as exc:
            raise NotFoundError("the icetk package is not installed", where="tokenizer.type=icetk",
                                fix="pip install 'openllm-hub-glm130b[icetk]', or point tokenizer.type="
                                    "sentencepiece at ice_text.model with id_offset 20000") from exc
        self._ice = icetk
        self.commands = dict(commands)
        self._special = set(self.commands.values())

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._ice.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._ice.decode([i for i in ids if i not in self._special and 20000 <= i < 150000]))


TokenizerFactory = Callable[[TokenizerSpec, Path], GLMTokenizer]


def _sentencepiece(spec: TokenizerSpec, folder: Path) -> GLMTokenizer:
    if not spec.path:
        raise InvalidParameterError("tokenizer.type=sentencepiece needs tokenizer.path", where=folder)
    path = Path(spec.path)
    return SentencePieceGLMTokenizer(path if path.is_absolute() else folder / path, spec.commands, spec.id_offset)


def _icetk(spec: TokenizerSpec, folder: Path) -> GLMTokenizer:
    return IceTokenizer(spec.commands)


_FACTORIES: dict[str, TokenizerFactory] = {"sentencepiece": _sentencepiece, "icetk": _icetk}


def register_tokenizer(name: str, factory: TokenizerFactory) -> None:
    """Make ``tokenizer.type = name`` in a config build a tokenizer with ``factory``."""
    _FACTORIES[name] = factory


def build_tokenizer(spec: TokenizerSpec, folder: str | Path) -> GLMTokenizer:
    factory = _FACTORIES.get(spec.type)
    if factory is None:
        raise InvalidParameterError(f"unknown tokenizer type {spec.type!r}", where="glm130b_config.json",
                                    fix=f"use one of {', '.join(sorted(_FACTORIES))}, or register_tokenizer()")
    return factory(spec, Path(folder))


def encode_with_masks(tok: GLMTokenizer, text: str) -> list[int]:
    """Ids of ``text`` where ``[MASK]``, ``[sMASK]`` and ``[gMASK]`` become their command ids."""
    pieces = MASK_PATTERN.split(text)
    marks = MASK_PATTERN.findall(text)
    ids: list[int] = []
    for piece, mark in zip(pieces, [*marks, None]):
        if piece:
            ids.extend(tok.encode(piece))
        if mark is not None:
            ids.append(tok.commands[mark])
    return ids


def generation_prompt(tok: GLMTokenizer, text: str) -> list[int]:
    """The ids GLM-130B's ``generate.py`` feeds for ``text``: ``[gMASK]`` appended when the text
    has no mask, ``<eos>`` when the text goes on after its last mask, then ``<sop>``."""
    ids = encode_with_masks(tok, text)
    if not MASK_PATTERN.search(text):
        ids.append(tok.commands["[gMASK]"])
    elif not text.endswith("MASK]"):
        ids.append(tok.commands["<eos>"])
    return [*ids, tok.commands["<sop>"]]
