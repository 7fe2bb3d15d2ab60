"""``openllm-hub tiny FAMILY OUT``: a small random checkpoint of every family in each of its real
layouts, which ``info`` describes and ``run`` runs; written atomically, refused over an existing
OUT unless ``--force``; ``tiny --list`` says what can be written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openllm_hub.cli import main
from openllm_hub.core.registry import get_registry
from openllm_hub.core.tiny import tiny_families

CASES = [(fam.name, fmt) for fam, builder in tiny_families() for fmt in builder.formats]
#: Load options a format needs to run (a Meta checkpoint runs only after conversion, on request).
RUN_OPTIONS = {("llama", "meta"): ["-o", "convert=true"]}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def test_every_family_writes_tiny_checkpoints() -> None:
    assert {f.name for f in get_registry().families.values()} == {f.name for f, _ in tiny_families()}
    assert {"bigram", "chatglm", "glm130b", "llama", "rwkv"} <= {name for name, _ in CASES}
    formats = {name: [fmt for n, fmt in CASES if n == name] for name, _ in CASES}
    assert set(formats["llama"]) == {"hf", "meta", "gguf"}
    assert set(formats["chatglm"]) == {"chatglm", "chatglm2", "chatglm3"}
    assert set(formats["rwkv"]) == {"rwkv4", "rwkv5", "rwkv6", "rwkv7"}


@pytest.mark.parametrize(("family", "fmt"), CASES)
def test_tiny_then_info_and_run(family: str, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"tiny-{fmt}"
    assert main(["tiny", family, str(out), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (tiny random {family}") and f"openllm-hub run {out}" in printed
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind
    opts = RUN_OPTIONS.get((family, fmt), [])

    assert main(["info", str(out), "--detect-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == family
    assert main(["info", str(out), "--device", "cpu", "--json", *opts]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == family

    assert main(["run", str(out), "-p", "Once upon a time", "-n", "4", "--temp", "0", "--device", "cpu",
                 "--no-echo", "-v", *opts]) == 0
    captured = capsys.readouterr()
    generated = re.search(r"(\d+) generated", captured.err)
    assert generated is not None and int(generated.group(1)) >= 1, captured.err
    assert captured.out.strip(), captured


def test_default_format_and_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny", "bigram", str(tmp_path / "b")]) == 0
    assert "tiny random bigram," in capsys.readouterr().out
    assert main(["tiny", "raven", str(tmp_path / "r"), "-o", "layers=1"]) == 0  # an alias of rwkv
    assert "tiny random rwkv rwkv7" in capsys.readouterr().out


def test_same_command_same_weights_and_seed_changes_them(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(["tiny", "bigram", str(tmp_path / name), "-o", f"seed={seed}", "-o", "stories=20"]) == 0
    a, b, c = (load_file(str(tmp_path / n))["logp"] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_existing_out_is_refused_unless_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    out.write_text("keep me")
    assert main(["tiny", "bigram", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["tiny", "bigram", str(out), "--force"]) == 0
    assert out.read_bytes() != b"keep me"
    assert main(["info", str(out), "--detect-only"]) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["tiny", "bigram"], "tiny needs a family and an output path"),
    (["tiny", "no-such-family", "{out}"], "no installed plugin provides family"),
    (["tiny", "llama", "{out}", "--format", "ggml"], "use one of: gguf, hf, meta"),
    (["tiny", "llama", "{out}", "-o", "size=7b"], "valid options: layers, outtype, seed, shards"),
    (["tiny", "llama", "{out}", "-o", "outtype=q4_0"], "option outtype must be one of"),
    (["tiny", "chatglm", "{out}", "-o", "layers=0"], "option layers must be an integer >= 1"),
    (["tiny", "rwkv", "{out}", "-o", "seed=abc"], "option seed must be an integer"),
])
def test_bad_input_writes_nothing(args: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([a.format(out=out) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny", "--list"]) == 0
    text = capsys.readouterr().out
    assert "llama     --format gguf (default), hf, meta" in text and "-o tp=" in text
    assert main(["tiny", "--list", "--json"]) == 0
    rows = {r["family"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["glm130b"]["formats"] == ["sat"] and "tp" in rows["glm130b"]["options"]
    assert rows["rwkv"]["default"] == rows["rwkv"]["formats"][0]
