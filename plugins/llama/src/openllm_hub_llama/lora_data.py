"""Alpaca-format instruction data for ``openllm-hub lora train``.

A dataset is a JSON list (``alpaca_data.json``) or JSON Lines file of records with
``instruction``, optional ``input`` and ``output`` strings. Each record becomes the Alpaca
prompt (:func:`templates.alpaca_prompt`: the with-input variant when ``input`` is non-empty)
followed by the output, tokenized as alpaca-lora does: BOS, the text cut to ``cutoff_len``
tokens, EOS appended when it fits; with ``train_on_inputs=False`` the prompt's tokens get
label -100 so only the response is learned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openllm_hub.plugin import CorruptFileError, InvalidParameterError, read_text_file
from openllm_hub_llama.templates import alpaca_prompt

IGNORE_INDEX = -100


@dataclass(frozen=True)
class AlpacaExample:
    instruction: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        return alpaca_prompt(self.instruction, self.input or None)


def _record(obj: Any, where: str) -> AlpacaExample:
    if not isinstance(obj, dict):
        raise CorruptFileError("each example must be an object with instruction/input/output", where=where)
    for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str):
            raise CorruptFileError(f"example lacks a string {key!r}", where=where,
                                   fix="Alpaca records have 'instruction', optional 'input' and 'output' strings")
    inp = obj.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise CorruptFileError("'input' must be a string", where=where)
    return AlpacaExample(obj["instruction"], inp, obj["output"])


def load_alpaca(path: str | Path) -> list[AlpacaExample]:
    """Read an Alpaca JSON (list) or JSONL file; every record is checked."""
    p = Path(path)
    text = read_text_file(p, what="the dataset")  # missing, a folder, unreadable, not UTF-8: one clear error
    records: list[Any]
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            records = data["data"]
    except RecursionError:
        raise CorruptFileError("the dataset's JSON is nested too deeply", where=p,
                               fix="use a JSON list of records or one JSON object per line") from None
    except json.JSONDecodeError:
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise CorruptFileError(f"line {i} is not JSON: {exc}", where=p,
                                       fix="use a JSON list of records or one JSON object per line") from exc
    examples = [_record(r, f"{p} (example {i})") for i, r in enumerate(records)]
    if not examples:
        raise CorruptFileError("the dataset holds no examples", where=p)
    return examples


class TextTokenizer(Protocol):
    def encode(self, text: str, add_special: bool) -> list[int]: ...


@dataclass(frozen=True)
class Features:
    input_ids: list[int]
    labels: list[int]


def tokenize_example(ex: AlpacaExample, tok: TextTokenizer, *, bos_id: int | None, eos_id: int | None,
                     cutoff_len: int, train_on_inputs: bool = True, add_eos: bool = True) -> Features:
    """Token ids and labels of one example (see the module docstring)."""
    if cutoff_len < 2:
        raise InvalidParameterError("cutoff_len must be at least 2", where="cutoff_len")
    prompt = tok.encode(ex.prompt, False)
    full = tok.encode(ex.prompt + ex.output, False)
    ids = ([bos_id] if bos_id is not None else []) + full
    ids = ids[:cutoff_len]
    if add_eos and eos_id is not None and len(ids) < cutoff_len and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = min(len(ids), len(prompt) + (1 if bos_id is not None else 0))
        labels[:n_prompt] = [IGNORE_INDEX] * n_prompt
    return Features(ids, labels)


def split_validation(n: int, val_size: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the training and validation examples: ``val_size`` examples (>= 1) or that
    fraction (< 1), drawn with ``seed``."""
    import random

    if val_size < 0:
        raise InvalidParameterError("val_size must be >= 0", where="val_size")
    k = int(val_size) if val_size >= 1 else round(n * val_size)
    if k >= n:
        raise InvalidParameterError(f"validation split of {k} leaves no training examples (dataset has {n})",
                                    where="val_size", fix="use a smaller --val-size")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[k:]), sorted(order[:k])


def pad_batch(features: Sequence[Features], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` tensors for a micro-batch."""
    import torch

    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f.input_ids)
        ids[i, :n] = torch.tensor(f.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(f.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
