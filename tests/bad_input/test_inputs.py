"""The bad-input corpus for files, names, destinations, converter options, SAT folders and numbers.

Every case is a malformed or hostile input a user can give, run twice:

* through the CLI in a subprocess: exit code 1, exactly one line on stderr, starting
  ``openllm-hub: error: ``, no traceback, no crash (a signal would show as a negative code);
* through the Python API: exactly one :class:`OpenLLMHubError` (any other exception fails).

Models: the bigram example model where a model runs (fast), a tiny LLaMA HF folder and GGUF
for writers, a tiny GLM-130B SAT checkpoint for SAT folders; all built once per module. See
tests/bad_input/README.md for how to add a case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openllm_hub_llama.lora_data import load_alpaca

import openllm_hub
import openllm_hub.core.perplexity
from openllm_hub.cli_args import parse_options
from openllm_hub.core.io import read_text_file
from openllm_hub.errors import OpenLLMHubError

ROOT = os.geteuid() == 0


@dataclass
class P:
    """The paths a case works with: shared models, and its own folder ``tmp``."""

    bigram: Path
    hf: Path
    gguf: Path
    sat_source: Path
    tmp: Path
    extra: dict[str, Path] = field(default_factory=dict)

    @property
    def f(self) -> Path:
        """The case's bad file (made by its setup)."""
        return self.tmp / "bad"

    @property
    def sat(self) -> Path:
        """The case's own copy of the SAT checkpoint (made by :func:`sat_copy`)."""
        return self.tmp / "sat"

    def fmt(self, arg: str) -> str:
        return arg.format(bigram=self.bigram, hf=self.hf, gguf=self.gguf, tmp=self.tmp, f=self.f, sat=self.sat,
                          **{k: str(v) for k, v in self.extra.items()})


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    api: Callable[[P], object]
    setup: Callable[[P], None] = lambda p: None


