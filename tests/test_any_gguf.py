"""Any GGUF llama.cpp runs: the generic ``gguf`` family on five architectures no plugin handles.

Each case is a transformers model of that architecture, randomly initialised from a fixed seed
(norm weights and biases randomised too, so the Gemma ``+1`` norm offset and the Qwen2 biases
matter), written as an f32 GGUF by the test-side converter ``gguf_arch_writer`` (llama.cpp's
``convert_hf_to_gguf.py`` conventions), then loaded with ``openllm_hub.load`` and compared with
transformers (eager attention, float32) on the same token ids:

* a prompt of more than 1,024 tokens (position bugs of rotary embeddings and sliding windows
  hide in short ones; the Gemma 2 and Gemma 3 windows are 64, so their sliding layers really
  slide, and Gemma 3's full layer has its own rope base);
* logits at all 1,084 positions: max |diff| / the reference's logit range (about 5-6).
  Measured (llama-cpp-python 0.3.36, transformers 5.24, torch 2.13 CPU): qwen2 3.7e-7,
  qwen3 6.4e-7, phi3 4.4e-7 (float32 summation order only): bound 2e-5; gemma2 1.7e-4,
  gemma3 2.8e-4, bound 5e-4. Part of the Gemma error is ggml's GELU: its CPU kernel looks
  the tanh-GELU up in a float16 table; emulating that table in transformers brings gemma2
  from 1.7e-4 to 1.1e-4 (the rest was not traced further; Gemma 3 has no soft-capping, so
  that is not it);
* greedy: 8 tokens from the SDK's generation (temperature 0, no repeat penalty) equal
  transformers' argmax continuation.

A negative control shows the comparison catches a wrong sliding window (measured 0.36 of
the range with the window left out); detection picks the
generic family only when no specialised family claims the file.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import openllm_hub
from openllm_hub.core.gguf_family import CONFIDENCE, FAMILY
from openllm_hub.errors import CorruptFileError, UnknownFormatError

# pytest's importlib mode keeps this folder off sys.path: the writer sits next to this module
sys.path.insert(0, str(Path(__file__).parent))
from gguf_arch_writer import write_arch_gguf

VOCAB = 384
PROMPT_TOKENS = 1024
GREEDY = 8
#: max |logit diff| / logit range, per architecture (see the module docstring for the measurements).
BOUNDS = {"qwen2": 2e-5, "qwen3": 2e-5, "phi3": 2e-5, "gemma2": 5e-4, "gemma3": 5e-4}
PHI3_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

_BASE: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             rms_norm_eps=1e-6, initializer_range=0.08, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0)
#: arch -> (config class, model class, config overrides)
ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"tie_word_embeddings": False, "head_dim": 16}),
    # tied embeddings, 4 norms per block, soft-capping, sliding window on every other layer
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "sliding_window": 64,
                                                      "query_pre_attn_scalar": 16}),
    # six layers: five sliding (rope base 10,000), one full (base 1e6); q/k norms with the +1 offset
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "sliding_window": 64,
                                                          "query_pre_attn_scalar": 16, "num_hidden_layers": 6}),
    # fused qkv and gate/up; llama.cpp runs Phi-3 without its sliding window, so none here
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"tie_word_embeddings": False, "sliding_window": None}),
}


def make_model(arch: str, **overrides: Any) -> Any:
    """The seeded random transformers model of ``arch`` (norms and biases randomised too)."""
    cfg_cls, model_cls, extra = ARCHS[arch]
    cfg = getattr(transformers, cfg_cls)(**{**_BASE, **extra, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma stores the offset from 1
                p.copy_((0.0 if arch.startswith("gemma") else 1.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.tensor([ids])).logits[0].float().numpy()
    return out


def hf_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(hf_logits(model, seq)[-1])))
    return seq[len(ids):]


def relative_diff(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / (ref.max() - ref.min()))


def long_text(n_words: int = 360) -> str:
    rng = np.random.default_rng(7)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return " ".join("".join(rng.choice(letters, size=int(rng.integers(1, 6)))) for _ in range(n_words))


@dataclass
class Case:
    arch: str
    model: Any
    path: Path


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Case]:
    root = tmp_path_factory.mktemp("any-gguf")
    made: dict[str, Case] = {}

    def get(arch: str) -> Case:
        if arch not in made:
            model = make_model(arch)
            template = PHI3_TEMPLATE if arch == "phi3" else None
            made[arch] = Case(arch, model, write_arch_gguf(model, arch, root / f"{arch}.gguf",
                                                           chat_template=template))
        return made[arch]

    return get


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_and_greedy_equal_transformers(arch: str, cases: Callable[[str], Case]) -> None:
    case = cases(arch)
    text = long_text()
    with openllm_hub.load(case.path, device="cpu", threads=1, kv_cache_type="f32", n_ctx=2048) as m:
        assert m.info.family == "gguf" and m.info.engine == "llama.cpp"
        ids = m.tokenize(text)
        assert len(ids) >= PROMPT_TOKENS and ids[0] == 1
        got = m.logits(ids)
        done = m.generate(text, max_new_tokens=GREEDY, temperature=0.0, repeat_penalty=1.0)
    ref = hf_logits(case.model, ids)
    assert ref.max() - ref.min() > 3 and len(set(ref.argmax(-1).tolist())) > 20  # informative logits
    diff = relative_diff(ref, got)
    assert diff <= BOUNDS[arch], f"{arch}: {diff:.2e} of the logit range"
    expected = hf_greedy(case.model, ids, GREEDY)
    assert done.finish_reason == "length" and list(done.token_ids) == expected


def test_the_comparison_catches_a_wrong_sliding_window(cases: Callable[[str], Case], tmp_path: Path) -> None:
    """Negative control: the same Gemma 2 weights written with a 4096-token window (no sliding
    at this length) differ from transformers far beyond the bound."""
    case = cases("gemma2")
    wrong = make_model("gemma2", sliding_window=4096)
    path = write_arch_gguf(wrong, "gemma2", tmp_path / "gemma2-no-window.gguf")
    with openllm_hub.load(path, device="cpu", threads=1, kv_cache_type="f32", n_ctx=2048) as m:
        ids = m.tokenize(long_text())
        got = m.logits(ids)
    assert relative_diff(hf_logits(case.model, ids), got) > 50 * BOUNDS["gemma2"]


def test_chat_uses_the_models_template_else_plain(cases: Callable[[str], Case]) -> None:
    with openllm_hub.load(cases("phi3").path, device="cpu", threads=1) as m:
        assert m.default_chat_template == "model"
        ids = m.chat_prompt_ids([{"role": "user", "content": "hi"}])
        specials = m.special_tokens()
        # the template's control tokens become their ids, in the template's order
        marks = [i for i in ids if i in specials.values()]
        assert marks == [specials["<|user|>"], specials["<|end|>"], specials["<|assistant|>"]]
        assert ids[0] == specials["<|user|>"] and "hi" in m.detokenize(ids)
        assert m.chat([{"role": "user", "content": "hi"}], max_new_tokens=2, temperature=0).usage.completion_tokens
    with openllm_hub.load(cases("qwen2").path, device="cpu", threads=1) as m:
        assert m.default_chat_template == "plain"


def test_detection_prefers_specialised_families(cases: Callable[[str], Case], tmp_path: Path) -> None:
    for arch in ARCHS:
        fam, det = openllm_hub.detect(cases(arch).path)
        assert (fam.name, det.format, det.confidence) == ("gguf", "gguf", CONFIDENCE)
        assert arch in det.reason
    from openllm_hub.core.tiny import write_tiny

    llama = write_tiny("llama", tmp_path / "llama.gguf", fmt="gguf").path
    fam, det = openllm_hub.detect(llama)
    assert fam.name == "llama" and det.confidence > CONFIDENCE + 0.05
    # asked for by name, the generic family runs it too
    with openllm_hub.load(llama, family="gguf", device="cpu", threads=1) as m:
        assert m.info.family == "gguf"
        assert m.generate("Once upon a time", max_new_tokens=2, temperature=0).usage.completion_tokens


def test_adapters_are_not_claimed(tmp_path: Path) -> None:
    from openllm_hub.core.detect import Probe

    class Adapter(Probe):
        @property
        def gguf(self) -> dict[str, Any] | None:
            return {"general.architecture": "qwen2", "general.type": "adapter"}

    assert FAMILY.detect(Adapter(tmp_path)) is None


def test_unknown_architecture_is_named(tmp_path: Path) -> None:
    import gguf

    from openllm_hub.core.gguf_tiny import add_tiny_vocab
    from openllm_hub.engines.gguf_write import GGUFTensor, write_gguf_file

    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_type("model")
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(32)
        add_tiny_vocab(w, VOCAB)

    arr = np.zeros((VOCAB, 32), np.float32)
    path = tmp_path / "mystery.gguf"
    write_gguf_file(path, "mystery", metadata, [GGUFTensor("token_embd.weight", arr.shape,
                                                           gguf.GGMLQuantizationType.F32, lambda: [arr])])
    assert openllm_hub.detect(path)[0].name == "gguf"
    with pytest.raises(UnknownFormatError, match="does not run the architecture 'mystery'"):
        openllm_hub.load(path, device="cpu", threads=1)


def test_tensor_tables_of_these_architectures(cases: Callable[[str], Case], tmp_path: Path) -> None:
    """gguf_check knows these architectures' tensors: the written files pass, a missing tensor
    or one llama.cpp does not load is refused naming it, before llama.cpp sees the file."""
    import gguf

    from openllm_hub.core.gguf_check import ARCHITECTURES, check_gguf
    from openllm_hub.engines.gguf_write import GGUFTensor

    for arch in ARCHS:
        assert arch in ARCHITECTURES
        check_gguf(cases(arch).path)
    extra = np.zeros((VOCAB, 64), np.float32)
    edits: dict[str, tuple[str, Callable[[list[GGUFTensor]], list[GGUFTensor]], str]] = {
        "qwen3": ("drop", lambda ts: [t for t in ts if t.name != "blk.1.attn_k_norm.weight"],
                  "tensor 'blk.1.attn_k_norm.weight' is missing"),
        "phi3": ("drop", lambda ts: [t for t in ts if t.name != "blk.0.attn_qkv.weight"],
                 "block 0 lacks its tensors blk.0.attn_qkv.weight or"),
        "gemma2": ("extra", lambda ts: [*ts, GGUFTensor("output.weight", extra.shape, gguf.GGMLQuantizationType.F32,
                                                        lambda: [extra])],
                   "tensor 'output.weight' is not one of llama.cpp's gemma2 tensors"),
    }
    for arch, (label, edit, message) in edits.items():
        path = write_arch_gguf(cases(arch).model, arch, tmp_path / f"{arch}-{label}.gguf", edit=edit)
        with pytest.raises(CorruptFileError, match=re.escape(message)):
            openllm_hub.load(path, device="cpu", threads=1)


def test_memory_plan_from_the_header(cases: Callable[[str], Case]) -> None:
    for arch in ("qwen2", "phi3"):
        path = cases(arch).path
        spec = FAMILY.memory(path, "gguf")  # type: ignore[misc]
        with openllm_hub.load(path, device="cpu", threads=1) as m:
            assert abs(spec.n_params - m.info.parameters) <= 0.02 * m.info.parameters
        assert spec.stored_bits is None and spec.dtype_bytes == 4 and spec.kv_per_token_layer == 2 * 2 * 16


def test_kv_cache_size_of_other_head_layouts() -> None:
    """The engine's KV estimate (context refusal, GPU layer fitting, serve's slots) follows the
    file's head sizes (Gemma 2, Qwen3: key_length * heads != width) and per-layer head counts
    (hybrid architectures: the widest layer)."""
    from openllm_hub.engines.llama_cpp import _kv_bytes_per_layer

    llama = {"a.embedding_length": 4096, "a.attention.head_count": 32, "a.attention.head_count_kv": 8}
    assert _kv_bytes_per_layer(llama, "a", 10, "f16") == 10 * 2 * 8 * 128 * 2
    gemma = {"a.embedding_length": 2304, "a.attention.head_count": 8, "a.attention.head_count_kv": 4,
             "a.attention.key_length": 256, "a.attention.value_length": 256}
    assert _kv_bytes_per_layer(gemma, "a", 10, "f32") == 10 * 2 * 4 * 256 * 4
    hybrid = {"a.embedding_length": 64, "a.attention.head_count": [4, 4], "a.attention.head_count_kv": [0, 2]}
    assert _kv_bytes_per_layer(hybrid, "a", 10, "f16") == 10 * 2 * 2 * 16 * 2
