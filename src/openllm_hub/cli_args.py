"""Command-line arguments shared by every ``openllm-hub`` command that loads a model.

``openllm-hub run/chat/info/perplexity`` (:mod:`openllm_hub.cli`), ``openllm-hub serve``
(:mod:`openllm_hub.server.cli`) and plugin commands added through ``register_commands`` use
these, so a model is named, placed and given options the same way everywhere::

    from openllm_hub.cli_args import add_load_arguments, load_from_args

    p = cli.add_parser("mycommand", help=...)
    add_load_arguments(p)          # MODEL, --family, --device, --dtype, -ngl, -t, -c, --lora, -o KEY=VALUE
    p.set_defaults(handler=lambda args: run(load_from_args(args)))

Commands that run a model without ``load()`` (e.g. a family's own multi-process runner) take the
same names from :func:`add_device_arguments` and :func:`add_generation_arguments`, so ``-n``,
``--temp``, ``-t`` or ``--device`` mean one thing in every command.

Only argparse and json are imported here; the model loads when :func:`load_from_args` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openllm_hub.errors import InvalidParameterError, NotFoundError

#: The device options ``load()`` takes besides the family's own, as (flag attribute) names.
LOAD_FLAG_OPTIONS = ("dtype", "gpu_layers", "threads", "n_ctx")
#: The generation parameters :func:`add_generation_arguments` defines, as ``GenerationConfig`` names.
GENERATION_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "repeat_penalty", "repeat_last_n", "seed",
                     "stop")


def parse_options(pairs: Sequence[str] | None, *, where: str = "-o/--option") -> dict[str, Any]:
    """``-o key=value`` pairs as a dict; values parse as JSON when they can (numbers, booleans,
    lists), else stay strings. A pair without ``=`` is an :class:`InvalidParameterError`."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise InvalidParameterError(f"option {pair!r} is not key=value", where=where)
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_option_argument(p: argparse.ArgumentParser, *, what: str = "a family load option") -> None:
    """``-o/--option KEY=VALUE`` (repeatable), read back with :func:`parse_options`."""
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help=f"{what} (repeatable)")


def add_device_arguments(p: argparse.ArgumentParser, *, devices: str | None = None,
                         dtypes: Sequence[str] | None = None, threads_help: str = "CPU threads",
                         dtype_only: bool = False) -> None:
    """``--device``, ``--dtype`` and ``-t/--threads``: where a model runs. ``devices`` and
    ``threads_help`` reword the help of commands that accept fewer devices or count threads
    differently; ``dtypes`` restricts ``--dtype`` to those choices; ``dtype_only`` adds only
    ``--dtype`` (for a process whose device and threads its launcher chose, e.g. under torchrun)."""
    if not dtype_only:
        p.add_argument("--device", default="auto",
                       help=devices or "auto, cpu, cpu:blas, cuda, cuda:N or cuda:N,M (default auto)")
    p.add_argument("--dtype", choices=tuple(dtypes) if dtypes else None,
                   help="compute dtype: " + (", ".join(dtypes) if dtypes else "fp32, fp16 or bf16") +
                        " (engines that choose a dtype)")
    if not dtype_only:
        p.add_argument("-t", "--threads", type=int, help=threads_help)


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL and the flags that choose how it loads: family, device, dtype, GPU layers,
    threads, context size, LoRA adapters (``--lora``) and family options (``-o``)."""
    p.add_argument("model", help="a file, folder or model name (see `openllm-hub models`)")
    p.add_argument("--family", help="skip detection and use this family")
    add_device_arguments(p)
    p.add_argument("-ngl", "--gpu-layers", type=int, dest="gpu_layers", help="layers to keep on the GPU (-1 = all)")
    p.add_argument("-c", "--ctx-size", type=int, dest="n_ctx", help="context length (families that take n_ctx)")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a GGUF LoRA adapter applied at load time, with its scale (default 1.0); repeatable, "
                        "like llama.cpp's --lora and --lora-scaled (families on llama.cpp)")
    add_option_argument(p)


def parse_lora(spec: str, *, where: str = "--lora") -> tuple[str, float]:
    """``PATH`` or ``PATH:SCALE`` as ``(path, scale)``; the file must exist and the scale be a
    finite number. A path that itself contains ``:`` is taken whole when that file exists."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head and not Path(spec).is_file() and "/" not in tail and "\\" not in tail:
        try:
            scale = float(tail)
        except ValueError:
            raise InvalidParameterError(f"LoRA scale {tail!r} is not a number", where=f"{where} {spec}",
                                        fix="write PATH or PATH:SCALE, e.g. adapter.gguf:0.5") from None
        if not math.isfinite(scale):
            raise InvalidParameterError(f"LoRA scale {tail!r} is not a finite number", where=f"{where} {spec}",
                                        fix="write PATH or PATH:SCALE, e.g. adapter.gguf:0.5")
        path = head
    if not Path(path).expanduser().is_file():
        raise NotFoundError("LoRA adapter not found", where=f"{where} {path}",
                            fix="give the path of a GGUF LoRA file (`openllm-hub lora gguf` makes one from a PEFT "
                                "adapter)")
    return str(Path(path).expanduser()), scale