# ---- bad files -------------------------------------------------------------------------------
def write(data: bytes | str, name: str = "bad") -> Callable[[P], None]:
    def setup(p: P) -> None:
        (p.tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def folder(p: P) -> None:
    p.f.mkdir()


def symlink_loop(p: P) -> None:
    os.symlink(p.tmp / "bad2", p.f)
    os.symlink(p.f, p.tmp / "bad2")


def unreadable(p: P) -> None:
    """A file this process cannot read: chmod 000, or (as root, who reads anything) a link to a
    file whose reads fail."""
    if ROOT:
        os.symlink("/proc/self/mem", p.f)
    else:
        p.f.write_text("secret")
        p.f.chmod(0)


LONG = "x" * 300
NOT_UTF8 = b"\xff\xfe\x00bad \xc3\x28 text"


def unwritable_dir(p: P) -> Path:
    """A folder this process cannot create files in (as root: /sys)."""
    if ROOT:
        return Path("/sys")
    d = p.tmp / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d


# ---- models.json ------------------------------------------------------------------------------
def names_file(content: bytes | str | object) -> Callable[[P], None]:
    def setup(p: P) -> None:
        cfg = Path(os.environ["OPENLLM_HUB_CONFIG_DIR"])
        cfg.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            data = content
        elif isinstance(content, str):
            data = content.encode()
        else:
            data = json.dumps(content).encode()
        (cfg / "models.json").write_bytes(data)

    return setup


# ---- SAT folders ------------------------------------------------------------------------------
def sat_copy(edit: Callable[[Path], object]) -> Callable[[P], None]:
    def setup(p: P) -> None:
        shutil.copytree(p.sat_source, p.sat)
        edit(p.sat)

    return setup


def latest(data: bytes) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        (root / "latest").write_bytes(data)

    return edit


def sat_config(**changes: Any) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        cfg = json.loads((root / "glm130b_config.json").read_text())
        for key, value in changes.items():
            if "." in key:
                outer, inner = key.split(".")
                cfg[outer][inner] = value
            else:
                cfg[key] = value
        (root / "glm130b_config.json").write_text(json.dumps(cfg))

    return edit


def latest_folder(root: Path) -> None:
    (root / "latest").unlink()
    (root / "latest").mkdir()


def load_cpu(path: Path, **options: Any) -> Callable[[P], object]:
    return lambda p: openllm_hub.load(path, device="cpu", **options)


def generate(**params: Any) -> Callable[[P], object]:
    def api(p: P) -> object:
        with openllm_hub.load(p.bigram, device="cpu") as m:
            return m.generate("hi", **params)

    return api


def text_file(p: P) -> object:
    return read_text_file(p.f)


RUN = ("run", "{bigram}", "-p", "hi", "--no-echo")

CASES: list[Case] = [
    # ---- CLI files: -f, --system-file, perplexity FILE ---------------------------------------------
    Case("run-f-missing", ("run", "{bigram}", "-f", "{tmp}/nope.txt"), text_file),
    Case("run-f-directory", ("run", "{bigram}", "-f", "{f}"), text_file, folder),
    Case("run-f-not-utf8", ("run", "{bigram}", "-f", "{f}"), text_file, write(NOT_UTF8)),
    Case("run-f-unreadable", ("run", "{bigram}", "-f", "{f}"), text_file, unreadable),
    Case("run-f-symlink-loop", ("run", "{bigram}", "-f", "{f}"), text_file, symlink_loop),
    Case("run-f-over-long-name", ("run", "{bigram}", "-f", "{tmp}/" + LONG),
         lambda p: read_text_file(p.tmp / LONG)),
    Case("chat-system-file-missing", ("chat", "{bigram}", "--system-file", "{tmp}/nope.txt"), text_file),
    Case("chat-system-file-directory", ("chat", "{bigram}", "--system-file", "{f}"), text_file, folder),
    Case("chat-system-file-not-utf8", ("chat", "{bigram}", "--system-file", "{f}"), text_file, write(NOT_UTF8)),
    Case("chat-system-file-unreadable", ("chat", "{bigram}", "--system-file", "{f}"), text_file, unreadable),
    Case("perplexity-file-missing", ("perplexity", "{bigram}", "{tmp}/nope.txt"), text_file),
    Case("perplexity-file-directory", ("perplexity", "{bigram}", "{f}"), text_file, folder),
    Case("perplexity-file-not-utf8", ("perplexity", "{bigram}", "{f}"), text_file, write(NOT_UTF8)),
    Case("perplexity-file-symlink-loop", ("perplexity", "{bigram}", "{f}"), text_file, symlink_loop),
    Case("perplexity-file-empty", ("perplexity", "{bigram}", "{f}"),
         lambda p: openllm_hub.core.perplexity.perplexity(openllm_hub.load(p.bigram, device="cpu"),
                                                          read_text_file(p.f)), write(b"")),
    # ---- model names and models.json ------------------------------------------------------------
    Case("name-unknown", ("run", "no-such-model-name", "-p", "hi"), lambda p: openllm_hub.load("no-such-model-name")),
    Case("name-empty", ("run", "", "-p", "hi"), lambda p: openllm_hub.load("")),
    Case("name-over-long", ("info", LONG * 20), lambda p: openllm_hub.load(LONG * 20)),
    Case("name-broken-symlink", ("info", "{f}"), lambda p: openllm_hub.load(p.f),
         lambda p: os.symlink(p.tmp / "gone", p.f)),
    Case("models-json-not-json", ("info", "mine"), lambda p: openllm_hub.load("mine"), names_file("{not json")),
    Case("models-json-not-utf8", ("info", "mine"), lambda p: openllm_hub.load("mine"), names_file(NOT_UTF8)),
    Case("models-json-array", ("info", "mine"), lambda p: openllm_hub.load("mine"), names_file(["mine"])),
    Case("models-json-deep", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file("[" * 200_000 + "]" * 200_000)),
    Case("models-json-entry-string", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": "/some/path"})),
    Case("models-json-entry-without-path", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": {"family": "llama"}})),
    Case("models-json-path-not-string", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": {"path": 42}})),
    Case("models-json-path-empty", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": {"path": ""}})),
    Case("models-json-options-list", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": {"path": "/x", "options": [1, 2]}})),
    Case("models-json-family-number", ("info", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": {"path": "/x", "family": 7}})),
    Case("models-json-unknown-key", ("models", "remove", "mine"), lambda p: openllm_hub.load("mine"),
         names_file({"mine": {"path": "/x", "pth": "/y"}})),
    Case("models-add-missing-path", ("models", "add", "mine", "{tmp}/nope"),
         lambda p: openllm_hub.add_model_name("mine", p.tmp / "nope")),
    Case("models-add-builtin-name", ("models", "add", "bigram-stories", "{bigram}"),
         lambda p: openllm_hub.add_model_name("bigram-stories", p.bigram)),
    Case("models-add-blank-name", ("models", "add", " ", "{bigram}"),
         lambda p: openllm_hub.add_model_name(" ", p.bigram)),
    Case("models-add-name-with-newline", ("models", "add", "a\nb", "{bigram}"),
         lambda p: openllm_hub.add_model_name("a\nb", p.bigram)),
    Case("models-remove-unknown", ("models", "remove", "nope"),
         lambda p: openllm_hub.api.remove_model_name("nope")),
    # ---- destinations -----------------------------------------------------------------------------
    Case("convert-into-missing-folder", ("convert", "{hf}", "{tmp}/no/such/dir/out.gguf", "--to", "gguf"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "no/such/dir/out.gguf", to="gguf")),
    Case("convert-into-unwritable-folder", ("convert", "{hf}", "{unwritable}/out.gguf", "--to", "gguf"),
         lambda p: openllm_hub.convert(p.hf, p.extra["unwritable"] / "out.gguf", to="gguf"),
         lambda p: p.extra.__setitem__("unwritable", unwritable_dir(p))),
    Case("convert-into-a-file", ("convert", "{hf}", "{f}/out.gguf", "--to", "gguf"),
         lambda p: openllm_hub.convert(p.hf, p.f / "out.gguf", to="gguf"), write("a file")),
    Case("convert-onto-its-source", ("convert", "{hf}", "{hf}", "--to", "gguf", "--force"),
         lambda p: openllm_hub.convert(p.hf, p.hf, to="gguf", force=True)),
    Case("convert-inside-its-source", ("convert", "{hf}", "{hf}/out.gguf", "--to", "gguf"),
         lambda p: openllm_hub.convert(p.hf, p.hf / "out.gguf", to="gguf")),
    Case("convert-existing-without-force", ("convert", "{hf}", "{f}", "--to", "gguf"),
         lambda p: openllm_hub.convert(p.hf, p.f, to="gguf"), write("keep me")),
    Case("convert-over-long-name", ("convert", "{hf}", "{tmp}/" + LONG, "--to", "gguf"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / LONG, to="gguf")),
    Case("convert-to-dot", ("convert", "{hf}", ".", "--to", "gguf", "--force"),
         lambda p: openllm_hub.convert(p.hf, ".", to="gguf", force=True)),
    Case("quantize-into-unwritable-folder", ("quantize", "{gguf}", "{unwritable}/q.gguf", "q4_0"),
         lambda p: openllm_hub.quantize(p.gguf, p.extra["unwritable"] / "q.gguf", "q4_0"),
         lambda p: p.extra.__setitem__("unwritable", unwritable_dir(p))),
    Case("quantize-into-missing-folder", ("quantize", "{gguf}", "{tmp}/nope/q.gguf", "q4_0"),
         lambda p: openllm_hub.quantize(p.gguf, p.tmp / "nope/q.gguf", "q4_0")),
    Case("quantize-onto-its-source", ("quantize", "{gguf}", "{gguf}", "q4_0", "--force"),
         lambda p: openllm_hub.quantize(p.gguf, p.gguf, "q4_0", force=True)),
    Case("merge-lora-into-missing-folder", ("merge-lora", "{hf}", "{gguf}", "-o", "{tmp}/nope/merged"),
         lambda p: openllm_hub.merge_lora(p.hf, [p.gguf], p.tmp / "nope/merged")),
    # ---- converter options ------------------------------------------------------------------------
    Case("convert-option-unknown", ("convert", "{hf}", "{tmp}/o.gguf", "--to", "gguf", "-o", "bogus=1"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "o.gguf", to="gguf", options={"bogus": 1})),
    Case("convert-option-misspelt", ("convert", "{hf}", "{tmp}/m", "--to", "meta", "-o", "shard=2"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "m", to="meta", options={"shard": 2})),
    Case("convert-option-shards-zero", ("convert", "{hf}", "{tmp}/m", "--to", "meta", "-o", "shards=0"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "m", to="meta", options={"shards": 0})),
    Case("convert-option-shards-text", ("convert", "{hf}", "{tmp}/m", "--to", "meta", "-o", "shards=two"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "m", to="meta", options={"shards": "two"})),
    Case("convert-option-shards-huge", ("convert", "{hf}", "{tmp}/m", "--to", "meta", "-o", "shards=1e12"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "m", to="meta", options={"shards": 10**12})),
    Case("convert-option-name-list", ("convert", "{hf}", "{tmp}/o.gguf", "--to", "gguf", "-o", "name=[1,2]"),
         lambda p: openllm_hub.convert(p.hf, p.tmp / "o.gguf", to="gguf", options={"name": [1, 2]})),
    Case("convert-option-not-key-value", ("convert", "{hf}", "{tmp}/o.gguf", "--to", "gguf", "-o", "bogus"),
         lambda p: parse_options(["bogus"])),
    Case("convert-option-sat-tp-zero", ("convert", "{sat}", "{tmp}/o", "--to", "sat", "-o", "tp=0"),
         lambda p: openllm_hub.convert(p.sat, p.tmp / "o", to="sat", options={"tp": 0}), sat_copy(lambda r: None)),
    Case("convert-option-sat-tp-text", ("convert", "{sat}", "{tmp}/o", "--to", "sat", "-o", "tp=all"),
         lambda p: openllm_hub.convert(p.sat, p.tmp / "o", to="sat", options={"tp": "all"}),
         sat_copy(lambda r: None)),
    Case("convert-option-sat-unknown", ("convert", "{sat}", "{tmp}/o", "--to", "sat", "-o", "world=2"),
         lambda p: openllm_hub.convert(p.sat, p.tmp / "o", to="sat", options={"world": 2}),
         sat_copy(lambda r: None)),
    # ---- GLM-130B SAT folders ---------------------------------------------------------------------
    Case("sat-latest-binary", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest(bytes(range(128, 200))))),
    Case("sat-latest-huge", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest(b"1" * 1_000_000))),
    Case("sat-latest-empty", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest(b"\n"))),
    Case("sat-latest-parent", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest(b"../1000"))),
    Case("sat-latest-over-long", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest(b"9" * 250))),
    Case("sat-latest-missing-iteration", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest(b"49300"))),
    Case("sat-latest-is-a-folder", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(latest_folder)),
    Case("sat-missing-rank", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(lambda r: (r / "1000" / "mp_rank_01_model_states.pt").unlink())),
    Case("sat-config-layers-text", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(num_layers="3"))),
    Case("sat-config-absurd-tp", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(model_parallel_size=10**9))),
    Case("sat-config-negative-epsilon", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(layernorm_epsilon=-1))),
    Case("sat-config-command-id-text", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(**{"tokenizer.commands": {"[MASK]": "x"}}))),
    Case("sat-config-commands-list", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(**{"tokenizer.commands": [1, 2]}))),
    Case("sat-config-id-offset-text", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(**{"tokenizer.id_offset": "x"}))),
    Case("sat-config-tokenizer-path-number", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(sat_config(**{"tokenizer.path": 5}))),
    Case("sat-config-not-json", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(lambda r: (r / "glm130b_config.json").write_text('{"model_type": "glm-130b", '))),
    Case("sat-config-deep", ("info", "{sat}", "--device", "cpu"), lambda p: load_cpu(p.sat)(p),
         sat_copy(lambda r: (r / "glm130b_config.json").write_text("[" * 100_000 + "]" * 100_000))),
    Case("sat-repartition-tp-not-dividing", ("glm130b-repartition", "{sat}", "{tmp}/o", "--tp", "3"),
         lambda p: openllm_hub.convert(p.sat, p.tmp / "o", to="sat", options={"tp": 3}), sat_copy(lambda r: None)),
    # ---- numbers on the command line ----------------------------------------------------------------
    Case("n-negative", (*RUN, "-n", "-5"), generate(max_new_tokens=-5)),
    Case("n-huge", (*RUN, "-n", str(10**20)), generate(max_new_tokens=10**20)),
    Case("temp-nan", (*RUN, "--temp", "nan"), generate(temperature=float("nan"))),
    Case("temp-negative", (*RUN, "--temp", "-1"), generate(temperature=-1.0)),
    Case("top-p-two", (*RUN, "--top-p", "2"), generate(top_p=2.0)),
    Case("top-p-nan", (*RUN, "--top-p", "nan"), generate(top_p=float("nan"))),
    Case("top-k-negative", (*RUN, "--top-k", "-3"), generate(top_k=-3)),
    Case("repeat-penalty-inf", (*RUN, "--repeat-penalty", "inf"), generate(repeat_penalty=float("inf"))),
    Case("seed-negative", (*RUN, "--seed", "-1"), generate(seed=-1)),
    Case("ctx-zero", (*RUN, "-c", "0"), lambda p: openllm_hub.load(p.bigram, device="cpu", n_ctx=0)),
    Case("threads-zero", (*RUN, "-t", "0"), lambda p: openllm_hub.load(p.bigram, device="cpu", threads=0)),
    Case("threads-negative", (*RUN, "-t", "-4"), lambda p: openllm_hub.load(p.bigram, device="cpu", threads=-4)),
    Case("perplexity-window-zero", ("perplexity", "{bigram}", "{f}", "--window", "0"),
         lambda p: openllm_hub.core.perplexity.perplexity(openllm_hub.load(p.bigram, device="cpu"), "some text",
                                                          window=0), write("some text here")),
    Case("perplexity-stride-negative", ("perplexity", "{bigram}", "{f}", "--stride", "-1"),
         lambda p: openllm_hub.core.perplexity.perplexity(openllm_hub.load(p.bigram, device="cpu"), "some text",
                                                          stride=-1), write("some text here")),
    Case("quantize-unknown-type", ("quantize", "{gguf}", "{tmp}/q.gguf", "q9_9"),
         lambda p: openllm_hub.quantize(p.gguf, p.tmp / "q.gguf", "q9_9")),
    # ---- a LoRA training dataset named on the command line ------------------------------------------
    Case("lora-train-dataset-not-utf8", ("lora", "train", "{hf}", "{f}", "-o", "{tmp}/adapter"),
         lambda p: load_alpaca(p.f), write(NOT_UTF8)),
    Case("lora-train-dataset-deep-json", ("lora", "train", "{hf}", "{f}", "-o", "{tmp}/adapter"),
         lambda p: load_alpaca(p.f), write("[" * 100_000 + "]" * 100_000)),
]

