"""Temporaries: named after their process and destination, removed once their process is gone
(never while it runs), by any writer into the folder and by ``openllm-hub cache clean``; and the
destination checks that run before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openllm_hub.api import clean_cache
from openllm_hub.cli import main
from openllm_hub.core.convert import Converter, ConverterOptions
from openllm_hub.core.io import (
    NAME_MAX,
    TMP_MARK,
    atomic_output,
    check_destination,
    remove_stale_temporaries,
    scratch_dir,
    stale_temporaries,
    temporary_path,
)
from openllm_hub.errors import InvalidParameterError, NotFoundError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _as_if_made_by(path: Path, pid: int) -> Path:
    """``path`` (a fresh temporary name of ours) renamed as if process ``pid`` had made it."""
    head, rest = path.name[len(TMP_MARK):].split("@", 1)
    assert int(head) == os.getpid()
    return path.with_name(f"{TMP_MARK}{pid}@{rest}")


def test_names_say_which_process_and_destination(tmp_path: Path) -> None:
    t = temporary_path(tmp_path / "model.gguf")
    assert t.parent == tmp_path and t.name.startswith(f"{TMP_MARK}{os.getpid()}@") and t.name.endswith("-model.gguf")
    long = temporary_path(tmp_path / ("y" * 250))
    assert len(long.name.encode()) == NAME_MAX
    long.write_text("fits")  # the file system takes it


def test_only_dead_processes_temporaries_are_removed(tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    dead = _as_if_made_by(temporary_path(dst), _dead_pid())
    dead.write_bytes(b"x" * 100)
    dead_dir = _as_if_made_by(temporary_path(dst, kind="scratch"), _dead_pid())
    (dead_dir / "sub").mkdir(parents=True)
    (dead_dir / "sub" / "f").write_bytes(b"y" * 50)
    mine = temporary_path(dst)
    mine.write_bytes(b"live")
    other_host = tmp_path / (TMP_MARK + f"{_dead_pid()}@abcdef-12345678-out.gguf")
    if other_host.name.split("@")[1][:6] == mine.name.split("@")[1][:6]:  # pragma: no cover - hash collision
        other_host = other_host.with_name(other_host.name.replace("@abcdef", "@abcde0"))
    other_host.write_text("another machine's")
    legacy = tmp_path / f"{TMP_MARK}1a2b3c4d-out.gguf"  # no process in the name: never judged
    legacy.write_text("old style")
    assert sorted(stale_temporaries(tmp_path)) == sorted([dead, dead_dir])
    assert remove_stale_temporaries(tmp_path) == 150
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_host.name, legacy.name])


@pytest.mark.parametrize("writer", ["check_destination", "atomic_output", "scratch_dir"])
def test_every_writer_cleans_its_folder(tmp_path: Path, writer: str) -> None:
    left = _as_if_made_by(temporary_path(tmp_path / "a.bin"), _dead_pid())
    left.write_text("half")
    dst = tmp_path / "b.bin"
    if writer == "check_destination":
        check_destination(dst)
    elif writer == "atomic_output":
        with atomic_output(dst) as tmp:
            tmp.write_text("whole")
    else:
        with scratch_dir(dst) as scratch:
            assert scratch.is_dir()
    assert not left.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]


def test_a_replaced_output_half_way_is_put_back(tmp_path: Path) -> None:
    dst = tmp_path / "model"
    old = _as_if_made_by(temporary_path(dst, kind="old"), _dead_pid())
    old.mkdir()
    (old / "weights").write_text("the old output")
    remove_stale_temporaries(tmp_path)
    assert (dst / "weights").read_text() == "the old output" and not old.exists()


def test_forced_folder_replacement_leaves_nothing(tmp_path: Path) -> None:
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "old").write_text("1")
    with atomic_output(dst, force=True, is_dir=True) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in dst.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_destination_folder_checked_before_work(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="the output's folder does not exist"):
        check_destination(tmp_path / "missing" / "x.gguf")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidParameterError, match="is not a folder"):
        check_destination(tmp_path / "file" / "x.gguf")
    with pytest.raises(InvalidParameterError, match="longer than 255 bytes"):
        check_destination(tmp_path / ("z" * 300))
    ro = Path("/sys") if os.geteuid() == 0 else tmp_path / "ro"
    if ro != Path("/sys"):
        ro.mkdir()
        ro.chmod(0o500)
    try:
        with pytest.raises(InvalidParameterError, match="cannot write into the output's folder"):
            check_destination(ro / "x.gguf")
    finally:
        if ro != Path("/sys"):
            ro.chmod(0o700)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]


def test_cache_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "llama-gguf"
    folder.mkdir(parents=True)
    left = _as_if_made_by(temporary_path(folder / "m-f16.gguf"), _dead_pid())
    left.write_bytes(b"z" * 1000)
    live = temporary_path(folder / "n-f16.gguf")
    live.write_bytes(b"live")
    assert main(["cache", "clean"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not left.exists() and live.exists()
    assert clean_cache() == (tmp_path / "cache", 0)
    assert main(["cache", "dir"]) == 0 and capsys.readouterr().out.strip() == str(tmp_path / "cache")


def test_converter_options_are_declared() -> None:
    plain = Converter("a", "b", lambda req: None)
    with pytest.raises(InvalidParameterError, match=r"bogus: Extra inputs.*takes no options"):
        plain.validate_options({"bogus": 1})
    assert plain.validate_options(None) == {}

    class Opts(ConverterOptions):
        shards: int | None = None
        name: str | None = None

    conv = Converter("a", "b", lambda req: None, options=Opts)
    assert conv.validate_options({"shards": "2", "name": 7}) == {"shards": 2, "name": "7"}
    assert conv.validate_options({"shards": None}) == {}
    with pytest.raises(InvalidParameterError, match=r"shard: Extra inputs.*its options: shards, name"):
        conv.validate_options({"shard": 2})
