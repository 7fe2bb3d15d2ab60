"""``openllm-hub``: a thin command line over the public API.

It parses, calls the API, prints. Bad input ends with one line on stderr and exit code 1
(``--debug`` shows the traceback). Plugins add subcommands through ``register_commands``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openllm_hub.cli_args import (
    add_generation_arguments,
    add_load_arguments,
    add_option_argument,
    colors,
    generation_params,
    load_from_args,
    parse_options,
)
from openllm_hub.errors import InvalidParameterError, OpenLLMHubError

PROG = "openllm-hub"


# ---- helpers -------------------------------------------------------------------------------
def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# ---- commands --------------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    from openllm_hub.core.registry import API_VERSION, get_registry

    reg = get_registry()
    records = [r.as_dict() for r in [*(reg.builtins.values() if args.all else ()), *reg.plugins.values()]]
    if args.json:
        _print_json({"api_version": API_VERSION, "plugins": records})
        return 0
    if not records:
        print("no plugins installed (pip install openllm-hub-llama, ...)")
    for r in records:
        status = f"BROKEN: {r['error']}" if r["error"] else "ok"
        print(f"{r['name']} {r['version'] or ''}  [{status}]")
        if r["families"]:
            print(f"  families: {', '.join(r['families'])}")
        if r["templates"]:
            print(f"  chat templates: {', '.join(r['templates'])}")
        if r["hooks"]:
            print(f"  hooks: {', '.join(r['hooks'])}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from openllm_hub.core.device import probe_machine
    from openllm_hub.core.registry import get_registry

    m = probe_machine()
    engines: dict[str, Any] = {}
    for record, result in get_registry().call_each("report_engines"):
        if isinstance(result, Exception):
            engines[record.name] = {"error": f"{type(result).__name__}: {result}"}
        elif result:
            engines.update(result)
    data = {"cpu_threads": m.cpu_threads, "gpus": [g.__dict__ for g in m.gpus], "gpu_note": m.gpu_note,
            "engines": engines}
    if args.json:
        _print_json(data)
        return 0
    print(f"CPU threads: {m.cpu_threads}")
    print(f"CUDA GPUs: {m.gpu_note}")
    for g in m.gpus:
        print(f"  cuda:{g.index} {g.name}: {g.free_mib} MiB free of {g.total_mib} MiB")
    for name, facts in engines.items():
        print(f"{name}:")
        for k, v in facts.items():
            print(f"  {k}: {v}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.detect_only:
        from openllm_hub.api import detect, resolve_source

        fam, det = detect(resolve_source(args.model).path, family=args.family)
        data: dict[str, Any] = {"family": fam.name, "format": det.format, "confidence": det.confidence,
                                "reason": det.reason}
    else:
        with load_from_args(args) as model:
            data = model.info.as_dict()
    if args.json:
        _print_json(data)
    else:
        for k, v in data.items():
            if v not in (None, {}, ""):
                print(f"{k}: {v}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.file:
        prompt = Path(args.file).read_text(encoding="utf-8")
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise InvalidParameterError("no prompt", where="run", fix="pass -p PROMPT or -f FILE")
    if args.nproc != 1:
        from openllm_hub.api import launch

        return launch(args.model, prompt, nproc=args.nproc, family=args.family, device=args.device,
                      threads=args.threads, dtype=args.dtype, params=generation_params(args),
                      **parse_options(args.option))
    c_prompt, c_reset, c_out = colors(args)
    with load_from_args(args) as model:
        params = generation_params(args)
        if args.echo:
            print(f"{c_prompt}{prompt}{c_reset}", end="", flush=True)
        final = None
        for chunk in model.stream(prompt, **params):
            print(f"{c_out}{chunk.text}{c_reset}" if chunk.text else "", end="", flush=True)
            final = chunk
        print()
        if args.verbose and final is not None and final.usage and final.timings:
            t = final.timings
            print(f"[{final.usage.prompt_tokens} prompt tokens at {t.prompt_tokens_per_second:.1f} tok/s, "
                  f"{final.usage.completion_tokens} generated at {t.generation_tokens_per_second:.1f} tok/s, "
                  f"finish: {final.finish_reason}]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    c_prompt, c_reset, c_out = colors(args)
    with load_from_args(args) as model:
        template = args.template or model.default_chat_template
        model.chat_template(template)  # fail early on an unknown name
        history: list[dict[str, str]] = []
        system = Path(args.system_file).read_text(encoding="utf-8") if args.system_file else args.system
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"chatting with {model.info.family} ({template} template). Ctrl-C stops an answer, "
                  "Ctrl-D or /exit quits, /reset clears the history.", file=sys.stderr)
        while True:
            try:
                if interactive:
                    print(f"{c_prompt}> {c_reset}", end="", flush=True)
                line = sys.stdin.readline()
            except KeyboardInterrupt:
                print(file=sys.stderr)
                return 0
            if not line:
                return 0
            text = line.rstrip("\n")
            if text.strip() in ("/exit", "/quit"):
                return 0
            if text.strip() == "/reset":
                history.clear()
                continue
            if not text.strip():
                continue
            messages = ([{"role": "system", "content": system}] if system else []) + history
            messages.append({"role": "user", "content": text})
            answer: list[str] = []
            try:
                for chunk in model.stream_chat(messages, template=template, **generation_params(args)):
                    answer.append(chunk.text)
                    print(f"{c_out}{chunk.text}{c_reset}" if chunk.text else "", end="", flush=True)
            except KeyboardInterrupt:
                print(" [stopped]", end="", file=sys.stderr)
            print(flush=True)
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(answer).strip()}]


def cmd_convert(args: argparse.Namespace) -> int:
    from openllm_hub.api import convert

    result = convert(args.src, args.dst, to=args.to, outtype=args.outtype, verify=args.verify, force=args.force,
                     family=args.family, options=parse_options(args.option))
    print(f"wrote {result.path} ({result.family} {result.source_format} -> {result.target}"
          f"{', ' + result.outtype if result.outtype else ''})")
    if result.verify is not None:
        print(f"verify: {result.verify.summary()}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from openllm_hub.api import quantize

    out = quantize(args.src, args.dst, args.type, force=args.force, family=args.family, threads=args.threads)
    print(f"wrote {out} ({args.type}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from openllm_hub.api import merge_lora

    out = merge_lora(args.base, args.adapters, args.output, output_type=args.output_type, force=args.force,
                     family=args.family)
    print(f"wrote {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from openllm_hub.api import add_model_name, remove_model_name, user_model_names
    from openllm_hub.core.registry import get_registry

    if args.action == "add":
        if not args.name or not args.path:
            raise InvalidParameterError("usage: openllm-hub models add NAME PATH", where="models")
        add_model_name(args.name, args.path, family=args.family, force=args.force)
        print(f"added {args.name} -> {Path(args.path).resolve()}")
        return 0
    if args.action == "remove":
        if not args.name:
            raise InvalidParameterError("usage: openllm-hub models remove NAME", where="models")
        remove_model_name(args.name)
        print(f"removed {args.name}")
        return 0
    rows: list[dict[str, Any]] = [
        {"name": mn.name, "family": fam.name, "source": "built-in", "description": mn.description}
        for fam, mn in get_registry().model_names()
    ]
    rows += [{"name": n, "family": e.get("family"), "source": "user", "description": e["path"]}
             for n, e in user_model_names().items()]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<20} {r['family'] or '?':<10} {r['source']:<9} {r['description']}")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from openllm_hub.core.perplexity import perplexity

    text = Path(args.file).read_text(encoding="utf-8")
    with load_from_args(args) as model:
        r = perplexity(model, text, window=args.window, stride=args.stride)
    if args.json:
        _print_json(r.__dict__)
    else:
        print(f"perplexity {r.perplexity:.4f} over {r.tokens_scored} tokens (window {r.window}, stride {r.stride})")
    return 0


# ---- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from openllm_hub import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Run, convert and quantize open LLMs of many families.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins, their families and load errors")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also list the core's built-in plugin (its chat templates)")
    p.set_defaults(handler=cmd_plugins)

    p = sub.add_parser("devices", help="CPU threads, CUDA GPUs and what each engine was built with")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_devices)

    p = sub.add_parser("info", help="load a model and describe it")
    add_load_arguments(p)
    p.add_argument("--detect-only", action="store_true", help="only say which family and format it is")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("run", help="generate text from a prompt (flags after llama.cpp's main)")
    add_load_arguments(p)
    p.add_argument("-p", "--prompt")
    p.add_argument("-f", "--file", help="read the prompt from a file")
    p.add_argument("--no-echo", dest="echo", action="store_false", help="do not print the prompt first")
    p.add_argument("-v", "--verbose", action="store_true", help="print token counts and speeds to stderr")
    p.add_argument("--nproc", type=int, default=1,
                   help="run over N local processes (families with tensor parallelism, e.g. glm130b)")
    add_generation_arguments(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("chat", help="interactive chat (instruction mode, like llama.cpp -ins)")
    add_load_arguments(p)
    p.add_argument("--template", help="chat template name (default: the model's)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--system-file", help="read the system prompt from a file (like -f prompts/alpaca.txt)")
    add_generation_arguments(p, n_default=256)
    p.set_defaults(handler=cmd_chat)

    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", required=True, help="target format, e.g. gguf, hf, meta")
    p.add_argument("--outtype", help="output type, e.g. f32, f16, bf16, q8_0")
    p.add_argument("--verify", action="store_true", help="compare logits of source and result before writing")
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument("--family")
    add_option_argument(p, what="converter option")
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("quantize", help="quantize a checkpoint (e.g. GGUF q4_0)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("type", help="quantization type, e.g. q4_0, q8_0, q4_K_M")
    p.add_argument("--force", action="store_true")
    p.add_argument("--family")
    p.add_argument("-t", "--threads", type=int)
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("merge-lora", help="merge LoRA adapters into a base checkpoint")
    p.add_argument("base")
    p.add_argument("adapters", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--output-type", default="hf", help="hf or pth")
    p.add_argument("--force", action="store_true")
    p.add_argument("--family")
    p.set_defaults(handler=cmd_merge_lora)

    p = sub.add_parser("models", help="list model names; add or remove your own")
    p.add_argument("action", nargs="?", choices=("list", "add", "remove"), default="list")
    p.add_argument("name", nargs="?")
    p.add_argument("path", nargs="?")
    p.add_argument("--family")
    p.add_argument("--force", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("perplexity", help="perplexity of a model over a text file (sliding window)")
    add_load_arguments(p)
    p.add_argument("file")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_perplexity)

    from openllm_hub.server.cli import add_serve_command

    add_serve_command(sub)

    _plugin_commands(sub)
    return parser


_PLUGIN_COMMAND_ERRORS: list[str] = []


def _plugin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from openllm_hub.core.registry import get_registry

    for record, result in get_registry().call_each("register_commands", cli=sub):
        if isinstance(result, Exception):
            _PLUGIN_COMMAND_ERRORS.append(f"plugin {record.name}: register_commands failed: {result}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("OPENLLM_HUB_DEBUG"))
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return int(args.handler(args) or 0)
    except OpenLLMHubError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc.render()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
