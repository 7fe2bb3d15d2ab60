"""A checkpoint's tensor names and shapes are checked against the network's own layout before the
network is built: a missing, unexpected or mis-shaped tensor (safetensors or ``.bin``, float or
INT8/INT4) fails from the weight files' headers, naming the tensor, the file and the fix, without
allocating the network or reading weights. The layout is the network's (one source for the check
and for ``load_tensors``), tied output layers and recomputed buffers included."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from openllm_hub_chatglm import engine_torch
from openllm_hub_chatglm.checkpoint import iter_tensors, stored_tensors
from openllm_hub_chatglm.network import QuantPlan, build_network, checkpoint_layout
from openllm_hub_chatglm.network.common import IGNORED_SUFFIXES
from openllm_hub_chatglm.spec import read_spec

import openllm_hub
from openllm_hub.errors import CorruptFileError

Edit = Callable[[dict[str, torch.Tensor]], object]


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if the loader builds the network (the check must come first)."""

    def refuse(*_: object, **__: object) -> None:
        pytest.fail("the network was built before the checkpoint's tensors were checked")

    monkeypatch.setattr(engine_torch, "build_network", refuse)
    yield


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(path: Path, edit: Edit) -> None:
    """Rewrite one weight file (safetensors or .bin) after ``edit`` changed its state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        sd = dict(load_file(str(path)))
        edit(sd)
        save_file(sd, str(path), metadata={"format": "pt"})
    else:
        sd = torch.load(path, weights_only=True)
        edit(sd)
        torch.save(sd, path)


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.update(changes)
    path.write_text(json.dumps(cfg), encoding="utf-8")


def _stored(folder: Path) -> list[tuple[str, tuple[int, ...], Path]]:
    stored = stored_tensors(folder)
    assert stored is not None
    return stored


def _layer_weight(variant: str) -> str:
    return ("transformer.layers.1.mlp.dense_4h_to_h.weight" if variant == "chatglm"
            else "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight")


SINGLE = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}
CASES = [("chatglm", "bin"), ("chatglm", "safetensors"), ("chatglm2", "safetensors"), ("chatglm3", "bin")]


@pytest.mark.parametrize(("variant", "fmt"), CASES)
def test_missing_unexpected_misshapen_fail_before_the_network_is_built(
        make_ckpt: Callable[..., Path], tmp_path: Path, no_build: None, variant: str, fmt: str) -> None:
    src = make_ckpt(variant, seed=31, fmt=fmt)
    name = _layer_weight(variant)

    missing = _copy(src, tmp_path / "missing")
    _edit_weights(missing / SINGLE[fmt], lambda sd: sd.pop(name))
    with pytest.raises(CorruptFileError, match="lacks 1 tensor") as err:
        openllm_hub.load(missing, device="cpu")
    assert name in err.value.what and err.value.where == str(missing) and "download" in (err.value.fix or "")

    misshapen = _copy(src, tmp_path / "misshapen")
    _edit_weights(misshapen / SINGLE[fmt], lambda sd: sd.__setitem__(name, torch.zeros(3, 5)))
    with pytest.raises(CorruptFileError, match=r"has shape \(3, 5\), expected") as err:
        openllm_hub.load(misshapen, device="cpu")
    assert name in err.value.what and err.value.where == str(misshapen / SINGLE[fmt])
    assert "config.json" in (err.value.fix or "")

    unexpected = _copy(src, tmp_path / "unexpected")
    _edit_weights(unexpected / SINGLE[fmt], lambda sd: sd.__setitem__("transformer.extra.weight", torch.zeros(2)))
    with pytest.raises(CorruptFileError, match=rf"unexpected tensor 'transformer\.extra\.weight' for a {variant} "
                                               r"model of 2 layers") as err:
        openllm_hub.load(unexpected, device="cpu")
    assert err.value.where == str(unexpected / SINGLE[fmt]) and "config.json" in (err.value.fix or "")


def test_sharded_checkpoints_name_the_shard(v1_dir: Path, v2_dir: Path, tmp_path: Path, no_build: None) -> None:
    for src, shard in ((v1_dir, "pytorch_model-00002-of-00002.bin"), (v2_dir, "model-00003-of-00003.safetensors")):
        folder = _copy(src, tmp_path / src.name)
        name = next(n for n, _, file in _stored(folder) if file.name == shard)

        def reshape(sd: dict[str, torch.Tensor], name: str = name) -> None:
            sd[name] = torch.zeros(7)

        _edit_weights(folder / shard, reshape)
        with pytest.raises(CorruptFileError, match=r"has shape \(7,\)") as err:
            openllm_hub.load(folder, device="cpu")
        assert name in err.value.what and err.value.where == str(folder / shard)


def test_config_mismatch_fails_before_the_network_is_built(make_ckpt: Callable[..., Path], tmp_path: Path,
                                                           no_build: None) -> None:
    folder = _copy(make_ckpt("chatglm2", seed=11), tmp_path / "m")
    _edit_config(folder, num_layers=3)  # config claims a layer the weights do not have
    with pytest.raises(CorruptFileError, match=r"lacks \d+ tensor.*layers\.2\."):
        openllm_hub.load(folder, device="cpu")
    _edit_config(folder, num_layers=1)  # the weights hold a layer the config does not have
    with pytest.raises(CorruptFileError, match=r"unexpected tensor 'transformer\.encoder\.layers\.1\."):
        openllm_hub.load(folder, device="cpu")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_checkpoints_are_checked_before_the_network_is_built(
        make_ckpt: Callable[..., Path], tmp_path: Path, scheme: str) -> None:
    quantized = openllm_hub.quantize(make_ckpt("chatglm2", seed=32), tmp_path / scheme, scheme, progress=False)
    bits = int(scheme[3:])
    name = "transformer.encoder.layers.0.self_attention.dense.weight"
    weights = Path(quantized) / "model.safetensors"
    with openllm_hub.load(quantized, device="cpu") as m:  # the good checkpoint passes the check and loads
        assert m.info.quantization == scheme
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_torch, "build_network", lambda *_: pytest.fail("the network was built first"))
        # the stored int8 weight has its own shape (INT4: two values per byte) and a weight_scale
        packed = _copy(Path(quantized), tmp_path / "packed")
        _edit_weights(packed / weights.name,
                      lambda sd: sd.__setitem__(name, torch.zeros(64, 64 * bits // 8 + 2, dtype=torch.int8)))
        with pytest.raises(CorruptFileError, match=rf"has shape \(64, {64 * bits // 8 + 2}\), expected "
                                                   rf"\(64, {64 * bits // 8}\) \(INT{bits}") as err:
            openllm_hub.load(packed, device="cpu")
        assert name in err.value.what and "quantization_bit" in (err.value.fix or "")
        scale = _copy(Path(quantized), tmp_path / "scale")
        _edit_weights(scale / weights.name, lambda sd: sd.pop(name + "_scale"))
        with pytest.raises(CorruptFileError, match=r"lacks 1 tensor.*dense\.weight_scale"):
            openllm_hub.load(scale, device="cpu")
        # a float checkpoint holds no weight_scale
        extra = _copy(make_ckpt("chatglm2", seed=32), tmp_path / "extra")
        _edit_weights(extra / "model.safetensors", lambda sd: sd.__setitem__(name + "_scale", torch.ones(64)))
        with pytest.raises(CorruptFileError, match=r"unexpected tensor .*dense\.weight_scale"):
            openllm_hub.load(extra, device="cpu", quantize=scheme)


def test_tied_output_layers(make_ckpt: Callable[..., Path], tmp_path: Path) -> None:
    v1 = make_ckpt("chatglm", seed=33)
    with openllm_hub.load(v1, device="cpu") as m:
        reference = m.logits([5, 6, 7])
    # ChatGLM-6B's stored lm_head.weight is never read: absent or even of another shape, same model
    for edit in (lambda sd: sd.pop("lm_head.weight"), lambda sd: sd.__setitem__("lm_head.weight", torch.zeros(3))):
        folder = _copy(v1, tmp_path / f"v1-{len(list(tmp_path.iterdir()))}")
        _edit_weights(folder / "model.safetensors", edit)
        with openllm_hub.load(folder, device="cpu") as m:
            assert (m.logits([5, 6, 7]) == reference).all()
    # ... unless config.json unties it: then it is required (checked before the network is built)
    untied = _copy(v1, tmp_path / "untied")
    _edit_weights(untied / "model.safetensors", lambda sd: sd.pop("lm_head.weight"))
    _edit_config(untied, tie_word_embeddings=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_torch, "build_network", lambda *_: pytest.fail("the network was built first"))
        with pytest.raises(CorruptFileError, match=r"lacks 1 tensor.*lm_head\.weight"):
            openllm_hub.load(untied, device="cpu")
    # ChatGLM2 with tie_word_embeddings: the output layer may be absent (the embeddings stand in)
    v2 = _copy(make_ckpt("chatglm2", seed=34), tmp_path / "v2")
    _edit_config(v2, tie_word_embeddings=True)
    _edit_weights(v2 / "model.safetensors", lambda sd: sd.pop("transformer.output_layer.weight"))
    with openllm_hub.load(v2, device="cpu") as m:
        net = m.net  # type: ignore[attr-defined]
        assert net.transformer.output_layer.weight is net.transformer.embedding.word_embeddings.weight


@pytest.mark.parametrize("variant", ["chatglm", "chatglm2", "chatglm3"])
@pytest.mark.parametrize("scheme", [None, "int8", "int4"])
def test_layout_is_the_networks_and_matches_real_checkpoints(make_ckpt: Callable[..., Path], tmp_path: Path,
                                                             variant: str, scheme: str | None) -> None:
    folder = make_ckpt(variant, seed=35)
    if scheme:
        folder = Path(openllm_hub.quantize(folder, tmp_path / scheme, scheme, progress=False))
    spec = read_spec(folder, json.loads((folder / "config.json").read_text(encoding="utf-8")))
    plan = QuantPlan(bits=spec.quantization_bit)
    layout = checkpoint_layout(spec, torch.float32, plan)
    built = build_network(spec, torch.float32, plan, torch.device("cpu"))
    assert layout == built.checkpoint_layout()  # the meta-device network's layout is the real one's
    stored = {n: s for n, s, _ in _stored(folder) if not layout.ignores(n)}
    # every tensor of a complete checkpoint, in its stored shape (ChatGLM-6B's output layer is its embeddings)
    assert stored == {n: s for n, s in layout.shapes.items() if n not in layout.skipped}
    assert all(n.endswith(IGNORED_SUFFIXES) or n in layout.skipped for n, _, _ in _stored(folder)
               if n not in stored)
    built.load_tensors(iter_tensors(folder))  # load_tensors agrees


def test_legacy_bin_pickles_are_checked_while_loading(make_ckpt: Callable[..., Path], tmp_path: Path) -> None:
    """A pre-zip torch pickle holds its data inline (its names cannot be read alone): it is
    checked by ``load_tensors``, with the same message."""
    folder = _copy(make_ckpt("chatglm2", seed=36, fmt="bin"), tmp_path / "legacy")
    path = folder / "pytorch_model.bin"
    sd = torch.load(path, weights_only=True)
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert stored_tensors(folder) is None
    with openllm_hub.load(folder, device="cpu"):
        pass
    sd.pop(_layer_weight("chatglm2"))
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptFileError, match="lacks 1 tensor") as err:
        openllm_hub.load(folder, device="cpu")
    assert _layer_weight("chatglm2") in err.value.what and err.value.where == str(folder)
