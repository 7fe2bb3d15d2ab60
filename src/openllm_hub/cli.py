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
    family_options,
    generation_params,
    load_from_args,
    parse_options,
)
from openllm_hub.core.debug import DEBUG_ENV, debug_enabled
from openllm_hub.core.io import read_text_file
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


def _launches(args: argparse.Namespace, options: dict[str, Any]) -> bool:
    """Whether ``run --nproc`` will start: MODEL's family runs over several processes and the
    options and sampling flags are valid (else ``launch`` refuses, and no prompt is echoed
    before that error)."""
    from openllm_hub.api import detect, resolve_source, validate_options
    from openllm_hub.core.config import GenerationConfig

    resolved = resolve_source(args.model)
    fam, _ = detect(resolved.path, family=args.family or resolved.family)
    if fam.launch is None:
        return False
    validate_options(fam, {**(resolved.options or {}), **options}, where=resolved.path)
    GenerationConfig.build(**generation_params(args))
    return True


def cmd_run(args: argparse.Namespace) -> int:
    if args.file:
        prompt = read_text_file(args.file, what="-f/--file")
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise InvalidParameterError("no prompt", where="run", fix="pass -p PROMPT or -f FILE")
    c_prompt, c_reset, c_out = colors(args)
    if args.nproc != 1:
        from openllm_hub.api import launch

        options = family_options(args)
        if args.echo and _launches(args, options):  # as without --nproc: the prompt, then rank 0's streamed text
            print(f"{c_prompt}{prompt}{c_reset}", end="", flush=True)
        return launch(args.model, prompt, nproc=args.nproc, family=args.family, device=args.device,
                      threads=args.threads, dtype=args.dtype, params=generation_params(args), **options)
    params = generation_params(args)  # checked before the model loads and the prompt is echoed
    with load_from_args(args) as model:
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
    from openllm_hub.repl import ChatSession, Repl

    system = read_text_file(args.system_file, what="--system-file") if args.system_file else args.system
    params = generation_params(args)  # checked before the first turn
    with load_from_args(args) as model:
        template = args.template or model.default_chat_template
        model.chat_template(template)  # fail early on an unknown name
        session = ChatSession(model, template, params, system=system)
        repl = Repl(session, interactive=sys.stdin.isatty(), colors=colors(args))
        repl.banner(Path(args.model).name or args.model)
        return repl.run()


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
    builtin = {r["name"] for r in rows}
    rows += [{"name": n, "family": e.get("family"), "description": e["path"],
              "source": "user" if n not in builtin else "user, hidden by the built-in name (rename it)"}
             for n, e in user_model_names().items()]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<20} {r['family'] or '?':<10} {r['source']:<9} {r['description']}")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from openllm_hub.core.perplexity import perplexity

    text = read_text_file(args.file, what="perplexity FILE")
    with load_from_args(args) as model:
        r = perplexity(model, text, window=args.window, stride=args.stride)
    if args.json:
        _print_json(r.__dict__)
    else:
        print(f"perplexity {r.perplexity:.4f} over {r.tokens_scored} tokens (window {r.window}, stride {r.stride})")
    return 0


# ---- tiny (small random checkpoints of any family) ------------------------------------------------
def cmd_tiny(args: argparse.Namespace) -> int:
    from openllm_hub.core.tiny import tiny_families, write_tiny

    if args.list:
        builders = tiny_families()
        if args.json:
            _print_json([{"family": fam.name, "formats": list(b.formats), "default": b.formats[0],
                          "options": dict(b.options)} for fam, b in builders])
            return 0
        for fam, b in builders:
            print(f"{fam.name:<9} --format {b.formats[0]} (default)" + "".join(f", {f}" for f in b.formats[1:]))
            for key, what in b.options.items():
                print(f"{'':<9} -o {key + '=...':<12} {what}")
        return 0
    if not args.family or not args.out:
        raise InvalidParameterError("tiny needs a family and an output path", where="tiny",
                                    fix="openllm-hub tiny FAMILY OUT (families and formats: openllm-hub tiny --list)")
    result = write_tiny(args.family, args.out, fmt=args.format, options=parse_options(args.option), force=args.force)
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file()) if Path(args.out).is_dir() \
        else Path(args.out).stat().st_size
    kind = result.family if result.format == result.family else f"{result.family} {result.format}"
    print(f"wrote {result.path} (tiny random {kind}, {size / 1e6:.1f} MB)")
    print(f"try: {PROG} info {result.path}   or   {PROG} run {result.path} -p 'Once upon a time' -n 16")
    return 0


