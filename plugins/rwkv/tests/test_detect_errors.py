"""Detection from tensor names and shapes (read without torch), and clear errors for bad input."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from openllm_hub_rwkv.checkpoint import read_pth_index
from openllm_hub_rwkv.spec import analyse, package_order, package_reading
from openllm_hub_rwkv.tiny import build_checkpoint, build_state_dict

import openllm_hub
from openllm_hub.errors import (
    CorruptFileError,
    IncompatibleDeviceError,
    InvalidParameterError,
    NotFoundError,
    UnknownFormatError,
    UnsafeCheckpointError,
)


@pytest.mark.parametrize(("version", "heads"), [("4", 1), ("5.2", 4), ("6", 4), ("7", 4)])
def test_detect_versions(version: str, heads: int, ckpt: dict[str, Path]) -> None:
    fam, det = openllm_hub.detect(ckpt[version])
    assert fam.name == "rwkv" and det.format == "rwkv-pth" and det.confidence >= 0.9
    assert det.details["version"] == version and det.details["n_layer"] == 2
    arch = analyse(read_pth_index(ckpt[version]).tensors)
    assert (arch.version, arch.n_embd, arch.n_head) == (version, 64, heads)


@pytest.mark.parametrize("version", ["5", "5.1"])
def test_detect_older_v5(version: str, tmp_path: Path) -> None:
    """RWKV-5.0 (ln_x, no gate) and 5.1 (gate, 1-D time_decay, time_first) by name and shape."""
    sd = build_state_dict("5.2", seed=4)
    h = sd["blocks.0.att.time_decay"].shape[0]
    out = {}
    for k, v in sd.items():
        if version == "5" and ("gate" in k or "time_mix_g" in k):
            continue
        if k.endswith("att.time_decay"):
            v = v[:, 0].clone()  # one decay per head
        if k.endswith("att.time_faaaa"):
            k, v = k.replace("time_faaaa", "time_first"), v[:, 0].clone()
        out[k] = v
    torch.save(out, tmp_path / "m.pth")
    arch = analyse(read_pth_index(tmp_path / "m.pth").tensors)
    assert (arch.version, arch.n_head) == (version, h)


def test_index_matches_torch_load_zip_and_legacy(ckpt: dict[str, Path], tmp_path: Path) -> None:
    sd = torch.load(ckpt["6"], weights_only=True)
    legacy = tmp_path / "legacy.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, legacy, _use_new_zipfile_serialization=False)
    for path, dtype in ((ckpt["6"], "float32"), (legacy, "bfloat16")):
        index = read_pth_index(path).tensors
        assert list(index) == list(sd)
        assert all(index[k].shape == tuple(v.shape) and index[k].dtype == dtype for k, v in sd.items())
    _, det = openllm_hub.detect(legacy)
    assert det.details["version"] == "6"


def test_detection_imports_no_torch(ckpt: dict[str, Path]) -> None:
    code = ("import sys, openllm_hub; f, d = openllm_hub.detect(sys.argv[1]); "
            "assert f.name == 'rwkv' and d.details['version'] == '7', d; "
            "assert 'torch' not in sys.modules and 'rwkv' not in sys.modules, 'engine imported'")
    subprocess.run([sys.executable, "-c", code, str(ckpt["7"])], check=True, timeout=120)


class _Boom:
    """Unpickling this would create a folder: the proof that code from the file ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.mkdir, (str(self.target),))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    """A .pth whose pickle calls something is refused by name; nothing from it runs."""
    import zipfile

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"emb.weight": _Boom(tmp_path / "pwned")}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"references (posix|os)\.mkdir"):
        read_pth_index(path)
    with pytest.raises(UnknownFormatError):  # detect() does not claim it
        openllm_hub.detect(path)
    with pytest.raises(UnknownFormatError, match=r"unreadable: the checkpoint's pickle references (posix|os)\.mkdir"):
        openllm_hub.load(path, family="rwkv", device="cpu")  # nor load(), and the error says why
    assert not (tmp_path / "pwned").exists()


def _broken(tmp_path: Path, version: str, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
            name: str = "broken.pth") -> Path:
    return build_checkpoint(tmp_path / name, version, transform=edit, vocab_size=512)  # type: ignore[arg-type]


