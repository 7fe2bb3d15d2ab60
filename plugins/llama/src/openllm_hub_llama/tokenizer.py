"""The LLaMA sentencepiece tokenizer as GGUF vocabulary metadata.

llama.cpp's ``llama`` (SPM) tokenizer is driven entirely by the GGUF keys written here:
pieces, scores and token types of the sentencepiece model, the special ids and the add-bos /
add-eos / add-space-prefix flags, plus added tokens from ``added_tokens.json`` and
``tokenizer_config.json``'s ``added_tokens_decoder``. With these it tokenizes exactly as
sentencepiece does (tested on varied text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.plugin import CorruptFileError, NotFoundError, read_json

if TYPE_CHECKING:  # pragma: no cover
    import gguf

# GGUF token types (gguf.TokenType; spelled out so this module imports without gguf)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: score llama.cpp's converter gives added tokens
ADDED_SCORE = -1000.0
SPIECE_SPACE = "\u2581"


@dataclass(frozen=True)
class GGUFVocab:
    """Everything llama.cpp needs to rebuild the tokenizer."""

    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool

    def __len__(self) -> int:
        return len(self.tokens)


def require_tokenizer(folder: Path) -> Path:
    """``folder/tokenizer.model``, or a clear error when it is missing."""
    path = folder / "tokenizer.model"
    if not path.is_file():
        raise NotFoundError("tokenizer.model is missing", where=folder,
                            fix="copy the model's sentencepiece tokenizer.model into the folder")
    return path


def _added_tokens(folder: Path) -> dict[int, tuple[str, bool]]:
    """Added tokens: id -> (content, special), from added_tokens.json and tokenizer_config.json."""
    added: dict[int, tuple[str, bool]] = {}
    at = folder / "added_tokens.json"
    if at.is_file():
        data = read_json(at)
        if not isinstance(data, dict):
            raise CorruptFileError("added_tokens.json must map token -> id", where=at)
        for content, idx in data.items():
            added[int(idx)] = (str(content), False)
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        cfg = read_json(tc)
        for idx, entry in (cfg.get("added_tokens_decoder") or {}).items():
            added[int(idx)] = (str(entry["content"]), bool(entry.get("special", False)))
    return added


def _tokenizer_flags(folder: Path) -> dict[str, Any]:
    tc = folder / "tokenizer_config.json"
    return read_json(tc) if tc.is_file() else {}


def load_vocab(folder: Path, n_vocab: int, *, bos_id: int | None = None, eos_id: int | None = None,
               pad_id: int | None = None) -> GGUFVocab:
    """Read ``folder/tokenizer.model`` (+ added tokens) as a GGUF vocabulary of ``n_vocab``
    entries (the embedding's rows); a tokenizer that does not account for exactly those rows
    is an error. ``bos_id``/``eos_id``/``pad_id`` (from config.json) override sentencepiece's."""
    import sentencepiece as spm

    model = require_tokenizer(folder)
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model))
    except (OSError, RuntimeError) as exc:
        raise CorruptFileError(f"cannot read the sentencepiece model: {exc}", where=model) from exc
    n_sp = sp.vocab_size()
    added = _added_tokens(folder)
    n_tok = max([n_sp, *(i + 1 for i in added)])
    holes = sorted(set(range(n_sp, n_tok)) - set(added))
    if n_tok != n_vocab or holes:
        raise CorruptFileError(
            f"the tokenizer has {n_tok} tokens ({n_sp} sentencepiece pieces + {len([i for i in added if i >= n_sp])} "
            f"added) but the model's embedding has {n_vocab} rows" + (f"; ids {holes[:5]} are undefined" if holes
                                                                      else ""),
            where=model, fix="use the tokenizer.model (and added_tokens.json) that belong to these weights")

    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(n_sp):
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(float(sp.GetScore(i)))
        if sp.IsUnknown(i):
            types.append(UNKNOWN)
        elif sp.IsControl(i):
            types.append(CONTROL)
        elif sp.IsUnused(i):
            types.append(UNUSED)
        elif sp.IsByte(i):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    tokens += [b""] * (n_tok - n_sp)
    scores += [ADDED_SCORE] * (n_tok - n_sp)
    types += [USER_DEFINED] * (n_tok - n_sp)
    for i, (content, special) in sorted(added.items()):
        if i < n_sp and tokens[i] == content.encode("utf-8"):
            continue  # a sentencepiece piece listed again (e.g. <s> in added_tokens_decoder): keep its type
        if special:
            types[i] = CONTROL
        else:
            # llama.cpp matches user-defined tokens against text where spaces are still spaces
            content = content.replace(SPIECE_SPACE, " ")
            types[i] = USER_DEFINED
        tokens[i] = content.encode("utf-8")
        scores[i] = ADDED_SCORE

    flags = _tokenizer_flags(folder)
    first = sp.EncodeAsPieces("a")
    add_space_prefix = bool(first) and first[0].startswith(SPIECE_SPACE)

    def valid(i: int | None) -> int | None:
        return i if i is not None and 0 <= i < n_tok else None

    return GGUFVocab(
        tokens=tokens, scores=scores, types=types,
        bos_id=valid(bos_id if bos_id is not None else sp.bos_id()),
        eos_id=valid(eos_id if eos_id is not None else sp.eos_id()),
        unk_id=valid(sp.unk_id()),
        pad_id=valid(pad_id if pad_id is not None else sp.pad_id()),
        add_bos=bool(flags.get("add_bos_token", True)),
        add_eos=bool(flags.get("add_eos_token", False)),
        add_space_prefix=add_space_prefix,
    )


def add_vocab_to_gguf(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    """Write ``vocab`` as the ``tokenizer.ggml.*`` keys of a llama (SPM) GGUF."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)


def write_hf_tokenizer_files(folder: Path, tokenizer_model: Path, vocab_extra: dict[str, Any] | None = None) -> None:
    """tokenizer.model plus the tokenizer_config.json / special_tokens_map.json of Llama-2 repositories."""
    import shutil

    shutil.copyfile(tokenizer_model, folder / "tokenizer.model")
    cfg: dict[str, Any] = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": False, "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        **(vocab_extra or {}),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