#: Words the error of a case must contain (CLI line and API message): it names what is wrong
#: and where, so a case cannot pass on an unrelated error raised earlier.
EXPECT: dict[str, str] = {
    "run-f-missing": "no such file", "run-f-directory": "is a directory", "run-f-not-utf8": "not UTF-8",
    "run-f-symlink-loop": "symbolic links", "run-f-over-long-name": "too long",
    "chat-system-file-not-utf8": "not UTF-8", "perplexity-file-not-utf8": "not UTF-8",
    "perplexity-file-empty": "too short", "name-unknown": "neither an existing path nor a model name",
    "name-over-long": "too long", "name-broken-symlink": "broken symbolic link",
    **{c.id: "models.json" for c in CASES if c.id.startswith("models-json")},
    "models-add-builtin-name": "built-in", "models-add-missing-path": "not found",
    "convert-into-missing-folder": "does not exist", "convert-into-unwritable-folder": "cannot write into",
    "quantize-into-unwritable-folder": "cannot write into", "quantize-into-missing-folder": "does not exist",
    "merge-lora-into-missing-folder": "does not exist", "convert-into-a-file": "not a folder",
    "convert-onto-its-source": "overwrite an input", "quantize-onto-its-source": "overwrite an input",
    "convert-existing-without-force": "already exists", "convert-over-long-name": "longer than 255",
    "convert-option-unknown": "bogus", "convert-option-misspelt": "shard", "convert-option-shards-zero": "shards",
    "convert-option-sat-tp-zero": "tp", "convert-option-sat-unknown": "world",
    **{c.id: "latest" for c in CASES if c.id.startswith("sat-latest") and c.id != "sat-latest-is-a-folder"},
    "sat-missing-rank": "rank 1", **{c.id: "glm130b_config.json" for c in CASES if c.id.startswith("sat-config")},
    "n-negative": "max_new_tokens", "n-huge": "max_new_tokens", "temp-nan": "temperature", "top-p-two": "top_p",
    "top-k-negative": "top_k", "seed-negative": "seed", "ctx-zero": "n_ctx", "threads-zero": "threads",
    "lora-train-dataset-not-utf8": "not UTF-8", "lora-train-dataset-deep-json": "nested too deeply",
}


