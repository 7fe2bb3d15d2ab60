"""Reading GGUF metadata without the gguf package, checked against files gguf writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openllm_hub.core.detect import Probe, read_gguf_metadata
from openllm_hub.errors import CorruptFileError


def _gguf(path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(3)
    w.add_context_length(128)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_reads_what_gguf_writes(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _gguf(path)
    meta = read_gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 3 and meta["llama.context_length"] == 128
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["tokenizer.ggml.tokens"] == {"__array_len__": 103}
    assert meta["__n_tensors__"] == 1
    probe = Probe(path)
    assert probe.is_gguf and probe.gguf is not None and "GGUF metadata" in probe.describe()


def test_truncated_and_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _gguf(path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_gguf_metadata(cut)
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(CorruptFileError, match="magic"):
        read_gguf_metadata(wrong)


def test_probe_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    probe = Probe(tmp_path)
    assert probe.config == {"model_type": "llama"}
    assert probe.json("missing.json") is None
    assert "config.json (model_type='llama')" in probe.describe()
