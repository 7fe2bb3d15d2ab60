"""merge-lora against PEFT itself, on tiny LLaMAs with adapters made by PEFT.

Reference: PEFT's own *unmerged* model (``PeftModel.from_pretrained``: ``W x + s B A x`` at run
time), never our merge. Both sides run in float64 on the same float32 numbers, so the only
difference left is that our merged weight ``W + s B A`` is stored in float32 (the base's
dtype): one rounding of at most 2^-24 relative per weight. Through these tiny models (large
random weights, logits of magnitude ~15-40) that moves logits by ~1e-7..1e-6 of their largest
magnitude; :data:`REL_BOUND` = 1e-5 of it leaves a 10x margin, while a wrong scale, a missing
transpose or a misplaced row moves them by whole units.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llama_lora_tiny import CJK_PIECES, make_peft_adapter, to_fan_in_fan_out, to_old_key_layout
from safetensors.torch import load_file

import openllm_hub
from openllm_hub.cli import main as cli_main
from openllm_hub.core.io import TMP_MARK
from openllm_hub.errors import ConversionError, DestinationExistsError, NotFoundError

REL_BOUND = 1e-5
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = [1, 306, 4700, 29871, 31999, 500, 12, 9000, 2, 17]
#: ids that include rows only the extended vocabularies have (32000+)
EXT_IDS = [1, 306, 32000, 32007, 32015, 500, 12, 32016, 9000]


@pytest.fixture(scope="module")
def base(tiny_hf_factory: Callable[..., Path]) -> Path:
    """Grouped-query attention (4 heads, 2 kv heads), two safetensors shards."""
    return tiny_hf_factory(num_kv_heads=2, shards=2)


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    a: dict[str, Path] = {}
    a["plain"] = make_peft_adapter(base, root / "plain", targets=ALL_LINEAR, seed=1)
    a["second"] = make_peft_adapter(base, root / "second", r=8, alpha=4, targets=("q_proj", "k_proj", "down_proj"),
                                    seed=2)
    a["rslora_emb"] = make_peft_adapter(base, root / "rslora_emb", r=4, alpha=6, use_rslora=True, seed=3,
                                        targets=("q_proj", "v_proj", "embed_tokens", "lm_head"))
    # Chinese-LLaMA-Plus style: extended sentencepiece vocabulary, full embed/lm_head, LoRA on attention
    a["ext1"] = make_peft_adapter(base, root / "ext1", targets=("q_proj", "v_proj"), seed=4,
                                  modules_to_save=("embed_tokens", "lm_head"), extra_pieces=CJK_PIECES)
    # Chinese-Alpaca-Plus style: one more added token ([PAD]), saved in the old key layout as a .bin
    ext2 = make_peft_adapter(base, root / "ext2-new", targets=("q_proj", "down_proj"), seed=5,
                             modules_to_save=("embed_tokens", "lm_head"), extra_pieces=CJK_PIECES,
                             added_tokens=("[PAD]",))
    a["ext2"] = to_old_key_layout(ext2, root / "ext2", as_bin=True)
    a["fifo"] = to_fan_in_fan_out(a["plain"], root / "fifo")
    return a


def peft_logits(base: Path, adapters: Sequence[Path], ids: Sequence[int], *, vocab: int | None = None,
                merge_first: bool = False) -> np.ndarray:
    """Logits of PEFT's unmerged model in float64. Several adapters are all active at once;
    with ``merge_first`` the first is merged by PEFT and the second applied unmerged (the only
    way PEFT can stack adapters that replace the embeddings)."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model: Any = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float64)

    def resize_for(adapter: Path) -> None:
        state = _adapter_state(adapter)
        rows = next((v.shape[0] for k, v in state.items() if "embed_tokens" in k and "lora" not in k), None)
        if rows is not None and rows != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(rows, mean_resizing=False)

    if merge_first:
        resize_for(adapters[0])
        model = PeftModel.from_pretrained(model, str(adapters[0])).merge_and_unload()
        adapters = adapters[1:]
    resize_for(adapters[-1])
    peft = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, ad in enumerate(adapters[1:], 1):
        peft.load_adapter(str(ad), adapter_name=f"a{i}")
    peft.base_model.set_adapter([f"a{i}" for i in range(len(adapters))])
    peft.eval()
    with torch.no_grad():
        out = peft(torch.tensor([list(ids)])).logits[0].numpy()
    assert vocab is None or out.shape[1] == vocab
    return np.asarray(out)


