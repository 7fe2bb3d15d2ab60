"""One flag vocabulary for every run command: ``glm130b-run`` (and ``python -m
openllm_hub_glm130b`` under torchrun) take ``openllm-hub run``'s sampling and device flags, keep
GLM's own (``--strategy``, ``--num-beams``, ...), and still accept their old names; ``run
--nproc N`` echoes the prompt as ``run`` does."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import pytest
from openllm_hub_glm130b.__main__ import main as torchrun_main
from openllm_hub_glm130b.commands import add_run_arguments, job_from_args

from openllm_hub.cli import build_parser
from openllm_hub.cli import main as cli_main
from openllm_hub.errors import InvalidParameterError

PROMPT = "the cat [MASK] on the mat"


def _parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["glm130b-run", "CKPT", "-p", PROMPT, *flags])


@pytest.mark.parametrize(("flags", "dest", "value"), [
    (("-n", "8"), "max_new_tokens", 8),
    (("--n-predict", "8"), "max_new_tokens", 8),
    (("--max-new-tokens", "8"), "max_new_tokens", 8),  # the old name
    (("--temp", "0.5"), "temperature", 0.5),
    (("--temperature", "0.5"), "temperature", 0.5),  # the old name
    (("--top-k", "3"), "top_k", 3),
    (("--top-p", "0.9"), "top_p", 0.9),
    (("--seed", "7"), "seed", 7),
    (("--repeat-penalty", "1.1"), "repeat_penalty", 1.1),
    (("--stop", "mat"), "stop", ["mat"]),
    (("-t", "2"), "threads", 2),
    (("--threads", "2"), "threads", 2),
    (("--device", "cpu"), "device", "cpu"),
    (("--dtype", "bf16"), "dtype", "bf16"),
    (("--strategy", "beam"), "strategy", "beam"),
    (("--num-beams", "2"), "num_beams", 2),
    (("--length-penalty", "0.5"), "length_penalty", 0.5),
    (("--no-repeat-ngram", "3"), "no_repeat_ngram", 3),
    (("--min-new-tokens", "2"), "min_new_tokens", 2),
    (("--quantize", "int8"), "quantize", "int8"),
    (("--offload-layers", "all"), "offload_layers", "all"),
    (("--tokenizer", "t.model"), "tokenizer", "t.model"),
    (("--nproc", "2"), "nproc", 2),
    (("--parallel", "3"), "parallel", 3),
])
def test_each_flag(flags: tuple[str, ...], dest: str, value: Any) -> None:
    args = _parse(*flags)
    assert getattr(args, dest) == value


def test_defaults_and_job_parameters() -> None:
    args = _parse()
    assert (args.max_new_tokens, args.device, args.threads, args.dtype, args.strategy) == (64, "auto", None, None,
                                                                                            "sample")
    job = job_from_args(_parse("-n", "9", "--temp", "0.7", "--top-k", "5", "--top-p", "0.8", "--seed", "3"))
    assert dict(job.params) == {"max_new_tokens": 9, "temperature": 0.7, "top_k": 5, "top_p": 0.8, "seed": 3}
    assert job.num_beams is None and job.prompts == (PROMPT,) and job.parallel is None
    assert job_from_args(_parse("--parallel", "2")).parallel == 2
    with pytest.raises(InvalidParameterError, match="--parallel"):
        job_from_args(_parse("--parallel", "0"))
    greedy = job_from_args(_parse("--strategy", "greedy", "--temp", "0.7"))
    assert dict(greedy.params)["temperature"] == 0.0
    beam = job_from_args(_parse("--strategy", "beam", "--num-beams", "3", "--length-penalty", "0.5"))
    assert beam.num_beams == 3 and beam.length_penalty == 0.5


def test_the_run_commands_share_the_flag_names() -> None:
    """Every sampling and device flag of ``run`` means the same in ``glm130b-run``."""
    parser = build_parser()
    actions = {name: p for name, p in parser._subparsers._group_actions[0].choices.items()  # type: ignore[union-attr]
               if name in ("run", "glm130b-run")}

    def flags(p: argparse.ArgumentParser) -> dict[str, str]:
        return {s: a.dest for a in p._actions for s in a.option_strings}

    run, glm = flags(actions["run"]), flags(actions["glm130b-run"])
    for flag in ("-n", "--n-predict", "--temp", "--top-k", "--top-p", "--seed", "--repeat-penalty", "--stop",
                 "-t", "--threads", "--device", "--dtype", "-p", "--prompt", "--nproc"):
        assert glm[flag] == run[flag], flag


def test_help_lists_the_shared_names_not_the_old_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["glm130b-run", "--help"])
    text = capsys.readouterr().out
    for flag in ("-n MAX_NEW_TOKENS", "--temp", "--top-k", "--seed", "-t THREADS", "--device", "--dtype", "--strategy",
                 "--num-beams"):
        assert flag in text, flag
    assert "--max-new-tokens" not in text and "--temperature" not in text


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--dtype", "int3")
    with pytest.raises(SystemExit):
        _parse("-n", "many")
    capsys.readouterr()


def test_torchrun_entry_takes_the_same_names_without_device_flags() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["CKPT", "-n", "7", "--temp", "0", "--dtype", "fp32"])
    assert (args.max_new_tokens, args.temperature, args.dtype) == (7, 0.0, "fp32")
    with pytest.raises(SystemExit):
        parser.parse_args(["CKPT", "--device", "cpu"])  # torchrun chose the device
    with pytest.raises(SystemExit):
        torchrun_main(["--help"])


def test_glm130b_run_with_new_and_old_names(tiny: Any, model: Any, capsys: pytest.CaptureFixture[str]) -> None:
    expect = model.fill_blanks(PROMPT, temperature=0.0, max_new_tokens=5).blanks[0] + "\n"
    capsys.readouterr()
    for flags in (["-n", "5", "--temp", "0", "-t", "1"],
                  ["--max-new-tokens", "5", "--temperature", "0", "--threads", "1"],
                  ["-n", "5", "--strategy", "greedy"]):
        assert cli_main(["glm130b-run", str(tiny.path), "-p", PROMPT, "--device", "cpu", *flags]) == 0, flags
        assert capsys.readouterr().out == expect, flags


def test_run_nproc_echoes_the_prompt_like_run(tiny: Any, model: Any) -> None:
    """``run`` prints the prompt then the text; ``run --nproc 2`` does the same (``--no-echo``: the
    text alone, see test_tp.py)."""
    prompt = "the cat sat"
    proc = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "run", str(tiny.path), "-p", prompt,
                           "--nproc", "2", "--device", "cpu", "--temp", "0", "-n", "4", "-t", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    expect = model.fill_blanks(prompt, temperature=0.0, max_new_tokens=4)
    assert proc.stdout == prompt + expect.blanks[0] + "\n"
    single = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "run", str(tiny.path), "-p", prompt,
                             "--device", "cpu", "--temp", "0", "-n", "4", "-t", "1"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-2000:]
    assert single.stdout == proc.stdout
    # a refused run prints no prompt before its one-line error
    bad = subprocess.run([sys.executable, "-m", "openllm_hub.cli", "run", str(tiny.path), "-p", prompt,
                          "--nproc", "2", "-o", "nonsense=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout == "" and "nonsense" in bad.stderr
