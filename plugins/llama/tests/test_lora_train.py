"""``lora train`` on a tiny LLaMA: two optimizer steps change the adapter, PEFT and the merger
load the result, an interrupted run resumed from its checkpoint equals an uninterrupted one
bit for bit, and the Alpaca data handling (prompts, masking, bad files) is right."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from openllm_hub_llama.engine_hf import SentencePieceTokenizer
from openllm_hub_llama.lora_data import IGNORE_INDEX, AlpacaExample, load_alpaca, tokenize_example
from openllm_hub_llama.lora_train import TrainConfig, latest_checkpoint, train_lora
from openllm_hub_llama.templates import alpaca_prompt
from safetensors.torch import load_file

import openllm_hub
from openllm_hub.cli import main as cli_main
from openllm_hub.errors import CorruptFileError, DestinationExistsError, InvalidParameterError

EXAMPLES = [{"instruction": f"Name the number after {i}.", "input": "" if i % 2 else f"Count in steps of {i % 3 + 1}.",
             "output": f"The next number is {i + 1}."} for i in range(10)]


@pytest.fixture(scope="module")
def base(tiny_hf_factory: Callable[..., Path]) -> Path:
    return tiny_hf_factory(num_kv_heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "alpaca_data.json"
    path.write_text(json.dumps(EXAMPLES, ensure_ascii=False))
    return path


def _cfg(base: Path, data: Path, out: Path, **kw: Any) -> TrainConfig:
    # 8 training examples (2 held out), micro-batches of 2, 2 per step: 2 optimizer steps per epoch
    settings: dict[str, Any] = {"r": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                                "epochs": 1, "learning_rate": 1e-2, "batch_size": 2, "grad_accum": 2,
                                "cutoff_len": 64, "val_size": 2, "save_steps": 1, "eval_steps": 1, "device": "cpu"}
    settings.update(kw)
    return TrainConfig(base=str(base), data=str(data), output=str(out), **settings)


@pytest.fixture(scope="module")
def trained(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    result = train_lora(_cfg(base, data, out, max_steps=2), progress=False)
    assert result.steps == 2 and result.val_loss is not None
    return out


def test_two_steps_change_the_adapter_and_peft_loads_it(base: Path, trained: Path) -> None:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    weights = load_file(str(trained / "adapter_model.safetensors"))
    assert sorted(weights) == sorted(f"base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight"
                                     for i in range(2) for m in "qv" for ab in "AB")
    # PEFT initialises lora_B to zero; after training every B is non-zero, and A moved between steps
    assert all(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)
    step1 = load_file(str(trained / "checkpoints" / "step-000001" / "adapter_model.safetensors"))
    assert all(not torch.equal(step1[k], weights[k]) for k in weights)
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and any("val_loss" in r for r in log)

    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float64)
    peft = PeftModel.from_pretrained(model, str(trained)).eval()
    ids = torch.tensor([[1, 306, 4700, 29871, 500, 12]])
    with torch.no_grad():
        ref = peft(ids).logits[0].numpy()
    # and the merger reads it: merged logits equal PEFT's (float64 both sides; see test_lora_merge for the bound)
    merged = openllm_hub.merge_lora(base, [trained], trained.parent / "merged")
    ours = LlamaForCausalLM.from_pretrained(str(merged), dtype=torch.float64)
    with torch.no_grad():
        got = ours(ids).logits[0].numpy()
    assert float(np.abs(got - ref).max()) <= 1e-5 * float(np.abs(ref).max())


def test_resumed_run_equals_uninterrupted_run(base: Path, data: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    args = ["lora", "train", str(base), str(data), "-o", str(out), "-r", "4", "--alpha", "8", "--dropout", "0.1",
            "--target-modules", "q_proj,v_proj", "--epochs", "1", "--lr", "0.01", "--batch-size", "2",
            "--grad-accum", "2", "--cutoff-len", "64", "--val-size", "2", "--save-steps", "1", "--eval-steps", "1",
            "--device", "cpu"]
    assert cli_main([*args, "--max-steps", "1"]) == 0  # "interrupted" after one step
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000001"
    assert cli_main([*args, "--max-steps", "2", "--resume"]) == 0
    a = load_file(str(trained / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    for k in a:  # dropout RNG, optimizer moments, schedule and data order all restored
        assert torch.equal(a[k], b[k]), k
    # a resumed run must keep its settings; a finished folder is not trained into again
    with pytest.raises(InvalidParameterError, match="learning_rate"):
        train_lora(_cfg(base, data, out, learning_rate=0.5), resume=True)
    with pytest.raises(DestinationExistsError):
        train_lora(_cfg(base, data, out))


def test_alpaca_prompts_and_masking(base: Path) -> None:
    tok = SentencePieceTokenizer(base)
    with_input = AlpacaExample("Translate.", "Bonjour", "Hello")
    without = AlpacaExample("Say hi.", "", "Hi")
    assert with_input.prompt == alpaca_prompt("Translate.", "Bonjour")
    assert "### Input:\nBonjour\n\n### Response:\n" in with_input.prompt
    assert "### Input" not in without.prompt and without.prompt.endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    full = tokenize_example(with_input, tok, bos_id=1, eos_id=2, cutoff_len=256)
    assert full.input_ids[0] == 1 and full.input_ids[-1] == 2 and full.labels == full.input_ids
    masked = tokenize_example(with_input, tok, bos_id=1, eos_id=2, cutoff_len=256, train_on_inputs=False)
    n_prompt = 1 + len(tok.encode(with_input.prompt, False))
    assert masked.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert masked.labels[n_prompt:] == masked.input_ids[n_prompt:] and masked.labels[-1] == 2
    cut = tokenize_example(with_input, tok, bos_id=1, eos_id=2, cutoff_len=10)
    assert len(cut.input_ids) == 10 and cut.input_ids[-1] != 2  # no room left for EOS


def test_bad_datasets_are_refused_before_anything_is_written(base: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "input": ""}]))  # no output
    with pytest.raises(CorruptFileError, match="'output'"):
        load_alpaca(bad)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in EXAMPLES[:3]) + "\n")
    assert [e.output for e in load_alpaca(jsonl)] == [e["output"] for e in EXAMPLES[:3]]
    out = tmp_path / "out"
    assert cli_main(["lora", "train", str(base), str(bad), "-o", str(out), "--device", "cpu"]) == 1
    assert not out.exists()
    with pytest.raises(InvalidParameterError, match="no training examples"):
        train_lora(_cfg(base, jsonl, out, val_size=3))
    assert not out.exists()