def _add_tiny_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tiny", help="write a small random checkpoint of any family (to try workflows, for bug "
                                    "reports)",
                       description="Write a tiny checkpoint with random weights in a family's real on-disk layout "
                                   "(the files, names and tokenizer a real model of that format has), to try "
                                   "a workflow (run, chat, convert, quantize, serve) without a real model, or to "
                                   "attach to a bug report. The same command writes the same weights (-o seed=N "
                                   "changes them). `openllm-hub tiny --list` shows each family's formats and "
                                   "options.")
    p.add_argument("family", nargs="?", help="family name or alias, e.g. llama, chatglm, rwkv")
    p.add_argument("out", nargs="?", help="where to write it (a file or folder, as the format is; refused if it "
                                          "exists, unless --force)")
    p.add_argument("--format", help="the layout to write (default: the family's first; see --list)")
    add_option_argument(p, what="a builder option, e.g. seed=1 or layers=4 (see --list)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--list", action="store_true", help="list the families, formats and options tiny can write")
    p.add_argument("--json", action="store_true", help="with --list: print JSON")
    p.set_defaults(handler=cmd_tiny)


# ---- cache -------------------------------------------------------------------------------------
def cmd_cache(args: argparse.Namespace) -> int:
    from openllm_hub.api import clean_cache
    from openllm_hub.core.paths import cache_dir

    if args.action == "dir":
        print(cache_dir())
        return 0
    root, freed = clean_cache()
    print(f"removed {freed / 1e6:.1f} MB of temporaries left by killed writers in {root}")
    return 0


def _add_cache_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache", help="the cache folder (GGUF files made on demand): where it is; clean it",
                       description="dir: print the cache folder. clean: remove the temporaries that killed "
                                   "writers left in it (any writer also cleans the folder it writes into).")
    p.add_argument("action", choices=("dir", "clean"))
    p.set_defaults(handler=cmd_cache)


# ---- plan (memory planner; torch-free, reads config alone, writes nothing) ---------------------
def _plan_spec(model: str, family: str | None) -> Any:
    """MODEL as a path or model name (through its family's ``memory`` hook), else a published shape
    name a family offers (``glm-130b``, ``llama-7b``, ...)."""
    from openllm_hub.api import detect, resolve_source
    from openllm_hub.core.registry import get_registry
    from openllm_hub.errors import NotFoundError

    reg = get_registry()
    families = [reg.family(family)] if family else list(reg.families.values())
    if not Path(model).expanduser().exists():
        for fam in families:
            for name, shape in fam.published_shapes.items():
                if name.lower() == model.lower():
                    return shape
    try:
        resolved = resolve_source(model)
    except NotFoundError as exc:
        published = sorted(n for f in families for n in f.published_shapes)
        if not published:
            raise
        raise NotFoundError(exc.what, where=exc.where, fix=f"{exc.fix}; published shapes: {', '.join(published)}") \
            from None
    fam, det = detect(resolved.path, family=family or resolved.family)
    if fam.memory is None:
        planned = [f.name for f in reg.families.values() if f.memory is not None]
        raise InvalidParameterError(f"the {fam.name} family does not describe its memory, so it cannot be planned",
                                    where=resolved.path, fix="families that can: " + (", ".join(planned) or "none"))
    try:
        return fam.memory(resolved.path, det.format)
    except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
        from openllm_hub.errors import CorruptFileError

        raise CorruptFileError(f"cannot read the model's shapes from its config: {exc!r}", where=resolved.path,
                               fix="check the config against the checkpoint's source") from None


