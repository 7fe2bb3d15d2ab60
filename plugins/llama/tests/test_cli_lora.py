"""Runtime LoRA from the command line: ``--lora PATH[:SCALE]`` (repeatable, as llama.cpp's
``--lora``/``--lora-scaled``) and ``-o lora=PATH`` on the shared load flags, equal to
``load(..., lora=[(PATH, SCALE)])``; clear errors for a missing file or a bad scale; ``lora gguf``
prints the command-line form."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llama_lora_tiny import make_peft_adapter
from openllm_hub_llama.lora_gguf import convert_adapter_to_gguf

import openllm_hub
from openllm_hub.cli import main as cli_main

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def files(tiny_hf_factory: Callable[..., Path], tiny_gguf_factory: Callable[..., Path],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny f32 GGUF base and two GGUF LoRA adapters for it (q/k and v/o)."""
    root = tmp_path_factory.mktemp("cli-lora")
    base = tiny_hf_factory(num_kv_heads=2)
    base_gguf = tiny_gguf_factory("f32", num_kv_heads=2)
    a = make_peft_adapter(base, root / "a", r=8, alpha=16, targets=("q_proj", "k_proj"), seed=21)
    b = make_peft_adapter(base, root / "b", r=4, alpha=8, targets=("v_proj", "o_proj"), seed=22)
    return {"base": base_gguf, "a": convert_adapter_to_gguf(a, base_gguf, root / "a.gguf"),
            "b": convert_adapter_to_gguf(b, base_gguf, root / "b.gguf"), "a_peft": a}


def _info(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert cli_main(["info", *args, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _loras(info: dict[str, Any]) -> list[tuple[str, float]]:
    assert info["extra"]["loras_attached"] == len(info["extra"]["lora"])
    return [(Path(x["path"]).name, x["scale"]) for x in info["extra"]["lora"]]


def test_run_with_lora_equals_load_with_lora(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli_main(["run", str(files["base"]), "--lora", f"{files['a']}:0.5", "--device", "cpu",
                     "-p", PROMPT, "-n", "6", "--temp", "0", "--no-echo"]) == 0
    out = capsys.readouterr().out
    with openllm_hub.load(files["base"], device="cpu", lora=[(str(files["a"]), 0.5)]) as m:
        expect = m.generate(PROMPT, max_new_tokens=6, temperature=0).text
    assert out == expect + "\n"


def test_lora_flag_forms(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, a, b = str(files["base"]), str(files["a"]), str(files["b"])
    assert _loras(_info(capsys, base, "--lora", a)) == [("a.gguf", 1.0)]
    assert _loras(_info(capsys, base, "--lora", a, "--lora", f"{b}:0.25")) == [("a.gguf", 1.0), ("b.gguf", 0.25)]
    assert _loras(_info(capsys, base, "--lora", f"{a}:-1")) == [("a.gguf", -1.0)]
    # -o lora= as a plain path, PATH:SCALE, a list of those, and load()'s own pairs; --lora adds to it
    assert _loras(_info(capsys, base, "-o", f"lora={a}")) == [("a.gguf", 1.0)]
    assert _loras(_info(capsys, base, "-o", f"lora={b}:2")) == [("b.gguf", 2.0)]
    assert _loras(_info(capsys, base, "-o", f'lora=["{a}", "{b}:0.5"]')) == [("a.gguf", 1.0), ("b.gguf", 0.5)]
    assert _loras(_info(capsys, base, "-o", f'lora=[["{a}", 0.75]]', "--lora", b)) == [("a.gguf", 0.75),
                                                                                       ("b.gguf", 1.0)]
    assert _loras(_info(capsys, base)) == []


@pytest.mark.parametrize(("lora", "message"), [
    ("{dir}/missing.gguf", "LoRA adapter not found"),
    ("{dir}/missing.gguf:0.5", "LoRA adapter not found"),
    ("{a}:abc", "LoRA scale 'abc' is not a number"),
    ("{a}:nan", "is not a finite number"),
])
def test_lora_flag_errors(files: dict[str, Path], capsys: pytest.CaptureFixture[str], lora: str,
                          message: str) -> None:
    spec = lora.format(dir=files["a"].parent, a=files["a"])
    for args in (["--lora", spec], ["-o", f"lora={spec}"]):
        capsys.readouterr()
        assert cli_main(["run", str(files["base"]), *args, "-p", PROMPT, "-n", "2", "--device", "cpu"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], captured.err
        assert "--lora" in lines[0] or "-o lora=" in lines[0]


def test_lora_flag_on_every_loading_command(capsys: pytest.CaptureFixture[str]) -> None:
    from openllm_hub.cli import build_parser

    parser = build_parser()
    for command in ("run", "chat", "info", "perplexity", "serve"):
        extra = ["text.txt"] if command == "perplexity" else []
        args = parser.parse_args([command, "m.gguf", *extra, "--lora", "x.gguf", "--lora", "y.gguf:0.5"])
        assert args.lora == ["x.gguf", "y.gguf:0.5"], command


def test_lora_gguf_prints_the_command_line_form(files: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a.gguf"
    capsys.readouterr()
    assert cli_main(["lora", "gguf", str(files["a_peft"]), "--base", str(files["base"]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"openllm-hub run BASE.gguf --lora {out}" in printed and "load(" in printed
