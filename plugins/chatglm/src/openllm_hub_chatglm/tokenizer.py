"""ChatGLM tokenizers, on sentencepiece, following the released ``tokenization_chatglm.py``.

ChatGLM-6B (``ice_text.model``): text is normalised before sentencepiece (newline -> ``<n>``,
tab -> ``<|tab|>``, runs of 2..80 spaces -> ``<|blank_N|>``, longest first) and undone
after decoding. Its special tokens (``[MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC>
<dBLOCK>``) are pieces of the sentencepiece model; ids are sentencepiece ids plus
``num_image_tokens`` (tokenizer_config.json; 20000 by default, 0 in the final release). A
prompt ends with ``[gMASK] <sop>``.

ChatGLM2/3 (``tokenizer.model``): plain sentencepiece; the specials ``[MASK] [gMASK] [sMASK]
sop eop`` (and for v3 ``<|system|> <|user|> <|assistant|> <|observation|>``) get the ids
after the sentencepiece vocabulary, in that order. A prompt starts with ``[gMASK] sop``.
v3 text may contain role tokens: each is encoded as its id, and the text after it up to and
including the first newline (the role's metadata line) is encoded separately from the rest,
so that a rendered conversation gives the ids of the official ``build_chat_input``.

Decoding skips special tokens (and bos/eos/unk, as the released tokenizers map them to "").

:meth:`~ChatGLMTokenizer.encode_plain` encodes text with no special token parsed out of it (chat
message text): v2/v3 is plain sentencepiece (the specials lie past its vocabulary), v1's
specials are user-defined pieces that sentencepiece matches in text, so v1 spells them out
character by character.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from openllm_hub.plugin import CorruptFileError, NotFoundError, read_json

V1_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
V2_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
V3_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
MAX_BLANK = 80
V1_FILE, V2_FILE = "ice_text.model", "tokenizer.model"


def _load_sp(path: Path) -> Any:
    import sentencepiece as spm

    if not path.is_file():
        raise NotFoundError(f"tokenizer file {path.name} is missing", where=path,
                            fix="copy the checkpoint's tokenizer files into the folder")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise CorruptFileError(f"not a sentencepiece model: {exc}", where=path, fix="download it again") from exc


class ChatGLMTokenizer:
    """Common interface: ``encode``/``decode`` and the special ids the engine needs."""

    gmask_id: int
    sop_id: int
    eos_ids: tuple[int, ...]
    vocab_size: int
    #: the special tokens, spelling -> id (set by each version's constructor)
    _ids: dict[str, int]

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def special_id(self, token: str) -> int:
        return self._ids[token]

    def encode_plain(self, text: str) -> list[int]:
        """Ids of ``text`` without the prompt's specials, no special token parsed out of it."""
        raise NotImplementedError

    @property
    def specials(self) -> dict[str, int]:
        """The special tokens, spelling -> id."""
        return dict(self._ids)


