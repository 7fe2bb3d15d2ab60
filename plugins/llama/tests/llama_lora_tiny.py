"""Builders of tiny PEFT LoRA adapters for tests and benchmarks, made with PEFT itself.

* :func:`make_peft_adapter` — ``get_peft_model`` on a tiny base (see :mod:`openllm_hub_llama.tiny`), random
  ``lora_A`` *and* ``lora_B`` (PEFT starts B at zero, which would make every delta vanish),
  random full ``modules_to_save`` weights, ``save_pretrained``: the files PEFT writes.
  With ``extra_pieces`` / ``added_tokens`` the vocabulary grows the way Chinese-LLaMA's did:
  sentencepiece pieces appended to ``tokenizer.model`` (their ``merge_tokenizers.py`` edits
  the model proto the same way), then added tokens such as Chinese-Alpaca's ``[PAD]``.
* :func:`to_old_key_layout` — rewrite a saved adapter the way PEFT 0.2/0.3 saved
  ``modules_to_save`` (``<module>.weight``), the layout of the published Chinese-LLaMA files.
* :func:`to_fan_in_fan_out` — the same adapter saved transposed with ``fan_in_fan_out=true``
  (A ``(r, out)``, B ``(in, r)``: PEFT then applies ``(B @ A).T``), built by hand since PEFT
  refuses that flag for ``nn.Linear``.

torch and peft are imported inside the functions.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NORMAL_PIECE = 1
#: Pieces a test vocabulary extension appends (CJK, as Chinese-LLaMA's extension did).
CJK_PIECES: tuple[str, ...] = ("▁中国", "中文", "你好", "世界", "模型", "语言", "▁我们", "学习",
                               "数据", "问题", "回答", "指令", "输入", "输出", "今天", "天气")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def extend_sentencepiece(src: str | Path, dst: str | Path, pieces: Sequence[str], score: float = 0.0) -> None:
    """Write ``src``'s sentencepiece model with ``pieces`` appended (ids ``n .. n+len-1``).

    A ``ModelProto`` lists its pieces as repeated field 1; a protobuf parser appends repeated
    entries in file order wherever they occur, so appending encoded entries adds pieces at
    the end of the vocabulary without a protobuf library.
    """
    data = bytearray(Path(src).read_bytes())
    for p in pieces:
        raw = p.encode("utf-8")
        msg = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18" + _varint(NORMAL_PIECE)
        data += b"\x0a" + _varint(len(msg)) + msg
    Path(dst).write_bytes(bytes(data))


def write_adapter_tokenizer(folder: Path, base: Path, extra_pieces: Sequence[str] = (),
                            added_tokens: Sequence[str] = ()) -> int:
    """Tokenizer files of an adapter with an extended vocabulary; returns its length."""
    import sentencepiece as spm

    src = Path(base) / "tokenizer.model"
    extend_sentencepiece(src, folder / "tokenizer.model", extra_pieces)
    n = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (Path(base) / name).is_file():
            shutil.copyfile(Path(base) / name, folder / name)
    if added_tokens:
        (folder / "added_tokens.json").write_text(json.dumps({t: n + i for i, t in enumerate(added_tokens)}) + "\n")
    return int(n) + len(added_tokens)


def make_peft_adapter(base: str | Path, out: str | Path, *, r: int = 4, alpha: float = 8.0,
                      targets: Sequence[str] | str = ("q_proj", "k_proj", "v_proj", "o_proj"),
                      modules_to_save: Sequence[str] | None = None, use_rslora: bool = False,
                      extra_pieces: Sequence[str] = (), added_tokens: Sequence[str] = (),
                      resize_from: str | Path | None = None, seed: int = 0, std: float = 0.08,
                      dtype: str = "float32") -> Path:
    """Save a random PEFT LoRA adapter for the HF LLaMA folder ``base`` at ``out``; returns ``out``.

    With ``extra_pieces``/``added_tokens`` the adapter's tokenizer extends the tokenizer of
    ``resize_from`` (default ``base``) and the model is resized to it first, as Chinese-LLaMA's
    training scripts did; ``modules_to_save`` should then include embed_tokens and lm_head.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tdt = getattr(torch, dtype)
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=tdt)
    g = torch.Generator().manual_seed(seed)
    if extra_pieces or added_tokens:
        n = write_adapter_tokenizer(out_dir, Path(resize_from or base), extra_pieces, added_tokens)
        model.resize_token_embeddings(n, mean_resizing=False)
    cfg = LoraConfig(r=r, lora_alpha=_alpha(alpha),
                     target_modules=list(targets) if not isinstance(targets, str) else targets,
                     modules_to_save=list(modules_to_save) if modules_to_save else None, use_rslora=use_rslora,
                     lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "lora_A" in name or "embedding_A" in name
                                                             else std))
            elif ".modules_to_save." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def _alpha(alpha: float) -> Any:
    """lora_alpha as adapter_config.json usually holds it (an int when integral)."""
    return int(alpha) if float(alpha).is_integer() else alpha


def _load_state(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(folder / "adapter_model.safetensors")))


def _save_state(folder: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})


def to_old_key_layout(src: str | Path, dst: str | Path, *, as_bin: bool = False) -> Path:
    """Copy the adapter at ``src`` to ``dst`` with modules_to_save stored as ``<module>.weight``
    (no ``original_module`` copies), as PEFT 0.2/0.3 saved the Chinese-LLaMA adapters;
    ``as_bin`` writes ``adapter_model.bin`` (torch.save) instead of safetensors."""
    import torch

    s, d = Path(src), Path(dst)
    shutil.copytree(s, d)
    state = _load_state(s)
    new: dict[str, Any] = {}
    for k, v in state.items():
        if ".original_module." in k:
            continue
        if ".modules_to_save." in k:
            new[k.replace(".modules_to_save.", ".")] = v
        elif k.endswith(".weight") and ".lora_" not in k and k.replace(".weight", ".modules_to_save.weight") in state:
            continue  # PEFT's saved base-layer copy of a modules_to_save module
        else:
            new[k] = v
    (d / "adapter_model.safetensors").unlink()
    if as_bin:
        torch.save(new, d / "adapter_model.bin")
    else:
        _save_state(d, new)
    return d


def to_fan_in_fan_out(src: str | Path, dst: str | Path) -> Path:
    """Copy the adapter at ``src`` to ``dst`` saved transposed with ``fan_in_fan_out=true``:
    ``A_t = B.T`` ``(r, out)``, ``B_t = A.T`` ``(in, r)``, so ``(B_t @ A_t).T == B @ A``."""
    s, d = Path(src), Path(dst)
    shutil.copytree(s, d)
    state = _load_state(s)
    new: dict[str, Any] = {}
    for k, v in state.items():
        if ".lora_A.weight" in k:
            new[k] = state[k.replace(".lora_A.", ".lora_B.")].t()
        elif ".lora_B.weight" in k:
            new[k] = state[k.replace(".lora_B.", ".lora_A.")].t()
        else:
            new[k] = v
    _save_state(d, new)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["fan_in_fan_out"] = True
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d