def _lora_option(value: Any) -> Any:
    """``-o lora=...`` in the forms people write: ``PATH``, ``PATH:SCALE``, a list of those, or
    load()'s own ``[[PATH, SCALE], ...]`` (passed on for the family to validate)."""
    if isinstance(value, str):
        return [parse_lora(value, where="-o lora=")]
    if isinstance(value, list):
        return [parse_lora(v, where="-o lora=") if isinstance(v, str) else v for v in value]
    return value


def family_options(args: argparse.Namespace) -> dict[str, Any]:
    """The family's options from arguments of :func:`add_load_arguments`: the ``-o`` pairs,
    and the LoRA adapters of ``-o lora=...`` followed by those of ``--lora``."""
    opts = parse_options(args.option)
    if "lora" in opts:
        opts["lora"] = _lora_option(opts["lora"])
    if getattr(args, "lora", None):
        opts["lora"] = [*opts.get("lora", []), *(parse_lora(s) for s in args.lora)]
    return opts


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options for ``load()`` from arguments of :func:`add_load_arguments`:
    :func:`family_options`, overridden by the device flags that were given."""
    opts = family_options(args)
    for key in LOAD_FLAG_OPTIONS:
        if getattr(args, key, None) is not None:
            opts[key] = getattr(args, key)
    return opts


def load_from_args(args: argparse.Namespace) -> Any:
    """Load the model named by arguments of :func:`add_load_arguments` (returns a ``Model``)."""
    from openllm_hub.api import load

    return load(args.model, family=args.family, device=args.device, **load_options(args))


def add_generation_arguments(p: argparse.ArgumentParser, *, n_default: int = 128, color: bool = True) -> None:
    """Sampling flags with llama.cpp's names (-n, --temp, --top-k, ...) and ``--color``
    (``color=False`` leaves it out, for commands that do not colour their output)."""
    g = p.add_argument_group("sampling (llama.cpp's names)")
    g.add_argument("-n", "--n-predict", type=int, default=n_default, dest="max_new_tokens",
                   help=f"tokens to generate (default {n_default})")
    g.add_argument("--temp", type=float, dest="temperature", help="temperature (0 = greedy)")
    g.add_argument("--top-k", type=int, dest="top_k", help="sample from the K most likely tokens")
    g.add_argument("--top-p", type=float, dest="top_p", help="sample from the most likely tokens totalling P")
    g.add_argument("--repeat-penalty", type=float, dest="repeat_penalty", help="penalty of repeated tokens")
    g.add_argument("--repeat-last-n", type=int, dest="repeat_last_n", help="tokens the repeat penalty looks back on")
    g.add_argument("--seed", type=int, help="random seed of sampling")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    if color:
        g.add_argument("--color", action="store_true", help="colour the prompt and the output on a terminal")


def add_hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kwargs: Any) -> None:
    """An old flag name kept working for existing scripts but left out of ``--help``: it sets
    ``dest`` like the documented flag, and leaves that flag's default alone when absent."""
    p.add_argument(flag, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    """The generation parameters given by arguments of :func:`add_generation_arguments`, checked
    now (``-n -5``, ``--temp nan``: one error before a model loads or a prompt is echoed)."""
    from openllm_hub.core.config import GenerationConfig

    params = {k: getattr(args, k) for k in GENERATION_PARAMS if getattr(args, k, None) is not None}
    GenerationConfig.build(**params)
    return params


def colors(args: argparse.Namespace) -> tuple[str, str, str]:
    """ANSI (prompt, reset, output) colours when ``--color`` was given and stdout is a terminal."""
    if getattr(args, "color", False) and sys.stdout.isatty():
        return "\033[33m", "\033[0m", "\033[1;32m"
    return "", "", ""


__all__ = [
    "GENERATION_PARAMS",
    "LOAD_FLAG_OPTIONS",
    "add_device_arguments",
    "add_generation_arguments",
    "add_hidden_alias",
    "add_load_arguments",
    "add_option_argument",
    "colors",
    "family_options",
    "generation_params",
    "load_from_args",
    "load_options",
    "parse_lora",
    "parse_options",
]
