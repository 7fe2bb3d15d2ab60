"""The llama.cpp engine: options, placement, KV-cache reuse, logits rows, LoRA adapters.

References are independent where a number is checked: transformers on the same weights, or
llama.cpp evaluating a fresh context.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import openllm_hub
from openllm_hub.core.convert import VERIFY_PROMPT
from openllm_hub.core.model import Model
from openllm_hub.engines.llama_cpp import LlamaCppModel, capabilities, plan_gpu_layers
from openllm_hub.errors import IncompatibleDeviceError, InvalidParameterError

KW = {"num_kv_heads": 2}


@pytest.fixture(scope="module")
def gguf_path(tiny_gguf_factory: Callable[..., Path]) -> Path:
    return tiny_gguf_factory("f32", **KW)


@pytest.fixture(scope="module")
def model(gguf_path: Path) -> Iterator[Model]:
    m = openllm_hub.load(gguf_path, device="cpu", threads=1, kv_cache_type="f32")
    yield m
    m.close()


def _safetensors_param_count(folder: Path) -> int:
    from openllm_hub.core.io import read_safetensors_header

    total = 0
    for f in folder.glob("*.safetensors"):
        for name, info in read_safetensors_header(f).items():
            if name != "__metadata__":
                total += int(np.prod(info["shape"]))
    return total


def test_info(model: Model, tiny_hf_factory: Callable[..., Path]) -> None:
    info = model.info
    assert (info.family, info.format, info.engine, info.device) == ("llama", "gguf", "llama.cpp", "cpu")
    assert info.quantization == "f32" and info.vocab_size == 32000
    assert info.parameters == _safetensors_param_count(tiny_hf_factory(**KW))
    assert info.context_length == 2048  # the model's 2048, under the 4096 default cap
    assert info.extra["kv_cache_type"] == "f32" and info.extra["threads"] == 1
    assert info.extra["n_layers"] == 2 and info.extra["n_gpu_layers"] == 0
    assert 2 in model.eos_token_ids  # </s>
    assert isinstance(model, LlamaCppModel) and model.llama.n_vocab() == 32000


def test_capabilities_describe_this_build() -> None:
    import llama_cpp

    caps = capabilities()
    assert caps["version"] == llama_cpp.__version__
    assert "CPU" in caps["backends"]
    assert caps["gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    assert caps["cpu_features"] and all(f"{f} = 1" in caps["system_info"] for f in caps["cpu_features"])


def test_repack_default_follows_amx(model: Model) -> None:
    # llama.cpp's AMX weight path segfaults on some AMX machines (ggml-org/llama.cpp#20824): off there
    assert model.info.extra["repack"] == ("AMX_INT8" not in capabilities()["cpu_features"])


def test_cuda_request(gguf_path: Path) -> None:
    """On a build without GPU offload (or a machine without a GPU) cuda is refused clearly;
    with one, the model loads with every layer offloaded."""
    from openllm_hub.core.device import probe_machine

    if capabilities()["gpu_offload"] and probe_machine().gpus:
        with openllm_hub.load(gguf_path, device="cuda") as m:
            assert m.info.device.startswith("cuda:") and m.info.extra["n_gpu_layers"] == -1
    else:
        with pytest.raises(IncompatibleDeviceError):
            openllm_hub.load(gguf_path, device="cuda")


def test_gpu_layer_plan() -> None:
    mib = 1024 * 1024
    # 32 layers of 100 MiB each (file 3200 MiB), KV 10 MiB per layer, 1024 MiB reserved
    assert plan_gpu_layers(3200 * mib, 32, 24000, 10 * mib) == -1  # all fit, output layer too
    assert plan_gpu_layers(3200 * mib, 32, 1024 + 110 * 10, 10 * mib) == 10
    assert plan_gpu_layers(3200 * mib, 32, 1024 + 50, 10 * mib) == 0
    assert plan_gpu_layers(3200 * mib, 32, 500, 10 * mib) == 0
    assert plan_gpu_layers(3200 * mib, 32, 1024 + 110 * 32, 10 * mib) == 32  # all layers, not the output


def test_explicit_gpu_layers_on_cpu_are_ignored(gguf_path: Path) -> None:
    # -ngl only matters on cuda; on the CPU nothing is offloaded
    with openllm_hub.load(gguf_path, device="cpu", gpu_layers=0, threads=1) as m:
        assert m.info.extra["n_gpu_layers"] == 0


def test_context_size_bounds_generation(gguf_path: Path) -> None:
    # llama.cpp pads the context to a multiple of 256; 256 is taken as asked
    with openllm_hub.load(gguf_path, device="cpu", threads=1, n_ctx=256) as m:
        assert m.info.context_length == 256
        prompt_ids = m.tokenize(VERIFY_PROMPT)
        out = m.generate(VERIFY_PROMPT, max_new_tokens=1000, temperature=0.0)
        assert len(out.token_ids) == 256 - len(prompt_ids)  # stops when the context is full
        with pytest.raises(InvalidParameterError):
            m.generate(VERIFY_PROMPT * 20, max_new_tokens=4)
        with pytest.raises(InvalidParameterError):
            m.logits([100] * 300)


def test_kv_cache_reuse_equals_a_fresh_context(model: Model, gguf_path: Path) -> None:
    """A prompt that extends the previous one reuses the evaluated prefix; the output is what
    a fresh context gives. Also after logits(), and after a shorter prompt."""
    p1 = VERIFY_PROMPT
    p2 = VERIFY_PROMPT + " Choose a name. 2."
    params = {"max_new_tokens": 12, "temperature": 0.0}
    with openllm_hub.load(gguf_path, device="cpu", threads=1, kv_cache_type="f32") as fresh:
        want2 = fresh.generate(p2, **params).token_ids
    with openllm_hub.load(gguf_path, device="cpu", threads=1, kv_cache_type="f32") as fresh:
        want1 = fresh.generate(p1, **params).token_ids
    model.generate(p1, **params)
    assert model.generate(p2, **params).token_ids == want2
    assert model.generate(p1, **params).token_ids == want1
    model.logits(model.tokenize(p2))
    assert model.generate(p2, **params).token_ids == want2


def test_logits_rows_are_the_prefix_predictions(model: Model) -> None:
    """Row i of logits(ids) is the prediction after ids[:i+1] (evaluated on its own)."""
    ids = model.tokenize(VERIFY_PROMPT)
    rows = model.logits(ids)
    for i in (0, 3, len(ids) - 1):
        alone = model.logits(ids[: i + 1])[-1]
        scale = float(alone.max() - alone.min())
        # the same float32 computation with another batch shape: a few ulps apart at most
        assert float(np.abs(rows[i] - alone).max()) < 1e-5 * scale


def test_small_batches_and_no_mmap_change_nothing(model: Model, gguf_path: Path) -> None:
    """n_batch=8 splits the prompt (and logits()) into several decodes; use_mmap=False reads
    the file into memory. Same greedy text, logits within float32 summation noise."""
    ids = model.tokenize(VERIFY_PROMPT)
    assert len(ids) > 8
    ref = model.logits(ids)
    want = model.generate(VERIFY_PROMPT, max_new_tokens=8, temperature=0.0).token_ids
    with openllm_hub.load(gguf_path, device="cpu", threads=1, kv_cache_type="f32", n_batch=8, use_mmap=False) as m:
        assert m.info.extra["n_batch"] == 8
        got = m.logits(ids)
        assert m.generate(VERIFY_PROMPT, max_new_tokens=8, temperature=0.0).token_ids == want
    assert float(np.abs(got - ref).max()) < 1e-5 * float(ref.max() - ref.min())


def test_f16_kv_cache_is_close(model: Model, gguf_path: Path) -> None:
    """The default f16 KV cache rounds keys and values to 11 bits of mantissa: measured 1e-3
    to 5e-3 of the logit range on these models; 2e-2 bounds it."""
    ids = model.tokenize(VERIFY_PROMPT)
    ref = model.logits(ids)
    with openllm_hub.load(gguf_path, device="cpu", threads=1) as m16:
        assert m16.info.extra["kv_cache_type"] == "f16"
        got = m16.logits(ids)
    assert float(np.abs(got - ref).max()) < 2e-2 * float(ref.max() - ref.min())


def test_seed_and_chat_template_options(gguf_path: Path) -> None:
    with openllm_hub.load(gguf_path, device="cpu", threads=1, seed=11, chat_template="vicuna") as m:
        assert m.default_chat_template == "vicuna"
        a = m.generate("Once", max_new_tokens=8, temperature=1.0)
        b = m.generate("Once", max_new_tokens=8, temperature=1.0)
        c = m.generate("Once", max_new_tokens=8, temperature=1.0, seed=11)
        assert a.token_ids == b.token_ids == c.token_ids
        msgs = [{"role": "user", "content": "Hi"}]
        prompt = m.chat_template().render(msgs)  # type: ignore[arg-type]
        assert prompt.startswith("A chat between a curious user") and prompt.endswith("USER: Hi ASSISTANT:")
        chat = m.chat(msgs, max_new_tokens=6, temperature=0.0)
        assert chat.token_ids == m.generate(prompt, max_new_tokens=6, temperature=0.0, stop=["USER:"]).token_ids


def test_hf_folder_on_llama_cpp(tiny_hf_factory: Callable[..., Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """engine='llama.cpp' on an HF folder converts it once to an f16 GGUF in the cache."""
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path))
    folder = tiny_hf_factory(**KW)
    with openllm_hub.load(folder, device="cpu", threads=1, engine="llama.cpp", kv_cache_type="f32") as m:
        assert m.info.engine == "llama.cpp" and m.info.quantization == "f16"
        cached = Path(m.info.path)
        assert cached.parent.parent == tmp_path and cached.is_file()
        ids = m.tokenize(VERIFY_PROMPT)
        got = m.logits(ids)
    stamp = cached.stat().st_mtime_ns
    with openllm_hub.load(folder, device="cpu", threads=1, engine="llama.cpp") as m:
        assert Path(m.info.path) == cached and cached.stat().st_mtime_ns == stamp  # reused, not rebuilt
    with openllm_hub.load(folder, device="cpu", threads=1) as ref_model:
        ref = ref_model.logits(ids)
    # f16 weights (10-bit mantissa) against the f32 originals: measured ~4e-3 of the range
    assert float(np.abs(got - ref).max()) < 2e-2 * float(ref.max() - ref.min())


# ---- LoRA adapters -----------------------------------------------------------------------------
def _write_gguf_lora(path: Path, tensors: dict[str, np.ndarray], alpha: float) -> None:
    """A GGUF LoRA adapter in llama.cpp's layout: ``<tensor>.lora_a`` (r, in) and
    ``<tensor>.lora_b`` (out, r), numpy shapes (written independently of the plugin)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_several_lora_adapters_with_scales(tiny_hf_factory: Callable[..., Path], gguf_path: Path,
                                           tmp_path: Path) -> None:
    """Two adapters (attention values of layer 0, FFN down of layer 1) at different scales:
    llama.cpp adds scale * alpha / r * B @ A to each weight. The reference is transformers on
    a copy of the HF folder with exactly those deltas merged into the weights."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(0)
    h, ffn, r = 64, 176, 4
    kv = 32  # 2 kv heads of 16
    a1, b1 = rng.normal(0, 0.3, (r, h)), rng.normal(0, 0.3, (kv, r))
    a2, b2 = rng.normal(0, 0.3, (r, ffn)), rng.normal(0, 0.3, (h, r))
    _write_gguf_lora(tmp_path / "v.gguf", {"blk.0.attn_v.weight.lora_a": a1, "blk.0.attn_v.weight.lora_b": b1}, 8.0)
    _write_gguf_lora(tmp_path / "d.gguf", {"blk.1.ffn_down.weight.lora_a": a2,
                                           "blk.1.ffn_down.weight.lora_b": b2}, 4.0)
    s1, s2 = 0.5, 1.5

    merged = tmp_path / "merged"
    shutil.copytree(tiny_hf_factory(**KW), merged)
    state = load_file(str(merged / "model.safetensors"))
    state["model.layers.0.self_attn.v_proj.weight"] += torch.from_numpy(s1 * 8.0 / r * (b1 @ a1)).float()
    state["model.layers.1.mlp.down_proj.weight"] += torch.from_numpy(s2 * 4.0 / r * (b2 @ a2)).float()
    save_file(state, str(merged / "model.safetensors"), metadata={"format": "pt"})

    with openllm_hub.load(merged, device="cpu", threads=1) as ref_model:
        ids = ref_model.tokenize(VERIFY_PROMPT)
        ref = ref_model.logits(ids)
        greedy = ref_model.generate(VERIFY_PROMPT, max_new_tokens=16, temperature=0.0).token_ids
    lora = [(str(tmp_path / "v.gguf"), s1), (str(tmp_path / "d.gguf"), s2)]
    with openllm_hub.load(gguf_path, device="cpu", threads=1, kv_cache_type="f32", lora=lora) as m:
        assert m.info.extra["loras_attached"] == 2
        got = m.logits(ids)
        assert m.generate(VERIFY_PROMPT, max_new_tokens=16, temperature=0.0).token_ids == greedy
        with openllm_hub.load(gguf_path, device="cpu", threads=1, kv_cache_type="f32") as base:
            base_diff = float(np.abs(base.logits(ids) - ref).max())
    scale = float(ref.max() - ref.min())
    # the adapters move the logits by a lot (so the test can fail) ...
    assert base_diff > 1e-2 * scale
    # ... and llama.cpp's run-time application matches the merged weights to float32 rounding
    # (the delta is added in a separate matmul instead of into the weight: measured ~1e-6)
    assert float(np.abs(got - ref).max()) < 2e-5 * scale
    json.dumps(m.info.extra["lora"])  # the info stays serialisable