def _adapter_state(adapter: Path) -> dict[str, torch.Tensor]:
    if (adapter / "adapter_model.safetensors").is_file():
        return load_file(str(adapter / "adapter_model.safetensors"))
    return torch.load(adapter / "adapter_model.bin", weights_only=True)


def merged_logits(folder: Path, ids: Sequence[int]) -> np.ndarray:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float64)
    with torch.no_grad():
        return np.asarray(model(torch.tensor([list(ids)])).logits[0].numpy())


def assert_close(ours: np.ndarray, ref: np.ndarray, base_ref: np.ndarray | None = None) -> None:
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    rel = float(np.abs(ours - ref).max()) / scale
    assert rel <= REL_BOUND, f"max |diff| is {rel:.3g} of the largest logit ({scale:.3g})"
    if base_ref is not None:  # the adapters really change the model (the check above can fail)
        n = min(base_ref.shape[1], ref.shape[1])
        assert float(np.abs(ref[:, :n] - base_ref[:, :n]).max()) > 1000 * REL_BOUND * scale


@pytest.fixture(scope="module")
def base_logits(base: Path) -> np.ndarray:
    return merged_logits(base, IDS)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merged")


def test_one_adapter_matches_peft(base: Path, adapters: dict[str, Path], out_root: Path,
                                  base_logits: np.ndarray) -> None:
    out = openllm_hub.merge_lora(base, [adapters["plain"]], out_root / "plain")
    assert_close(merged_logits(out, IDS), peft_logits(base, [adapters["plain"]], IDS), base_logits)
    # the base's two shards are mirrored, with the index and the tokenizer files
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                            "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                            "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"])
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())


def test_two_stacked_adapters_match_peft(base: Path, adapters: dict[str, Path], out_root: Path,
                                         base_logits: np.ndarray) -> None:
    pair = [adapters["plain"], adapters["second"]]
    out = openllm_hub.merge_lora(base, pair, out_root / "stacked")
    assert_close(merged_logits(out, IDS), peft_logits(base, pair, IDS), base_logits)


def test_fan_in_fan_out_adapter(base: Path, adapters: dict[str, Path], out_root: Path) -> None:
    """A pair saved transposed (fan_in_fan_out=true) merges to the same model as the plain one
    it was made from, checked against PEFT on the plain one (PEFT refuses the flag for Linear)."""
    out = openllm_hub.merge_lora(base, [adapters["fifo"]], out_root / "fifo")
    assert_close(merged_logits(out, IDS), peft_logits(base, [adapters["plain"]], IDS))


def test_rslora_and_embedding_lora_match_peft(base: Path, adapters: dict[str, Path], out_root: Path,
                                              base_logits: np.ndarray) -> None:
    out = openllm_hub.merge_lora(base, [adapters["rslora_emb"]], out_root / "rslora")
    assert_close(merged_logits(out, IDS), peft_logits(base, [adapters["rslora_emb"]], IDS), base_logits)


def test_vocabulary_extension_matches_peft(base: Path, adapters: dict[str, Path], out_root: Path) -> None:
    out = openllm_hub.merge_lora(base, [adapters["ext1"]], out_root / "ext1")
    rows = 32000 + len(CJK_PIECES)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    assert (out / "tokenizer.model").read_bytes() == (adapters["ext1"] / "tokenizer.model").read_bytes()
    ids = [i for i in EXT_IDS if i < rows]
    assert_close(merged_logits(out, ids), peft_logits(base, [adapters["ext1"]], ids, vocab=rows))


