"""Tiny models for the core tests whose tokenizer and chat template are set up for them.

Tiny random LLaMA files (an HF folder, its f32 GGUF; random weights, the real 32,000-piece LLaMA
tokenizer that ``openllm_hub_llama.tiny`` ships) with a chat template set on them, and an
in-memory transformers tokenizer carrying a template (the reference renderer of template tests).

Test-only scaffolding (not shipped in the wheel): tests/conftest.py puts this folder on sys.path,
so a test module says ``from template_models import ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tiny_llama_files(base: Path, *, gguf_name: str = "tiny-f32.gguf", **hf_options: Any) -> tuple[Path, Path]:
    """``(hf, gguf)``: a tiny random HF LLaMA folder ``base/hf`` (``make_tiny_hf(**hf_options)``, the
    real tokenizer) and the same weights as the f32 GGUF ``base/gguf_name``."""
    from openllm_hub_llama.convert_gguf import write_gguf
    from openllm_hub_llama.tiny import fixture_tokenizer, make_tiny_hf

    hf = make_tiny_hf(base / "hf", tokenizer_model=fixture_tokenizer(), **hf_options)
    gguf = base / gguf_name
    write_gguf(hf, gguf, "f32")
    return hf, gguf


def gguf_with_chat_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of the GGUF ``src`` at ``dst`` with ``tokenizer.chat_template`` set (gguf-py's metadata copier)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(dst, arch=arch.contents(), endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(
        gguf.GGUFValueType.STRING, template)}, [])
    return dst


def set_hf_chat_template(hf: Path, template: str) -> Path:
    """Write ``template`` as the ``chat_template`` of the HF folder's tokenizer_config.json (in place,
    other keys kept); returns ``hf``."""
    cfg_path = hf / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg_path.write_text(json.dumps({**cfg, "chat_template": template}))
    return hf


def hf_tokenizer_with_template(template: str, specials: dict[str, str]) -> Any:
    """A transformers fast tokenizer built in memory (no download) with the special-token
    strings of the model and its chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk-x>": 0, **{tok: i + 1 for i, tok in enumerate(dict.fromkeys(specials.values()))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk-x>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tok.chat_template = template
    return tok