# ---- models, built once per module ------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from openllm_hub_bigram import BUILTIN_MODEL
    from openllm_hub_glm130b.tiny import build_tiny
    from openllm_hub_llama.tiny import make_tiny_hf

    root = tmp_path_factory.mktemp("corpus-models")
    hf = make_tiny_hf(root / "hf")
    gguf = openllm_hub.convert(hf, root / "tiny.gguf", to="gguf", outtype="f16").path
    sat, _ = build_tiny(root / "sat", tp=2)
    return {"bigram": BUILTIN_MODEL, "hf": hf, "gguf": gguf, "sat": sat}


@pytest.fixture()
def paths(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[P]:
    monkeypatch.setenv("OPENLLM_HUB_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "case"
    work.mkdir()
    yield P(models["bigram"], models["hf"], models["gguf"], models["sat"], work)
    for p in work.rglob("*"):  # undo chmod 000 / 0500 so pytest can remove the folder
        if not p.is_symlink():
            p.chmod(0o700)


def _argv(case: Case, p: P) -> list[str]:
    return [p.fmt(a) for a in case.argv]


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert set(EXPECT) <= {c.id for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_and_api_give_one_clear_error(case: Case, paths: P) -> None:
    case.setup(paths)
    before = sorted(str(x) for x in paths.tmp.rglob("*")) if not case.id.startswith("sat-") else None
    done = subprocess.run([sys.executable, "-m", "openllm_hub.cli", *_argv(case, paths)], env=dict(os.environ),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, f"exit {done.returncode}; stderr: {done.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("openllm-hub: error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    with pytest.raises(OpenLLMHubError) as info:
        result = case.api(paths)
        if hasattr(result, "close"):
            result.close()
    assert "\n" not in str(info.value)
    expect = EXPECT.get(case.id, "")
    assert expect in lines[0] and expect in str(info.value), (expect, lines[0], str(info.value))
    if before is not None:  # a refused write leaves nothing behind
        assert sorted(str(x) for x in paths.tmp.rglob("*")) == before
