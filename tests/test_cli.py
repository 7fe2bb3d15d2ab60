"""The CLI: one-line errors, model names, and the commands that need no engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openllm_hub.cli import main


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openllm_hub.cli", *args], capture_output=True, text=True,
                          input=stdin, env={**os.environ}, timeout=120)


@pytest.mark.parametrize("args", [
    ("run", "/no/such/model", "-p", "x"),
    ("run", "bigram-stories", "-p", "x", "--temp", "-1"),
    ("run", "bigram-stories", "-p", "x", "-o", "nonsense=1"),
    ("info", "bigram-stories", "--device", "tpu"),
    ("info", "bigram-stories", "--device", "cuda"),
    ("quantize", "bigram-stories", "/tmp/x.bin", "q4_0"),
    ("chat", "bigram-stories", "--template", "no-such-template"),
    ("run", "bigram-stories", "-p", "x", "--nproc", "2"),
])
def test_bad_input_is_one_line(args: tuple[str, ...]) -> None:
    res = run_cli(*args)
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("openllm-hub: error: "), res.stderr
    assert "Traceback" not in res.stderr


def test_debug_shows_traceback() -> None:
    res = run_cli("--debug", "run", "/no/such/model", "-p", "x")
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_run_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "bigram-stories", "-p", "Once", "-n", "8", "--seed", "5", "--temp", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Once") and len(out) > len("Once")
    assert main(["info", "bigram-stories", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "bigram" and info["engine"] == "numpy"


def test_models_add_list_remove(tmp_path: Path, bigram_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "add", "mine", str(bigram_path)]) == 0
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.split("\n", 1)[1])}
    assert rows["mine"]["source"] == "user" and rows["bigram-stories"]["source"] == "built-in"
    assert main(["run", "mine", "-p", "A", "-n", "3"]) == 0
    assert main(["models", "add", "mine", str(bigram_path)]) == 1  # taken
    assert main(["models", "remove", "mine"]) == 0
    assert main(["run", "mine", "-p", "A"]) == 1


def test_chat_reads_turns_from_stdin() -> None:
    res = run_cli("chat", "bigram-stories", "-n", "20", "--temp", "0", stdin="Hello\n/reset\nAgain\n")
    assert res.returncode == 0, res.stderr
    assert len([ln for ln in res.stdout.splitlines() if ln.strip()]) >= 1


def test_devices_and_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--json"]) == 0
    dev = json.loads(capsys.readouterr().out)
    assert dev["cpu_threads"] >= 1 and "engines" in dev
    assert main(["plugins", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert {"bigram", "llama"} <= names


def test_models_add_never_shadows_a_built_in_name(bigram_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "add", "bigram-stories", str(bigram_path)]) == 1
    err = capsys.readouterr().err
    assert "built-in model name" in err and err.count("\n") == 1
    # an entry written by hand (or by an older version) is listed as hidden, and the built-in wins
    from openllm_hub.api import resolve_source
    from openllm_hub.core.paths import config_dir

    names = config_dir() / "models.json"
    saved = names.read_text() if names.exists() else None
    names.parent.mkdir(parents=True, exist_ok=True)
    names.write_text(json.dumps({"bigram-stories": {"path": str(Path(__file__))}}))
    try:
        assert resolve_source("bigram-stories").path == bigram_path
        assert main(["models", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        user = [r for r in rows if r["name"] == "bigram-stories" and r["source"] != "built-in"]
        assert len(user) == 1 and "hidden by the built-in name" in user[0]["source"]
    finally:
        if saved is None:
            names.unlink()
        else:
            names.write_text(saved)


def test_device_error_names_flags_not_storage_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "bigram-stories", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "fix: use --device cpu (dtype fp32)" in err, err


@pytest.mark.parametrize("args", [
    ("run", "bigram-stories", "-p", "hi", "-n", "-5"),
    ("run", "bigram-stories", "-p", "hi", "--temp", "nan"),
    ("run", "bigram-stories", "-p", "hi", "-t", "100000"),
    ("chat", "bigram-stories", "--temp", "nan"),
    ("chat", "bigram-stories", "--top-p", "2"),
])
def test_bad_numbers_refused_before_anything_is_printed(args: tuple[str, ...]) -> None:
    res = run_cli(*args, stdin="")  # chat: no turn at all, the parameters are still checked
    assert res.returncode == 1 and res.stdout == "", res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("openllm-hub: error: "), res.stderr
