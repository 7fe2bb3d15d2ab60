"""RWKV tokenizers: the World tokenizer and tokenizers-JSON files (the Pile 20B tokenizer).

World models (RWKV-4 World, 5.x, 6, 7) use ``rwkv_vocab_v20230424.txt``, which ships inside
the ``rwkv`` package: 65529 byte strings, ids 1..65529 (0 is end-of-text), encoded by greedy
longest match over UTF-8 bytes. The package's ``TRIE_TOKENIZER`` reads the file with
``eval`` and builds a 256-way trie (297 MB, 2 s); :class:`WorldTokenizer` reads it with
``ast.literal_eval`` into two dicts and matches the same way (the tests check it gives the
package's ids). RWKV-4 Pile and Raven models use the GPT-NeoX "20B" BPE tokenizer, a
tokenizers JSON file the user supplies (ChatRWKV's ``20B_tokenizer.json``).

The choice follows the model's vocabulary size (65536 = World; 50277 or 50304 = 20B) and
can be overridden; a tokenizer whose ids do not fit the vocabulary is refused.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from openllm_hub.plugin import CorruptFileError, InvalidParameterError, Model, NotFoundError

#: Token id that ends a document in every RWKV vocabulary.
END_OF_TEXT = 0
#: Names a tokenizers JSON may have next to a checkpoint (ChatRWKV's and HF's).
JSON_NAMES = ("20B_tokenizer.json", "tokenizer.json")
PILE_VOCABS = (50277, 50304)
#: Ids of the World tokenizer (0..65529); the tests check it against the shipped file.
WORLD_IDS = 65530
_WORLD_FILE = "rwkv_vocab_v20230424.txt"


class RwkvTokenizer(Protocol):
    name: str
    #: Number of ids the tokenizer can produce (largest id + 1).
    n_ids: int

    def encode(self, text: str) -> list[int]: ...

    def encode_plain(self, text: str) -> list[int]:
        """Ids of ``text`` with no special token parsed out of it (chat message text)."""
        ...

    def specials(self) -> dict[str, int]:
        """The special tokens, spelling -> id."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


class RwkvTextModel(Model):
    """The text side both RWKV engines share (the rwkv package's and transformers'): ids come from
    the model's :class:`RwkvTokenizer` (``self.tokenizer``, set by the engine); RWKV has no BOS,
    end-of-text only stands in for an empty prompt."""

    tokenizer: RwkvTokenizer

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        ids = self.tokenizer.encode(text)
        if add_special and not ids:
            return [END_OF_TEXT]  # RWKV has no BOS; documents start after end-of-text
        return ids

    def _plain_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode_plain(text)

    def _special_tokens(self) -> dict[str, int]:
        return self.tokenizer.specials()

    def _prompt_affixes(self) -> tuple[list[int], list[int]]:
        return [], []  # no BOS (end-of-text only stands in for an empty prompt)

    def _detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)


