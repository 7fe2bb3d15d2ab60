"""``openllm-hub`` on LLaMA models: run, chat, info, convert, quantize, devices; bad input
ends with one line on stderr and exit code 1. Outputs are compared with the Python API."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import openllm_hub
from openllm_hub.cli import main


@pytest.fixture(scope="module")
def gguf(tiny_gguf_factory: Callable[..., Path]) -> Path:
    return tiny_gguf_factory("f32", num_kv_heads=2)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("openllm-hub: error: "), err
    return err


def test_run_prints_what_generate_returns(gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(gguf), "-p", "Once upon a time", "-n", "12", "--temp", "0", "--no-echo",
                 "-t", "1", "-c", "256"]) == 0
    out = capsys.readouterr().out
    with openllm_hub.load(gguf, device="cpu", threads=1, n_ctx=256) as m:
        want = m.generate("Once upon a time", max_new_tokens=12, temperature=0.0).text
    assert out == want + "\n"


def test_chat_reads_stdin(gguf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name three colours.\n"))
    assert main(["chat", str(gguf), "--template", "alpaca", "-n", "8", "--temp", "0", "-t", "1"]) == 0
    out = capsys.readouterr().out
    with openllm_hub.load(gguf, device="cpu", threads=1) as m:
        want = m.chat([{"role": "user", "content": "Name three colours."}], template="alpaca",
                      max_new_tokens=8, temperature=0.0).text
    assert out == want + "\n"


def test_info_json(gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(gguf), "--json", "-t", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["family"], data["format"], data["engine"], data["quantization"]) == ("llama", "gguf", "llama.cpp",
                                                                                       "f32")


def test_devices_reports_both_engines(capsys: pytest.CaptureFixture[str]) -> None:
    import llama_cpp

    assert main(["devices", "--json"]) == 0
    engines = json.loads(capsys.readouterr().out)["engines"]
    assert engines["llama.cpp"]["version"] == llama_cpp.__version__
    assert "gpu_offload" in engines["llama.cpp"] and "system_info" in engines["llama.cpp"]
    assert engines["transformers"]["torch"] and engines["transformers"]["version"]


def test_convert_verify_then_quantize_then_run(tiny_hf_factory: Callable[..., Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    hf = tiny_hf_factory(num_kv_heads=2)
    f32 = tmp_path / "m-f32.gguf"
    assert main(["convert", str(hf), str(f32), "--to", "gguf", "--outtype", "f32", "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {f32}" in out and "PASS" in out
    q8 = tmp_path / "m-q8_0.gguf"
    assert main(["quantize", str(f32), str(q8), "q8_0", "-t", "1"]) == 0
    assert f"wrote {q8} (q8_0" in capsys.readouterr().out
    assert main(["run", str(q8), "-p", "Hello", "-n", "4", "--temp", "0", "--no-echo", "-t", "1"]) == 0
    assert capsys.readouterr().out.strip()


def test_quantize_errors_are_one_line(gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, ["quantize", str(gguf), str(tmp_path / "x.gguf"), "q4_k_x"])
    assert "unknown quantization type 'q4_k_x'" in err and "q4_K_M" in err
    err = _one_line_error(capsys, ["quantize", str(gguf), str(gguf), "q8_0"])
    assert "overwrite an input" in err
    present = tmp_path / "present.gguf"
    present.write_bytes(b"x")
    err = _one_line_error(capsys, ["quantize", str(gguf), str(present), "q8_0"])
    assert "already exists" in err and "--force" in err
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf.read_bytes()[:-64])
    err = _one_line_error(capsys, ["run", str(truncated), "-p", "Hi", "-n", "2"])
    assert "runs past the end of the file" in err


def test_installed_entry_point_error(gguf: Path, tmp_path: Path) -> None:
    """The real command in a fresh process: one line on stderr, exit status 1, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "quantize", str(gguf), str(tmp_path / "o.gguf"),
                           "q9_9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "unknown quantization type 'q9_9'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.gguf").exists()