class V1Tokenizer(ChatGLMTokenizer):
    """ChatGLM-6B's tokenizer (``ice_text.model``)."""

    def __init__(self, path: Path, num_image_tokens: int = 20000) -> None:
        self.sp = _load_sp(path)
        self.offset = num_image_tokens
        sp = self.sp
        self._ids: dict[str, int] = {}
        for tok in V1_SPECIALS:
            pid = sp.piece_to_id(tok)
            if pid == sp.unk_id() or sp.id_to_piece(pid) != tok:
                raise CorruptFileError(f"the tokenizer lacks ChatGLM-6B's special token {tok}", where=path,
                                       fix="this is not a ChatGLM-6B ice_text.model")
            self._ids[tok] = pid + self.offset
        for tok in ("<n>", "<|tab|>"):
            if sp.piece_to_id(tok) == sp.unk_id():
                raise CorruptFileError(f"the tokenizer lacks ChatGLM-6B's {tok} token", where=path)
        self.gmask_id, self.sop_id = self._ids["[gMASK]"], self._ids["<sop>"]
        self.eos_ids = (self._ids["<eop>"],)
        self.vocab_size = sp.get_piece_size() + self.offset
        controls = {sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()}
        self._skip = set(self._ids.values()) | {c + self.offset for c in controls if c >= 0}

    def encode_plain(self, text: str) -> list[int]:
        """Like ``encode(text, False)``, but a special token's spelling in the text (which
        sentencepiece would match as its user-defined piece) becomes the pieces of its characters."""
        sp, specials = self.sp, set(self._ids.values())
        out: list[int] = []
        for i in sp.encode(self.normalize(text)):
            if i + self.offset not in specials:
                out.append(i + self.offset)
                continue
            for ch in sp.id_to_piece(i):
                pid = sp.piece_to_id(ch)
                if pid == sp.unk_id():  # a byte-fallback vocabulary spells it in bytes; else <unk>
                    byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in ch.encode("utf-8")]
                    out += [b + self.offset for b in byte_ids] if sp.unk_id() not in byte_ids else [pid + self.offset]
                else:
                    out.append(pid + self.offset)
        return out

    @staticmethod
    def normalize(text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for n in range(MAX_BLANK, 1, -1):
            text = text.replace(" " * n, f"<|blank_{n}|>")
        return text

    @staticmethod
    def denormalize(text: str) -> str:
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        for n in range(2, MAX_BLANK + 1):
            text = text.replace(f"<|blank_{n}|>", " " * n)
        return text

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = [i + self.offset for i in self.sp.encode(self.normalize(text))]
        return [*ids, self.gmask_id, self.sop_id] if add_special else ids

    def decode(self, ids: Sequence[int]) -> str:
        keep = [i - self.offset for i in ids if i >= self.offset and i not in self._skip and i < self.vocab_size]
        text: str = self.sp.decode(keep)
        return self.denormalize(text)


class V2Tokenizer(ChatGLMTokenizer):
    """ChatGLM2 (``roles=False``) and ChatGLM3 (``roles=True``) tokenizer (``tokenizer.model``)."""

    def __init__(self, path: Path, roles: bool) -> None:
        self.sp = _load_sp(path)
        sp = self.sp
        n: int = sp.get_piece_size()
        names = V2_SPECIALS + (V3_ROLES if roles else ())
        self._ids: dict[str, int] = {tok: n + i for i, tok in enumerate(names)}
        self.roles = roles
        self.gmask_id, self.sop_id = self._ids["[gMASK]"], self._ids["sop"]
        eos = sp.eos_id()
        self.eos_ids = (eos, self._ids["<|user|>"], self._ids["<|observation|>"]) if roles else (eos,)
        self.vocab_size = n + len(names)
        controls = {sp.unk_id(), sp.bos_id(), sp.eos_id()}
        self._skip = set(self._ids.values()) | {c for c in controls if c >= 0}

    def encode_plain(self, text: str) -> list[int]:
        return self._sp(text)

    def _sp(self, text: str) -> list[int]:
        return list(self.sp.encode(text)) if text else []

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        prefix = [self.gmask_id, self.sop_id] if add_special else []
        roles = {r: self._ids[r] for r in V3_ROLES} if self.roles else None
        return encode_v2(text, self._sp, prefix=prefix, roles=roles)

    def decode(self, ids: Sequence[int]) -> str:
        n = self.sp.get_piece_size()
        text: str = self.sp.decode([i for i in ids if i not in self._skip and 0 <= i < n])
        return text


def encode_v2(text: str, encode: Callable[[str], list[int]], *, prefix: Sequence[int] = (),
              roles: Mapping[str, int] | None = None) -> list[int]:
    """ChatGLM2/3 ids of ``text``: ``prefix`` (``[gMASK] sop`` for a prompt), then the text
    with ``encode`` (plain sentencepiece ids of a piece of text). With ``roles`` (v3: role
    token -> id) each role token becomes its id, and the text after it up to and including the
    first newline (the role's metadata line) is encoded on its own, as upstream does. Both
    engines (sentencepiece here, llama.cpp's vocabulary in a GGUF) tokenize through this."""
    ids = list(prefix)
    if not roles:
        return ids + encode(text)
    pattern = re.compile("|".join(re.escape(r) for r in roles))
    pos = 0
    for m in pattern.finditer(text):
        ids += _segment(text[pos:m.start()], encode, after_role=pos > 0)
        ids.append(roles[m.group()])
        pos = m.end()
    return ids + _segment(text[pos:], encode, after_role=pos > 0)


def _segment(text: str, encode: Callable[[str], list[int]], *, after_role: bool) -> list[int]:
    if after_role and "\n" in text:
        cut = text.index("\n") + 1  # the role's metadata line, encoded on its own as upstream does
        return encode(text[:cut]) + encode(text[cut:])
    return encode(text)


def load_tokenizer(folder: Path, variant: str) -> ChatGLMTokenizer:
    """The tokenizer of a checkpoint folder for ``variant`` (chatglm, chatglm2, chatglm3)."""
    if variant == "chatglm":
        offset = 20000
        cfg = folder / "tokenizer_config.json"
        if cfg.exists():
            data = read_json(cfg)
            value = data.get("num_image_tokens") if isinstance(data, dict) else None
            if value is not None:
                # every text id is shifted by this offset: a negative or non-integer one would shift them all
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1 << 24:
                    raise CorruptFileError(f"tokenizer_config.json: 'num_image_tokens' must be a non-negative "
                                           f"integer, got {value!r}", where=cfg,
                                           fix="restore tokenizer_config.json from the checkpoint's source "
                                               "(0 for the final ChatGLM-6B release, 20000 for the first)")
                offset = value
        return V1Tokenizer(folder / V1_FILE, offset)
    return V2Tokenizer(folder / V2_FILE, roles=variant == "chatglm3")