def test_stacked_vocabulary_extensions_match_peft(base: Path, adapters: dict[str, Path], out_root: Path) -> None:
    """LLaMA + Chinese-LLaMA-Plus-like (32016) + Chinese-Alpaca-Plus-like (32017, old layout, .bin)."""
    from openllm_hub_llama.tokenizer import load_vocab

    pair = [adapters["ext1"], adapters["ext2"]]
    out = openllm_hub.merge_lora(base, pair, out_root / "ext12")
    rows = 32000 + len(CJK_PIECES) + 1
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    assert load_vocab(out, rows).tokens[-1] == b"[PAD]"  # the last adapter's tokenizer, added token included
    assert_close(merged_logits(out, EXT_IDS), peft_logits(base, pair, EXT_IDS, vocab=rows, merge_first=True))


def test_meta_base_to_hf_and_pth(tiny_meta_factory: Callable[..., tuple[Path, Path]], adapters: dict[str, Path],
                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Meta base merges to exactly the tensors its HF twin merges to; the pth output (rotary
    permutation, model-parallel shards, params.json) loads to the same logits as the hf output."""
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path / "cache"))
    meta, twin = tiny_meta_factory(num_kv_heads=2)  # bfloat16, two consolidated shards
    pair = [adapters["plain"], adapters["ext2"]]
    from_meta = openllm_hub.merge_lora(meta, pair, tmp_path / "meta-hf")
    from_twin = openllm_hub.merge_lora(twin, pair, tmp_path / "twin-hf")
    a, b = load_file(str(from_meta / "model.safetensors")), load_file(str(from_twin / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == torch.bfloat16  # the base's dtype
        assert torch.equal(a[k], b[k]), k
    pth = openllm_hub.merge_lora(meta, pair, tmp_path / "meta-pth", output_type="pth")
    assert sorted(p.name for p in pth.glob("consolidated.*.pth")) == ["consolidated.00.pth", "consolidated.01.pth"]
    assert json.loads((pth / "params.json").read_text())["n_kv_heads"] == 2
    ids = EXT_IDS
    with openllm_hub.load(from_meta, device="cpu") as m_hf, openllm_hub.load(pth, device="cpu", convert=True) as m_pth:
        # identical weights after the pth -> hf round trip of the permutation: identical logits
        np.testing.assert_array_equal(m_hf.logits(ids), m_pth.logits(ids))


def test_cli_merge_lora(base: Path, adapters: dict[str, Path], out_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    rc = cli_main(["merge-lora", str(base), str(adapters["plain"]), str(adapters["second"]), "-o", str(out),
                   "--output-type", "hf"])
    assert rc == 0
    ref = out_root / "stacked"
    if not ref.exists():
        openllm_hub.merge_lora(base, [adapters["plain"], adapters["second"]], ref)
    for f in ref.glob("*.safetensors"):
        x, y = load_file(str(f)), load_file(str(out / f.name))
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_bin_base_and_tied_base(tiny_hf_factory: Callable[..., Path], adapters: dict[str, Path], out_root: Path,
                                base: Path, tmp_path: Path) -> None:
    """A ``pytorch_model-*.bin`` base (same weights as ``base``) merges to the same tensors as the
    safetensors one; a base with tied embeddings merges attention/MLP adapters (checked against
    PEFT) and refuses, by name, an adapter that changes the tied embeddings."""
    bin_base = tiny_hf_factory(num_kv_heads=2, shards=2, fmt="bin")
    out = openllm_hub.merge_lora(bin_base, [adapters["plain"]], tmp_path / "bin")
    ref = out_root / "plain"
    if not ref.exists():
        openllm_hub.merge_lora(base, [adapters["plain"]], ref)
    for f in ref.glob("*.safetensors"):
        x, y = load_file(str(f)), load_file(str(out / f.name))
        assert all(torch.equal(x[k], y[k]) for k in x)
    tied = tiny_hf_factory(num_kv_heads=2, tie_word_embeddings=True)
    merged = openllm_hub.merge_lora(tied, [adapters["second"]], tmp_path / "tied")
    assert_close(merged_logits(merged, IDS), peft_logits(tied, [adapters["second"]], IDS))
    with pytest.raises(ConversionError, match="ties lm_head"):
        openllm_hub.merge_lora(tied, [adapters["rslora_emb"]], tmp_path / "tied-emb")


# ---- bad input: a clear error and nothing written ---------------------------------------------------
def _edit_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def other_base_adapter(tiny_hf_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained on a different LLaMA (hidden size 32)."""
    other = tiny_hf_factory(hidden_size=32, intermediate_size=88, num_kv_heads=2)
    return make_peft_adapter(other, tmp_path_factory.mktemp("other") / "a", targets=("q_proj",), seed=9)


def _bad_cases(adapters: dict[str, Path], other: Path, root: Path) -> dict[str, tuple[list[Path], type, str]]:
    plain = adapters["plain"]
    no_cfg = root / "no-config"
    shutil.copytree(plain, no_cfg)
    (no_cfg / "adapter_config.json").unlink()
    no_tok = root / "no-tokenizer"
    shutil.copytree(adapters["ext1"], no_tok)
    (no_tok / "tokenizer.model").unlink()
    short_tok = root / "short-tokenizer"
    shutil.copytree(adapters["ext2"], short_tok)
    (short_tok / "added_tokens.json").unlink()
    return {
        "shape mismatch": ([other], ConversionError, "does not fit the base"),
        "missing adapter_config.json": ([no_cfg], NotFoundError, "adapter_config.json is missing"),
        "IA3 adapter": ([_edit_config(plain, root / "ia3", peft_type="IA3")], ConversionError,
                        "'IA3' is not supported"),
        "DoRA": ([_edit_config(plain, root / "dora", use_dora=True)], ConversionError, "DoRA"),
        "rank_pattern": ([_edit_config(plain, root / "rp", rank_pattern={"q_proj": 8})], ConversionError,
                         "rank_pattern"),
        "unknown target module": ([_edit_config(plain, root / "tm", target_modules=["q_proj", "qkv_proj"])],
                                  ConversionError, "'qkv_proj'"),
        "vocab mismatch, no tokenizer": ([no_tok], ConversionError, "no tokenizer.model"),
        "tokenizer shorter than the embedding": ([short_tok], ConversionError, "32017-row embedding"),
        "second adapter for another base": ([plain, other], ConversionError, "does not fit the base"),
    }


def test_bad_inputs_fail_clearly_and_write_nothing(base: Path, adapters: dict[str, Path], other_base_adapter: Path,
                                                   tmp_path: Path) -> None:
    cases = _bad_cases(adapters, other_base_adapter, tmp_path / "cases")
    outdir = tmp_path / "out"
    outdir.mkdir()
    for label, (ads, exc_type, message) in cases.items():
        with pytest.raises(exc_type) as info:
            openllm_hub.merge_lora(base, ads, outdir / "merged")
        assert message in str(info.value), (label, str(info.value))
        assert info.value.fix, label
        assert list(outdir.iterdir()) == [], label  # no output, no temporary left behind
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(DestinationExistsError):
        openllm_hub.merge_lora(base, [adapters["plain"]], existing)
    assert list(existing.iterdir()) == []
    # the CLI says it on one line and exits 1
    assert cli_main(["merge-lora", str(base), str(cases["DoRA"][0][0]), "-o", str(outdir / "m")]) == 1
    assert not any(p.name.startswith(TMP_MARK) for p in tmp_path.iterdir())
