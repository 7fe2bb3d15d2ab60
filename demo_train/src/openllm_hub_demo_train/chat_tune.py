"""``demo-chat``: the demo model instruction-tuned with the SDK's own commands.

Runs, in this process, exactly what a user would type::

    openllm-hub lora train BASE WORK/alpaca_train.json -o WORK/lora ...
    openllm-hub merge-lora BASE WORK/lora -o OUT

then greedy-answers a few held-out instructions through ``load(OUT)`` with the ``alpaca``
chat template and writes them, with the run's settings and losses, into OUT/MODEL_CARD.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openllm_hub.errors import PluginError

#: LoRA settings for a 4 M-parameter base: every linear layer, a larger rank and learning rate
#: than alpaca-lora's (tiny models need more capacity per layer and take bigger steps), loss
#: on the responses only.
LORA_ARGS: tuple[str, ...] = (
    "-r", "16", "--alpha", "32", "--dropout", "0.0",
    "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "--epochs", "3", "--lr", "2e-3", "--batch-size", "4", "--grad-accum", "4", "--cutoff-len", "320",
    "--val-size", "200", "--no-train-on-inputs", "--warmup-steps", "20", "--save-steps", "0",
    "--eval-steps", "100", "--seed", "0", "--device", "cpu",
)
TINY_LORA_ARGS: tuple[str, ...] = (
    "-r", "4", "--alpha", "8", "--epochs", "1", "--batch-size", "2", "--grad-accum", "1", "--cutoff-len", "128",
    "--max-steps", "2", "--save-steps", "0", "--eval-steps", "0", "--seed", "0", "--device", "cpu",
)


@dataclass(frozen=True)
class ChatTuneResult:
    adapter: Path
    merged: Path
    commands: list[list[str]]
    samples: list[tuple[str, str, str]]  # (instruction, input, answer)


def _hub(argv: list[str]) -> None:
    from openllm_hub.cli import main as hub

    rc = hub(argv)
    if rc != 0:
        raise PluginError(f"`openllm-hub {' '.join(argv)}` failed with exit status {rc}", where="demo_train chat")


def chat_tune(base: Path, work: Path, out: Path, *, tiny: bool = False, force: bool = False, n_samples: int = 8,
              echo: Callable[[str], None] = print) -> ChatTuneResult:
    """LoRA-train on ``work/alpaca_train.json``, merge into ``out``, sample held-out answers."""
    import torch

    # one thread: on a shared machine two spinning OpenMP threads are slower than one (see train.py)
    torch.set_num_threads(1)
    os.environ.setdefault("OPENLLM_HUB_NO_PROGRESS", "1")
    lora_dir = work / "lora"
    train_cmd = ["lora", "train", str(base), str(work / "alpaca_train.json"), "-o", str(lora_dir),
                 *(TINY_LORA_ARGS if tiny else LORA_ARGS)]
    merge_cmd = ["merge-lora", str(base), str(lora_dir), "-o", str(out), *(["--force"] if force else [])]
    if lora_dir.exists() and force:
        import shutil

        shutil.rmtree(lora_dir)
    for cmd in (train_cmd, merge_cmd):
        echo("[chat] openllm-hub " + " ".join(cmd))
        _hub(cmd)
    samples = sample_answers(out, work / "alpaca_heldout.json", n_samples)
    result = ChatTuneResult(lora_dir, out, [train_cmd, merge_cmd], samples)
    write_chat_card(result, tiny=tiny)
    return result


def sample_answers(model_dir: Path, heldout: Path, n: int) -> list[tuple[str, str, str]]:
    """Greedy answers of the merged model to the first ``n`` held-out instructions (alpaca template;
    an input, if any, goes on the line after the instruction)."""
    import openllm_hub

    rows = json.loads(heldout.read_text(encoding="utf-8"))[:n]
    out: list[tuple[str, str, str]] = []
    with openllm_hub.load(model_dir, engine="transformers", device="cpu") as model:
        ctx = model.info.context_length or 1 << 30
        for r in rows:
            content = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
            msgs = [{"role": "user", "content": content}]
            room = ctx - len(model.tokenize(model.chat_template("alpaca").render(msgs)))  # type: ignore[arg-type]
            if room < 2:  # a toy-size context (the tests' tiny preset) cannot hold this prompt
                continue
            c = model.chat(msgs, template="alpaca", max_new_tokens=min(96, room - 1), temperature=0)
            out.append((r["instruction"], r["input"], c.text.strip()))
    return out


def _train_log(adapter: Path) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    last_train = last_eval = None
    log = adapter / "train_log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if "val_loss" in row:
                last_eval = row
            elif "loss" in row:
                last_train = row
    return last_train, last_eval


def write_chat_card(result: ChatTuneResult, *, tiny: bool) -> Path:
    last_train, last_eval = _train_log(result.adapter)
    lines = [
        "# openllm-hub demo-chat model",
        "",
        "The `demo` model instruction-tuned with the SDK's own LoRA pipeline and merged back into full",
        "weights; `openllm-hub chat demo-chat` talks to it with the `alpaca` template. Like its base it",
        "knows only the small world of its generated corpus (stories, colours, animals, simple sums,",
        "English/Chinese words).",
        "",
        "## How it was made",
        "",
        "Alpaca-format data generated by `python -m openllm_hub_demo_train corpus` "
        "(`alpaca_train.json`: arithmetic, colours, animals, opposites, counting, word and sentence "
        "translation, short stories, repeating words, answering from a given text; 55 % English, 45 % Chinese), then:",
        "",
        "```",
        *("openllm-hub " + " ".join(Path(a).name if "/" in a else a for a in cmd) for cmd in result.commands),
        "```",
        "",
    ]
    if last_train or last_eval:
        lines += ["## Results", ""]
        if last_train:
            lines.append(f"- last training loss (step {last_train.get('step')}): **{last_train['loss']:.4f}**")
        if last_eval:
            lines.append(f"- validation loss (200 held-back examples, responses only): **{last_eval['val_loss']:.4f}**")
        lines.append("")
    if result.samples:
        lines += ["## Greedy answers to held-out instructions", "",
                  "What the tuning teaches a model this small is the form of an answer: it replies in the "
                  "question's language, in the shape the task asks for (a sum, a colour, a story), and stops. "
                  "The content is rarely right, since the base model does not carry words from the question "
                  "into the answer (see the base model's card, Limitations).", "",
                  "| instruction | input | answer |", "|---|---|---|"]
        for ins, inp, ans in result.samples:
            def cell(s: str) -> str:
                return s.replace("|", "\\|").replace("\n", " ")

            lines.append(f"| {cell(ins)} | {cell(inp)} | {cell(ans)} |")
        lines.append("")
    lines += ["## Licence", "", "MIT, like the base model, the code and the data.", ""]
    if tiny:
        lines.insert(1, "\n(toy run: --preset tiny)")
    path = result.merged / "MODEL_CARD.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