def test_missing_tensors_named(tmp_path: Path) -> None:
    path = _broken(tmp_path, "6", lambda sd: {k: v for k, v in sd.items() if k != "blocks.1.att.gate.weight"})
    with pytest.raises(CorruptFileError, match=r"RWKV-6 checkpoint is missing 1 tensor\(s\): blocks.1.att.gate.weight"):
        openllm_hub.load(path, device="cpu", tokenizer="world")
    gap = _broken(tmp_path, "4", lambda sd: {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
                  | {"blocks.2.ln1.weight": sd["blocks.0.ln1.weight"]}, "gap.pth")
    with pytest.raises(CorruptFileError, match=r"no tensors for block\(s\) \[1\]"):
        openllm_hub.load(gap, device="cpu")


def test_unknown_version(tmp_path: Path) -> None:
    def strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.replace("time_mix_", "time_blend_"): v for k, v in sd.items()}

    path = _broken(tmp_path, "4", strip)
    fam, det = openllm_hub.detect(path)
    assert fam.name == "rwkv" and det.confidence < 0.9 and "unknown RWKV layout" in det.reason
    with pytest.raises(UnknownFormatError, match="unknown RWKV layout"):
        openllm_hub.load(path, device="cpu")
    deep = _broken(tmp_path, "7", lambda sd: sd | {"blocks.0.ffn.s_emb.weight": torch.zeros(512, 32)}, "de.pth")
    with pytest.raises(UnknownFormatError, match="DeepEmbed"):
        openllm_hub.load(deep, device="cpu")


def test_pre_converted_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "converted.pth"
    sd: dict[str, Any] = dict(build_state_dict("4", vocab_size=512))
    sd["_strategy"] = "cuda fp16i8"
    torch.save(sd, path)
    with pytest.raises(UnknownFormatError, match="pre-converted"):
        openllm_hub.load(path, device="cpu")


def test_not_rwkv_is_not_claimed(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model.layers.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UnknownFormatError):
        openllm_hub.detect(path, family="rwkv")


def test_tokenizer_mismatch(ckpt: dict[str, Path], bpe_json: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="65530 ids but the model's vocabulary has 512"):
        openllm_hub.load(ckpt["4"], device="cpu", tokenizer="world")
    with pytest.raises(InvalidParameterError, match="has 512 ids but the model's vocabulary has 65536"):
        openllm_hub.load(ckpt["7"], device="cpu", tokenizer=str(bpe_json))
    lonely = tmp_path / "alone.pth"
    lonely.write_bytes(ckpt["4"].read_bytes())
    with pytest.raises(NotFoundError, match="no tokenizer found"):
        openllm_hub.load(lonely, device="cpu")


@pytest.mark.parametrize(("strategy", "message"), [
    ("gpu fp16", "cannot parse strategy part"),
    ("cuda fp8", "cannot parse strategy part"),
    ("cuda fp16 ->", "empty"),
    ("cuda fp16i4", "only i8"),
    ("cpu fp16", "fp16 does not run on the CPU"),
    ("cpu fp32 *4+", "streaming layers"),
    ("cuda fp16 *2+ -> cuda fp16 *2+", "only one part may stream"),
    ("cuda fp16 *0 -> cpu fp32", "holds no layer"),
])
def test_unparsable_strategies(strategy: str, message: str, ckpt: dict[str, Path]) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        openllm_hub.load(ckpt["5.2"], device="cpu", strategy=strategy)


def test_strategy_conflicts(ckpt: dict[str, Path]) -> None:
    with pytest.raises(InvalidParameterError, match="RWKV-7 runs on one device"):
        openllm_hub.load(ckpt["7"], device="cpu", strategy="cpu fp32 *1 -> cpu bf16")
    with pytest.raises(InvalidParameterError, match="RWKV-7 runs on one device"):
        openllm_hub.load(ckpt["7"], device="cpu", int8=True)
    with pytest.raises(InvalidParameterError, match="already says"):
        openllm_hub.load(ckpt["5.2"], device="cpu", strategy="cpu fp32", int8=True)
    with pytest.raises(IncompatibleDeviceError, match="CUDA"):
        openllm_hub.load(ckpt["5.2"], device="cpu", strategy="cuda fp16")
    with pytest.raises(InvalidParameterError, match="transformers runs RWKV-4 only"):
        openllm_hub.load(ckpt["5.2"], device="cpu", engine="transformers")
    with pytest.raises(InvalidParameterError, match="strategyy: Extra inputs are not permitted"):
        openllm_hub.load(ckpt["5.2"], device="cpu", strategyy="cpu fp32")


def test_key_order_replay() -> None:
    """The replay of the package's walk reproduces its quirk, and the reorder cures it."""
    from openllm_hub_rwkv.checkpoint import TensorMeta

    sd = build_state_dict("5.2", n_layer=1)
    shapes = {k: TensorMeta(tuple(v.shape), "float32") for k, v in sd.items()}
    assert package_reading(list(sd), shapes) == (5.1, None)
    assert package_reading(package_order(list(sd)), shapes) == (5.2, 4)
    sd2 = build_state_dict("5.2", n_layer=2)
    shapes2 = {k: TensorMeta(tuple(v.shape), "float32") for k, v in sd2.items()}
    assert package_reading(list(sd2), shapes2) == (5.2, 4)  # block 1 sets it right with 2+ layers
