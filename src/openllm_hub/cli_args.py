"""Command-line arguments shared by every ``openllm-hub`` command that loads a model.

``openllm-hub run/chat/info/perplexity`` (:mod:`openllm_hub.cli`), ``openllm-hub serve``
(:mod:`openllm_hub.server.cli`) and plugin commands added through ``register_commands`` use
these, so a model is named, placed and given options the same way everywhere::

    from openllm_hub.cli_args import add_load_arguments, load_from_args

    p = cli.add_parser("mycommand", help=...)
    add_load_arguments(p)          # MODEL, --family, --device, --dtype, -ngl, -t, -c, -o KEY=VALUE
    p.set_defaults(handler=lambda args: run(load_from_args(args)))

Only argparse and json are imported here; the model loads when :func:`load_from_args` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from openllm_hub.errors import InvalidParameterError

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


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL and the flags that choose how it loads: family, device, dtype, GPU layers,
    threads, context size and family options (``-o``)."""
    p.add_argument("model", help="a file, folder or model name (see `openllm-hub models`)")
    p.add_argument("--family", help="skip detection and use this family")
    p.add_argument("--device", default="auto", help="auto, cpu, cpu:blas, cuda, cuda:N or cuda:N,M (default auto)")
    p.add_argument("--dtype", help="fp32, fp16 or bf16 (engines that choose a dtype)")
    p.add_argument("-ngl", "--gpu-layers", type=int, dest="gpu_layers", help="layers to keep on the GPU (-1 = all)")
    p.add_argument("-t", "--threads", type=int, help="CPU threads")
    p.add_argument("-c", "--ctx-size", type=int, dest="n_ctx", help="context length (families that take n_ctx)")
    add_option_argument(p)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options for ``load()`` from arguments of :func:`add_load_arguments`:
    the ``-o`` pairs, overridden by the flags that were given."""
    opts = parse_options(args.option)
    for key in LOAD_FLAG_OPTIONS:
        if getattr(args, key, None) is not None:
            opts[key] = getattr(args, key)
    return opts


def load_from_args(args: argparse.Namespace) -> Any:
    """Load the model named by arguments of :func:`add_load_arguments` (returns a ``Model``)."""
    from openllm_hub.api import load

    return load(args.model, family=args.family, device=args.device, **load_options(args))


def add_generation_arguments(p: argparse.ArgumentParser, *, n_default: int = 128) -> None:
    """Sampling flags with llama.cpp's names (-n, --temp, --top-k, ...) and ``--color``."""
    g = p.add_argument_group("sampling (llama.cpp's names)")
    g.add_argument("-n", "--n-predict", type=int, default=n_default, dest="max_new_tokens", help="tokens to generate")
    g.add_argument("--temp", type=float, dest="temperature", help="temperature (0 = greedy)")
    g.add_argument("--top-k", type=int, dest="top_k")
    g.add_argument("--top-p", type=float, dest="top_p")
    g.add_argument("--repeat-penalty", type=float, dest="repeat_penalty")
    g.add_argument("--repeat-last-n", type=int, dest="repeat_last_n")
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--color", action="store_true", help="colour the prompt and the output on a terminal")


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    """The generation parameters given by arguments of :func:`add_generation_arguments`."""
    return {k: getattr(args, k) for k in GENERATION_PARAMS if getattr(args, k, None) is not None}


def colors(args: argparse.Namespace) -> tuple[str, str, str]:
    """ANSI (prompt, reset, output) colours when ``--color`` was given and stdout is a terminal."""
    if getattr(args, "color", False) and sys.stdout.isatty():
        return "\033[33m", "\033[0m", "\033[1;32m"
    return "", "", ""


__all__ = [
    "GENERATION_PARAMS",
    "LOAD_FLAG_OPTIONS",
    "add_generation_arguments",
    "add_load_arguments",
    "add_option_argument",
    "colors",
    "generation_params",
    "load_from_args",
    "load_options",
    "parse_options",
]
