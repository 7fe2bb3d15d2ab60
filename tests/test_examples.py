"""The runnable examples run: examples/demo.py is what `make demo` shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_streams_text(tmp_path: Path) -> None:
    env = {**os.environ, "OPENLLM_HUB_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "[demo] loading" in out and "Once upon a time" in out and "从前" in out
    # each prompt is followed by generated text and a token count
    assert out.count("tokens at") == 2
    body = out.split("max_new_tokens=64, seed=42):", 1)[1].split("[demo]", 1)[0]
    assert len(body.strip()) > len("Once upon a time") + 20