def cmd_plan(args: argparse.Namespace) -> int:
    from openllm_hub.core.plan import parse_gpus, plan, this_machine

    bits = {None: None, "int8": 8, "int4": 4}[args.quantize]
    gpus = parse_gpus(args.gpus) if args.gpus else this_machine()
    result = plan(_plan_spec(args.model, args.family), gpus, quantize=bits, offload=args.offload,
                  offload_layers=args.offload_layers, batch=args.batch, seq=args.seq)
    if args.json:
        _print_json(result.as_dict())
    else:
        print(result.render())
    return 0 if result.fits else 1


def _add_plan_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plan", help="will a model fit on these GPUs? (TP degree, quantization, offload)",
                       description="Memory per GPU for weights, KV cache and activations, and the layouts that fit, "
                                   "from the model's config alone (nothing is loaded or written). MODEL: a path or "
                                   "model name of any family that describes its memory, or a published shape "
                                   "name (e.g. glm-130b, llama-7b). Exit code 1 when the requested layout does "
                                   "not fit.")
    p.add_argument("model")
    p.add_argument("--gpus", help="COUNTxMEMORY, e.g. 8x40G (nominal GiB per GPU) or 8xV100; "
                                  "default: this machine's GPUs, else its available RAM")
    p.add_argument("--quantize", choices=("int8", "int4"), default=None,
                   help="weight-only quantization (default: as stored)")
    p.add_argument("--offload", action="store_true", help="offload as few layers as needed to CPU memory")
    p.add_argument("--offload-layers", type=int, default=None, help="offload exactly this many layers")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: the model's context)")
    p.add_argument("--family", help="skip detection and use this family")
    p.add_argument("--json", action="store_true", help="print a JSON object (fits, per_gpu, proposals)")
    p.set_defaults(handler=cmd_plan)


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
    p.add_argument("-p", "--prompt", help="the prompt (printed before the generated text unless --no-echo)")
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
    p.add_argument("src", help="the checkpoint to convert: a file, folder or model name (never modified)")
    p.add_argument("dst", help="where to write the result (a file or folder; refused if it exists, unless --force)")
    p.add_argument("--to", required=True, help="target format, e.g. gguf, hf, meta")
    p.add_argument("--outtype", help="output type, e.g. f32, f16, bf16, q8_0")
    p.add_argument("--verify", action="store_true", help="compare logits of source and result before writing")
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument("--family", help="skip detection and use this family")
    add_option_argument(p, what="converter option, e.g. shards=2 for --to meta; `openllm-hub plugins --json` "
                                "lists each family's converters")
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("quantize", help="quantize a checkpoint (e.g. GGUF q4_0)")
    p.add_argument("src", help="the checkpoint to quantize (never modified)")
    p.add_argument("dst", help="where to write the quantized file (refused if it exists, unless --force)")
    p.add_argument("type", help="quantization type, e.g. q4_0, q8_0, Q4_K_M (any case)")
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument("--family", help="skip detection and use this family")
    p.add_argument("-t", "--threads", type=int, help="CPU threads for the quantizer")
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("merge-lora", help="merge LoRA adapters into a base checkpoint")
    p.add_argument("base", help="the base checkpoint (HF folder or Meta .pth shards; never modified)")
    p.add_argument("adapters", nargs="+", help="PEFT LoRA adapter folders, merged in the order given")
    p.add_argument("-o", "--output", required=True, help="the folder to write the merged model to")
    p.add_argument("--output-type", default="hf",
                   help="hf (HuggingFace folder, for transformers) or pth (Meta consolidated.NN.pth, for llama.cpp's "
                        "converter); default hf")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--family", help="skip detection and use this family")
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
    p.add_argument("file", help="a UTF-8 text file to score")
    p.add_argument("--window", type=int, default=512,
                   help="tokens the model sees at once (default 512; at most the model's context)")
    p.add_argument("--stride", type=int,
                   help="tokens the window moves each step; each step scores only its new tokens, so a smaller "
                        "stride gives every token more context at more cost (default: window/2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_perplexity)

    _add_plan_command(sub)
    _add_tiny_command(sub)
    _add_cache_command(sub)

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
    debug = "--debug" in argv or debug_enabled()
    if debug:  # engines show their libraries' log (llama.cpp's) only then
        os.environ[DEBUG_ENV] = "1"
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
