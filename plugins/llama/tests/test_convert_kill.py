"""A conversion killed mid-write leaves nothing at the destination.

The conversion runs ``openllm_hub.convert`` in a subprocess and gets SIGKILL while the
temporary sibling (``.openllm-hub-tmp-<pid>@...``) is being written. A killed process cannot
delete its temporary file; the promises tested are that the destination path itself never
holds a partial file, and that a rerun removes the leftover and succeeds (every writer removes
the temporaries of dead processes in its folder; tests/bad_input/test_kill.py tries every writer).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openllm_hub
from openllm_hub.core.io import TMP_MARK

SCRIPT = """
import sys, openllm_hub
openllm_hub.convert(sys.argv[1], sys.argv[2], to="gguf", outtype="q8_0", verify=False, progress=False)
"""


def test_killed_conversion_leaves_no_destination(tmp_path: Path, tiny_hf_factory: Callable[..., Path]) -> None:
    # big enough (32000 x 256 embeddings, q8_0-quantized in numpy) that writing takes ~1 s
    src = tiny_hf_factory(hidden_size=256, intermediate_size=704, num_heads=8)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / "model.gguf"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(src), str(dst)], env={**os.environ})
    try:
        deadline = time.monotonic() + 120
        temp: Path | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [p for p in out_dir.iterdir() if p.name.startswith(TMP_MARK)]
            if temps and temps[0].stat().st_size > 2_000_000:  # past the header, into tensor data
                temp = temps[0]
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the conversion finished before it could be killed"
        assert temp is not None, "no temporary output appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists()
    assert temp.name.endswith(dst.name)  # the partial data sat in a sibling, never at dst
    # a rerun is not blocked by the leftover temporary sibling
    openllm_hub.convert(src, dst, to="gguf", outtype="f16", verify=False)
    assert dst.read_bytes()[:4] == b"GGUF"
    assert not [p for p in out_dir.iterdir() if p.name.startswith(TMP_MARK)]  # the leftover is gone
