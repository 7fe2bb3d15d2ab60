"""kill -9 trials: every writer, killed after writing began, leaves nothing the next run does not remove.

Each trial starts the real CLI (``python -m openllm_hub.cli ...``) in a subprocess, watches the
destination's folder (or the cache folder) until the writer's temporary has appeared, or has
grown past a fraction of the finished output's size, and sends SIGKILL. Then:

* nothing is at the destination (with ``--force``: the old output is intact, byte for byte);
* the killed writer's ``.openllm-hub-tmp-<pid>@...`` temporary is there (proof that the kill
  hit the writer mid-way: a killed process cannot clean up);
* a rerun of a writer on that destination (the same one, or another) removes it and succeeds,
  and no temporary is left anywhere (the folder, the cache folder).

Models are tiny and built once per module; sizes are chosen so that writing lasts long enough
to be interrupted (tens of MB), and a writer that finishes before its kill point is simply run
again (bounded), so no trial depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import openllm_hub
from openllm_hub.core.io import TMP_MARK, stale_temporaries

#: SIGKILL points: as soon as the temporary exists, and once it holds this share of the output.
POINTS = (0.0, 0.5)


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:  # vanished while we looked
        return 0


def temporaries(root: Path) -> list[Path]:
    """Every temporary under ``root`` (any depth)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):  # os.walk ignores entries that vanish meanwhile
        found += [Path(folder) / n for n in (*dirs, *files) if n.startswith(TMP_MARK)]
    return found


@dataclass
class Env:
    root: Path
    cache: Path
    config: Path

    def vars(self) -> dict[str, str]:
        return {**os.environ, "OPENLLM_HUB_CACHE_DIR": str(self.cache), "OPENLLM_HUB_CONFIG_DIR": str(self.config),
                "OPENLLM_HUB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def kill_writer(env: Env, args: Sequence[str], watch: Path, threshold: int, *,
                cleanup: Callable[[], None] = lambda: None, tries: int = 3) -> list[Path]:
    """Run ``openllm-hub ARGS`` and SIGKILL it once a temporary in ``watch`` holds ``threshold``
    bytes. Returns the temporaries it left. A run that ends before its kill point is cleaned up
    (``cleanup``) and started again, at most ``tries`` times."""
    for _ in range(tries):
        proc = subprocess.Popen([sys.executable, "-m", "openllm_hub.cli", *args], env=env.vars(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        killed = False
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                temps = [p for p in temporaries(watch) if (p.parent == watch or p.parent.parent == watch)
                         and ".probe-" not in p.name]  # the writability probe lives for microseconds
                if temps and sum(_size(t) for t in temps) >= threshold:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
        if killed and proc.returncode == -signal.SIGKILL:
            left = temporaries(watch)
            assert left, "a killed writer left no temporary: the kill came too late to test anything"
            assert all(p in stale_temporaries(p.parent) for p in left if p.parent == watch), left
            return left
        assert proc.returncode in (0, None), f"the writer failed before its kill point: {err.decode()[-2000:]}"
        cleanup()
    pytest.fail(f"the writer always finished before its kill point ({threshold} bytes)")


# ---- tiny models, built once per module ----------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("kill")
    e = Env(root, root / "cache", root / "config")
    e.config.mkdir()
    old = {k: os.environ.get(k) for k in ("OPENLLM_HUB_CACHE_DIR", "OPENLLM_HUB_CONFIG_DIR")}
    os.environ["OPENLLM_HUB_CACHE_DIR"] = str(e.cache)
    yield e
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _same_config(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLLM_HUB_CONFIG_DIR", str(env.config))
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(env.cache))


@pytest.fixture(scope="module")
def hf(env: Env) -> Path:
    """A LLaMA HF folder of ~65 MB (32000 x 256 embeddings and head)."""
    from openllm_hub_llama.tiny import make_tiny_hf

    return make_tiny_hf(env.root / "models" / "hf", hidden_size=256, intermediate_size=704, num_heads=8)


@pytest.fixture(scope="module")
def gguf(env: Env, hf: Path) -> Path:
    return openllm_hub.convert(hf, env.root / "models" / "f32.gguf", to="gguf", outtype="f32").path


@pytest.fixture(scope="module")
def meta(env: Env, hf: Path) -> Path:
    return openllm_hub.convert(hf, env.root / "models" / "meta", to="meta").path


@pytest.fixture(scope="module")
def adapter(env: Env, hf: Path) -> Path:
    """A PEFT LoRA adapter (rank 4 on every q_proj/v_proj) written the way PEFT saves one."""
    import torch
    from safetensors.torch import save_file

    folder = env.root / "models" / "adapter"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(4, 256, generator=g) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn(256, 4, generator=g) * 0.1
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "fan_in_fan_out": False, "task_type": "CAUSAL_LM", "base_model_name_or_path": str(hf)}))
    return folder


