"""No silent surprises on the command line with LLaMA checkpoints.

`info` describes and never writes (not beside the input, not in the cache), a Meta checkpoint
is converted only when asked, quantization names are taken as model cards write them, and
`convert --to meta` shards as Meta does for the model's size unless told otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import openllm_hub
from openllm_hub.cli import main
from openllm_hub.errors import InvalidParameterError


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots`` with its size and mtime: what a write would change."""
    seen: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                seen[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(d))
    return d


@pytest.mark.parametrize("kind", ["gguf", "hf", "meta"])
def test_info_writes_nothing(kind: str, cache: Path, tiny_gguf_factory: Callable[..., Path],
                             tiny_hf_factory: Callable[..., Path],
                             tiny_meta_factory: Callable[..., tuple[Path, Path]],
                             capsys: pytest.CaptureFixture[str]) -> None:
    path = {"gguf": lambda: tiny_gguf_factory("f32"), "hf": lambda: tiny_hf_factory(),
            "meta": lambda: tiny_meta_factory(n_shards=2)[0]}[kind]()
    watched = (path if path.is_dir() else path.parent, cache)
    before = snapshot(*watched)
    code = main(["info", str(path), "--device", "cpu"])
    after = snapshot(*watched)
    assert after == before, f"info wrote: {set(after) ^ set(before)}"
    out, err = capsys.readouterr()
    if kind == "meta":
        # describing a Meta checkpoint must not convert it into the cache
        assert code == 1 and "-o convert=true" in err and err.count("\n") == 1
    else:
        assert code == 0 and "family: llama" in out
    assert main(["info", str(path), "--detect-only"]) == 0
    assert snapshot(*watched) == before


def test_meta_converts_only_when_asked(cache: Path, tiny_meta_factory: Callable[..., tuple[Path, Path]]) -> None:
    meta, _ = tiny_meta_factory(n_shards=2)
    with pytest.raises(InvalidParameterError, match="runs only after conversion"):
        openllm_hub.load(meta, device="cpu")
    assert snapshot(cache) == {}
    with openllm_hub.load(meta, device="cpu", convert=True) as m:
        assert m.info.family == "llama"
    assert snapshot(cache)  # the HF copy lives in the cache, as documented


def test_quantize_takes_upper_case_names(tmp_path: Path, tiny_gguf_factory: Callable[..., Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tiny_gguf_factory("f32")
    out = tmp_path / "m-q8.gguf"
    assert main(["quantize", str(src), str(out), "Q8_0"]) == 0, capsys.readouterr().err
    assert out.is_file()
    # an unknown name is still refused, naming the valid ones
    assert main(["quantize", str(src), str(tmp_path / "x.gguf"), "Q9_Z"]) == 1
    assert "q4_K_M" in capsys.readouterr().err


def test_convert_to_meta_shards(tmp_path: Path, tiny_hf_factory: Callable[..., Path]) -> None:
    hf = tiny_hf_factory()
    one = tmp_path / "one"
    openllm_hub.convert(hf, one, to="meta")  # a tiny model: Meta's count for its size does not exist -> 1
    assert sorted(p.name for p in one.glob("consolidated.*.pth")) == ["consolidated.00.pth"]
    two = tmp_path / "two"
    assert main(["convert", str(hf), str(two), "--to", "meta", "-o", "shards=2"]) == 0
    assert len(list(two.glob("consolidated.*.pth"))) == 2



def test_device_error_offers_only_what_this_machine_has(tiny_gguf_factory: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from openllm_hub.core.device import probe_machine

    if probe_machine().gpus:  # pragma: no cover - this check is about machines without CUDA
        return
    assert main(["run", str(tiny_gguf_factory("f32")), "-p", "x", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    fix = err.split("fix:", 1)[1]
    assert "--device cpu" in fix and "cuda" not in fix and "file" not in fix, err