class WorldTokenizer:
    """Greedy longest-match byte tokenizer over the World vocabulary."""

    name = "world"

    def __init__(self, vocab_file: str | Path) -> None:
        path = Path(vocab_file)
        self.id_to_bytes: dict[int, bytes] = {}
        self.bytes_to_id: dict[bytes, int] = {}
        lengths: dict[int, set[int]] = {}
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                try:
                    idx_text, rest = line.split(" ", 1)
                    literal, length = rest.rsplit(" ", 1)
                    value = ast.literal_eval(literal)
                    token = value.encode("utf-8") if isinstance(value, str) else value
                    if not isinstance(token, bytes) or len(token) != int(length):
                        raise ValueError("length mismatch")
                    idx = int(idx_text)
                except (ValueError, SyntaxError) as exc:
                    raise CorruptFileError(f"bad vocabulary line {lineno}: {exc}", where=path) from None
                self.id_to_bytes[idx] = token
                self.bytes_to_id[token] = idx
                lengths.setdefault(token[0], set()).add(len(token))
        self._lengths = {b: sorted(ls, reverse=True) for b, ls in lengths.items()}
        self.n_ids = max(self.id_to_bytes) + 1

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        out: list[int] = []
        i, n = 0, len(data)
        table, lengths = self.bytes_to_id, self._lengths
        while i < n:
            for length in lengths[data[i]]:
                if length <= n - i:
                    tid = table.get(data[i : i + length])
                    if tid is not None:
                        out.append(tid)
                        i += length
                        break
            else:  # every single byte is a token, so this cannot happen with the shipped vocabulary
                raise CorruptFileError(f"byte {data[i]:#x} has no token", where=_WORLD_FILE)
        return out

    def encode_plain(self, text: str) -> list[int]:
        return self.encode(text)  # byte strings only: the end-of-text id 0 has no spelling

    def specials(self) -> dict[str, int]:
        return {}

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Bytes of ``ids``; ids outside the vocabulary (0 = end-of-text, padding) add nothing."""
        table = self.id_to_bytes
        return b"".join(table.get(int(i), b"") for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class JsonTokenizer:
    """A tokenizers JSON file (BPE), e.g. ChatRWKV's ``20B_tokenizer.json``."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError("tokenizer file not found", where=self.path,
                                fix="pass tokenizer='path/to/20B_tokenizer.json' (from ChatRWKV) or tokenizer='world'")
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise CorruptFileError(f"not a tokenizers JSON file: {exc}", where=self.path) from None
        self._plain: Any = None
        self.name = str(self.path)
        self.n_ids = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_plain(self, text: str) -> list[int]:
        """``encode`` with the added special tokens (``<|endoftext|>``, ...) not matched in text."""
        if self._plain is None:  # a second instance: the flag is the tokenizer's state, shared by threads
            from tokenizers import Tokenizer

            self._plain = Tokenizer.from_str(self._tok.to_str())
            self._plain.encode_special_tokens = True
        return list(self._plain.encode(text, add_special_tokens=False).ids)

    def specials(self) -> dict[str, int]:
        return {str(t.content): int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode([int(i) for i in ids if 0 <= int(i) < self.n_ids], skip_special_tokens=True))


@lru_cache(maxsize=1)
def world_tokenizer() -> WorldTokenizer:
    """The World tokenizer from the installed rwkv package (read once per process)."""
    import importlib.util

    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("the rwkv package is not installed", where="tokenizer", fix="pip install rwkv")
    return WorldTokenizer(Path(next(iter(spec.submodule_search_locations))) / _WORLD_FILE)


def fits(tokenizer_ids: int, vocab_size: int) -> bool:
    """Whether a tokenizer with ``tokenizer_ids`` ids matches a model vocabulary of
    ``vocab_size`` rows: every id has a row, and the model pads by less than 64 rows
    (65530 -> 65536 for World, 50277 -> 50304 for the 20B tokenizer)."""
    return tokenizer_ids <= vocab_size <= max(tokenizer_ids, math.ceil(tokenizer_ids / 64) * 64)


def choose_tokenizer(option: str, vocab_size: int, checkpoint: Path) -> RwkvTokenizer:
    """Resolve the ``tokenizer`` load option for a model with ``vocab_size`` rows.

    ``auto``: World for a World-sized vocabulary, else a tokenizers JSON next to the
    checkpoint (``20B_tokenizer.json`` or ``tokenizer.json``, in the folder itself for an HF
    folder). ``world``: the World tokenizer. Anything else: a path to a tokenizers JSON.
    """
    where = f"tokenizer={option!r}"
    tok: RwkvTokenizer
    if option == "auto":
        if fits(WORLD_IDS, vocab_size):
            tok = world_tokenizer()
        else:
            folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
            found = next((folder / n for n in JSON_NAMES if (folder / n).is_file()), None)
            if found is None:
                hint = (" (the Pile 20B tokenizer of RWKV-4 Pile/Raven models)" if vocab_size in PILE_VOCABS else "")
                raise NotFoundError(
                    f"no tokenizer found for this model's vocabulary of {vocab_size} ids{hint}",
                    where=folder,
                    fix="pass tokenizer='path/to/20B_tokenizer.json' (ChatRWKV ships it), put it next to the "
                        "checkpoint, or pass tokenizer='world' for World models")
            tok = JsonTokenizer(found)
            where = f"tokenizer {found}"
    elif option == "world":
        tok = world_tokenizer()
    else:
        tok = JsonTokenizer(option)
    if not fits(tok.n_ids, vocab_size):
        raise InvalidParameterError(
            f"the {tok.name} tokenizer has {tok.n_ids} ids but the model's vocabulary has {vocab_size} rows",
            where=where,
            fix=("use tokenizer='world'" if fits(WORLD_IDS, vocab_size) else
                 "use the tokenizer the model was trained with (RWKV-4 Pile/Raven: 20B_tokenizer.json; "
                 "World/5/6/7: tokenizer='world')"))
    return tok