@pytest.fixture(scope="module")
def sat(env: Env) -> Path:
    """A GLM-130B-shaped SAT checkpoint of ~40 MB in 2 shards."""
    from openllm_hub_glm130b.tiny import build_tiny

    path, _ = build_tiny(env.root / "models" / "sat", tp=2, layers=6, hidden=512, heads=8, inner=1024)
    return path


@pytest.fixture(scope="module")
def rwkv(env: Env) -> Path:
    """An RWKV-4 .pth (World vocabulary, 65536 x 128 embeddings and head, ~70 MB)."""
    from openllm_hub_rwkv.tiny import build_checkpoint

    return build_checkpoint(env.root / "models" / "RWKV-4-tiny.pth", "4", n_layer=2, n_embd=128)


def _fresh(env: Env, name: str) -> Path:
    out = env.root / "out" / name
    out.mkdir(parents=True, exist_ok=False)
    return out


def _clear(path: Path) -> Callable[[], None]:
    def clear() -> None:
        import shutil

        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    return clear


def _no_temporaries(*roots: Path) -> None:
    left = [p for r in roots for p in temporaries(r)]
    assert not left, f"temporaries left behind: {left}"


# ---- the trials ------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", POINTS)
def test_convert_hf_to_gguf(env: Env, hf: Path, gguf: Path, point: float) -> None:
    out = _fresh(env, f"hf-gguf-{point}")
    dst = out / "model.gguf"
    kill_writer(env, ["convert", str(hf), str(dst), "--to", "gguf", "--outtype", "f32"], out,
                int(point * gguf.stat().st_size), cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.convert(hf, dst, to="gguf", outtype="f16")  # the rerun removes the leftover and succeeds
    assert dst.read_bytes()[:4] == b"GGUF"
    _no_temporaries(out, env.cache)


def test_convert_with_force_keeps_the_old_output(env: Env, hf: Path, gguf: Path) -> None:
    out = _fresh(env, "force")
    dst = out / "model.gguf"
    dst.write_bytes(b"the old output")
    def restore() -> None:
        dst.write_bytes(b"the old output")

    kill_writer(env, ["convert", str(hf), str(dst), "--to", "gguf", "--outtype", "f32", "--force"], out,
                gguf.stat().st_size // 2, cleanup=restore)
    assert dst.read_bytes() == b"the old output"
    openllm_hub.quantize(gguf, out / "other.gguf", "q8_0")  # another writer into the folder cleans it
    _no_temporaries(out)
    assert dst.read_bytes() == b"the old output"


@pytest.mark.parametrize("point", POINTS)
def test_convert_meta_to_hf(env: Env, meta: Path, hf: Path, point: float) -> None:
    out = _fresh(env, f"meta-hf-{point}")
    dst = out / "hf"
    kill_writer(env, ["convert", str(meta), str(dst), "--to", "hf", "--outtype", "f32"], out,
                int(point * _size(hf)), cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.convert(meta, dst, to="hf", outtype="f32")
    assert (dst / "config.json").is_file()
    _no_temporaries(out, env.cache)


@pytest.mark.parametrize("point", POINTS)
def test_quantize_gguf(env: Env, gguf: Path, point: float) -> None:
    out = _fresh(env, f"quantize-{point}")
    dst = out / "q8_0.gguf"
    kill_writer(env, ["quantize", str(gguf), str(dst), "q8_0"], out, int(point * gguf.stat().st_size / 4),
                cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.quantize(gguf, dst, "q8_0")
    _no_temporaries(out)


@pytest.mark.parametrize("point", POINTS)
def test_merge_lora(env: Env, hf: Path, adapter: Path, point: float) -> None:
    out = _fresh(env, f"merge-{point}")
    dst = out / "merged"
    kill_writer(env, ["merge-lora", str(hf), str(adapter), "-o", str(dst)], out, int(point * _size(hf)),
                cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.merge_lora(hf, [adapter], dst)
    assert (dst / "config.json").is_file()
    _no_temporaries(out)


@pytest.mark.parametrize("point", POINTS)
def test_gguf_cache_of_an_hf_folder(env: Env, hf: Path, gguf: Path, point: float) -> None:
    folder = env.cache / "llama-gguf"
    _clear(folder)()
    folder.mkdir(parents=True)
    kill_writer(env, ["info", str(hf), "-o", "engine=llama.cpp", "--device", "cpu"], folder,
                int(point * gguf.stat().st_size / 2), cleanup=_clear(folder))
    assert not [p for p in folder.glob("*.gguf") if not p.name.startswith(TMP_MARK)]
    with openllm_hub.load(hf, engine="llama.cpp", device="cpu") as model:  # cache use removes the leftover
        assert model.info.family == "llama"
    _no_temporaries(env.cache)


def test_cache_clean_command(env: Env, hf: Path, gguf: Path) -> None:
    folder = env.cache / "llama-gguf"
    _clear(folder)()
    folder.mkdir(parents=True)
    kill_writer(env, ["info", str(hf), "-o", "engine=llama.cpp", "--device", "cpu"], folder, 0,
                cleanup=_clear(folder))
    done = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "cache", "clean"], env=env.vars(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "removed" in done.stdout, done.stderr
    _no_temporaries(env.cache)


def test_models_add(env: Env, hf: Path) -> None:
    """``models add`` writes a few hundred bytes: the kill lands in a stand-in process that
    holds the same kind of temporary of models.json open mid-write, as a killed ``models add``
    would leave it."""
    names = env.config / "models.json"
    script = ("import sys, time\nfrom openllm_hub.core.io import atomic_output\n"
              "with atomic_output(sys.argv[1], force=True) as tmp:\n"
              "    tmp.write_text('{\"half')\n    print('ready', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(names)], env=env.vars(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        assert temporaries(env.config)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not names.exists()
    done = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "models", "add", "tiny", str(hf)],
                          env=env.vars(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tiny" in json.loads(names.read_text())
    _no_temporaries(env.config)


@pytest.mark.parametrize("point", POINTS)
def test_glm130b_repartition(env: Env, sat: Path, point: float) -> None:
    out = _fresh(env, f"sat-{point}")
    dst = out / "tp1"
    kill_writer(env, ["glm130b-repartition", str(sat), str(dst), "--tp", "1"], out, int(point * _size(sat)),
                cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.convert(sat, dst, to="sat", options={"tp": 1})
    assert (dst / "latest").is_file()
    _no_temporaries(out)


@pytest.mark.parametrize("point", POINTS)
def test_glm130b_quantize(env: Env, sat: Path, point: float) -> None:
    out = _fresh(env, f"sat-q-{point}")
    dst = out / "int8"
    kill_writer(env, ["quantize", str(sat), str(dst), "int8"], out, int(point * _size(sat) / 4), cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.quantize(sat, dst, "int8")
    _no_temporaries(out)


@pytest.mark.parametrize("point", POINTS)
def test_rwkv_convert(env: Env, rwkv: Path, point: float) -> None:
    out = _fresh(env, f"rwkv-{point}")
    dst = out / "hf"
    kill_writer(env, ["convert", str(rwkv), str(dst), "--to", "hf"], out, int(point * rwkv.stat().st_size),
                cleanup=_clear(dst))
    assert not dst.exists()
    openllm_hub.convert(rwkv, dst, to="hf")
    assert (dst / "model.safetensors").is_file()
    _no_temporaries(out)


def test_a_live_writer_s_temporary_is_never_removed(env: Env, tmp_path: Path) -> None:
    """Another process writing into the same folder keeps its temporary while a rerun cleans up."""
    dst = tmp_path / "out.bin"
    script = ("import sys, time\nfrom openllm_hub.core.io import atomic_output\n"
              "with atomic_output(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'x' * 1000)\n    print('ready', flush=True)\n    sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(dst)], env=env.vars(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        live = temporaries(tmp_path)
        assert len(live) == 1 and str(proc.pid) in live[0].name
        from openllm_hub.core.io import atomic_output

        with atomic_output(tmp_path / "other.bin") as tmp:
            tmp.write_bytes(b"y")
        assert live[0].exists(), "a live writer's temporary was removed"
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert dst.read_bytes() == b"x" * 1000
    _no_temporaries(tmp_path)
