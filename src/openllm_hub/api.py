"""The public entry points: load, detect, convert, quantize, merge_lora, model names."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from openllm_hub.core.convert import Converter, ConvertRequest, VerifyReport, verify_models
from openllm_hub.core.detect import Probe
from openllm_hub.core.device import normalize_dtype, parse_device, plan_placement
from openllm_hub.core.family import Detection, Family, LoadRequest
from openllm_hub.core.io import atomic_output, check_destination, write_json
from openllm_hub.core.lora import MergeRequest
from openllm_hub.core.model import Model
from openllm_hub.core.paths import config_dir
from openllm_hub.core.progress import progress_enabled
from openllm_hub.core.quantize import QuantizeRequest
from openllm_hub.core.registry import get_registry
from openllm_hub.errors import (
    ConversionError,
    CorruptFileError,
    InvalidParameterError,
    NotFoundError,
    UnknownFormatError,
)

#: Confidences closer than this between two families make a detection ambiguous.
AMBIGUITY_MARGIN = 0.05
DEVICE_OPTIONS = ("dtype", "gpu_layers", "threads")


@dataclass(frozen=True)
class Resolved:
    """A source resolved to a path, with options a model name brings along."""

    path: Path
    family: str | None = None
    options: Mapping[str, Any] | None = None
    name: str | None = None


# ---- model names -----------------------------------------------------------------------
def _user_names_file() -> Path:
    return config_dir() / "models.json"


def user_model_names() -> dict[str, dict[str, Any]]:
    """Names the user gave to paths (``openllm-hub models add``), from ``models.json`` in the
    config folder; a malformed file or entry is one :class:`CorruptFileError` naming the file,
    the entry and the fix."""
    path = _user_names_file()
    fix = f"repair or delete {path} (openllm-hub models add NAME PATH writes it again)"
    try:
        if not path.exists():
            return {}
        raw = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(f"cannot read the model names file: {exc.strerror or exc}", where=path,
                               fix=fix) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"the model names file is not UTF-8 (byte {exc.start})", where=path, fix=fix) from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"invalid JSON: {exc}", where=path, fix=fix) from None
    except RecursionError:
        raise CorruptFileError("invalid JSON: nested too deeply", where=path, fix=fix) from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"expected an object of name -> {{path, family, options}}, found "
                               f"{type(data).__name__}", where=path, fix=fix)
    for name, entry in data.items():
        _check_name_entry(name, entry, path, fix)
    return data


def _check_name_entry(name: str, entry: Any, path: Path, fix: str) -> None:
    what = f"entry {name!r}"
    if not isinstance(entry, dict):
        raise CorruptFileError(f"{what} is a {type(entry).__name__}, not an object with a path", where=path, fix=fix)
    unknown = sorted(set(entry) - {"path", "family", "options"})
    if unknown:
        raise CorruptFileError(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}", where=path,
                               fix=f"keep only path, family and options; {fix}")
    p = entry.get("path")
    if not isinstance(p, str) or not p or "\0" in p:
        raise CorruptFileError(f"{what} has no path (a non-empty string), found {p!r}", where=path, fix=fix)
    if not isinstance(entry.get("family"), (str, type(None))):
        raise CorruptFileError(f"{what}: family must be a string, found {entry['family']!r}", where=path, fix=fix)
    opts = entry.get("options")
    if not isinstance(opts, (dict, type(None))) or (opts and not all(isinstance(k, str) for k in opts)):
        raise CorruptFileError(f"{what}: options must be an object, found {opts!r}", where=path, fix=fix)


def add_model_name(name: str, path: str | Path, *, family: str | None = None,
                   options: Mapping[str, Any] | None = None, force: bool = False) -> None:
    """Give ``path`` a name usable as ``load(name)``."""
    if not name or not name.strip() or any(c in name for c in "\0\n\r") or len(name) > 200:
        raise InvalidParameterError(f"{name!r} cannot be a model name", where="models add",
                                    fix="use a short name without line breaks, e.g. my-7b")
    try:
        p = Path(path).expanduser().resolve()
        exists = p.exists()
    except (OSError, RuntimeError, ValueError) as exc:
        raise InvalidParameterError(f"cannot use this path: {exc}", where=str(path), fix="check the path") from None
    if not exists:
        raise NotFoundError("path not found", where=p)
    builtin = next((fam.name for fam, mn in get_registry().model_names() if mn.name == name), None)
    if builtin is not None:
        raise InvalidParameterError(f"{name!r} is a built-in model name (from the {builtin} plugin)",
                                    where="models add", fix="pick another name; built-in names are never shadowed")
    names = user_model_names()
    if name in names and not force:
        raise InvalidParameterError(f"the name {name!r} is already taken", where=str(_user_names_file()),
                                    fix="pass --force to replace it, or pick another name")
    names[name] = {"path": str(p), **({"family": family} if family else {}), **({"options": dict(options)}
                                                                                 if options else {})}
    _save_names(names)


def remove_model_name(name: str) -> None:
    names = user_model_names()
    if name not in names:
        raise NotFoundError(f"no user model named {name!r}", where=str(_user_names_file()))
    del names[name]
    _save_names(names)


def _save_names(names: dict[str, Any]) -> None:
    path = _user_names_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, force=True) as tmp:
        write_json(tmp, names)


def resolve_source(source: str | Path) -> Resolved:
    """A path as given, else a plugin's built-in name, else a user model name.

    Built-in names come first so that a user entry can never silently shadow one (``models add``
    refuses such names; an old or hand-edited entry is listed as hidden by ``openllm-hub models``)."""
    if isinstance(source, str) and not source.strip():
        raise InvalidParameterError("no model given (an empty name)", where="model",
                                    fix="pass a file, a folder or a model name (openllm-hub models)")
    p = Path(source).expanduser()
    try:
        found = p.exists()
    except (OSError, ValueError) as exc:  # over-long names, NUL bytes
        raise InvalidParameterError(f"cannot use this path: {exc}", where=str(source)[:200],
                                    fix="check the path") from None
    if found:
        return Resolved(p)
    if p.is_symlink():
        raise NotFoundError("the path is a broken symbolic link (or a symlink loop)", where=p,
                            fix="point the link at an existing model")
    name = str(source)
    reg = get_registry()
    for fam, mn in reg.model_names():
        if mn.name == name:
            return Resolved(mn.resolve(), fam.name, mn.options, name)
    user = user_model_names()
    if name in user:
        entry = user[name]
        return Resolved(Path(entry["path"]), entry.get("family"), entry.get("options"), name)
    known = sorted({*user, *(mn.name for _, mn in reg.model_names())})
    raise NotFoundError(
        f"{name[:200]!r} is neither an existing path nor a model name",
        where=str(p.absolute())[:300],
        fix=("check the path; known model names: " + ", ".join(known)) if known else "check the path",
    )


# ---- cache -------------------------------------------------------------------------------
def clean_cache() -> tuple[Path, int]:
    """Remove the temporaries that killed writers left anywhere in the cache folder (GGUF
    cache, converted checkpoints); live writers' temporaries are kept. Returns the cache folder
    and the bytes freed. (Each cache folder is also cleaned whenever it is used.)"""
    from openllm_hub.core.io import remove_stale_temporaries_below
    from openllm_hub.core.paths import cache_dir

    root = cache_dir()
    return root, remove_stale_temporaries_below(root) if root.is_dir() else 0


# ---- detection ---------------------------------------------------------------------------
def detect(path: str | Path, *, family: str | None = None) -> tuple[Family, Detection]:
    """Which family and format ``path`` holds, judged from its content."""
    probe = Probe(path)
    if not probe.path.exists():
        raise NotFoundError("path not found", where=probe.path)
    reg = get_registry()
    candidates = [reg.family(family)] if family else list(reg.families.values())
    scored: list[tuple[Family, Detection]] = []
    for fam in candidates:
        det = fam.detect(probe)
        if det is not None and det.confidence > 0:
            scored.append((fam, det))
    if not scored:
        accepted = "; ".join(f"{f.name}: {', '.join(f.formats)}" for f in candidates) or "no families installed"
        broken = ", ".join(f"{r.name} ({r.error})" for r in reg.broken())
        raise UnknownFormatError(
            f"no installed family recognises this input (examined: {probe.describe()})",
            where=probe.path,
            fix=f"accepted formats are {accepted}" + (f"; broken plugins: {broken}" if broken else "")
            + ("" if family else "; or name the family with family=..."),
        )
    scored.sort(key=lambda fd: fd[1].confidence, reverse=True)
    best = scored[0]
    rivals = [fd for fd in scored[1:] if best[1].confidence - fd[1].confidence < AMBIGUITY_MARGIN]
    if rivals:
        names = ", ".join(f"{f.name} ({d.format}: {d.reason})" for f, d in [best, *rivals])
        raise UnknownFormatError(f"ambiguous input: {names}", where=probe.path,
                                 fix="name the family, e.g. family=" + repr(best[0].name))
    return best


# ---- load ------------------------------------------------------------------------------------
def validate_options(fam: Family, options: Mapping[str, Any], *, where: str | Path) -> BaseModel:
    """The family's load options, validated; unknown or invalid ones are named in the error."""
    try:
        return fam.options(**options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidParameterError(
            f"invalid load options for {fam.name}: {problems}",
            where=str(where),
            fix="valid options: " + ", ".join([*fam.options.model_fields, *DEVICE_OPTIONS]),
        ) from None


def load(source: str | Path, *, family: str | None = None, device: str = "auto", **options: Any) -> Model:
    """Load a model from a file, a folder or a model name.

    The family and format are detected from the content. ``device`` is ``auto``, ``cpu``,
    ``cpu:blas``, ``cuda``, ``cuda:N`` or ``cuda:N,M``; ``dtype``, ``gpu_layers`` and
    ``threads`` refine it. Other keyword options are the family's (rejected by name when
    unknown).

    Before the family's loader runs, a model whose memory floor (its family's ``memory``
    description; 4-bit weights, a 1-token context) exceeds the placed device's memory is
    refused with :class:`IncompatibleDeviceError` and the numbers; ``OPENLLM_HUB_DEVICE_MEMORY``
    overrides the device's figure (e.g. ``24G``) or, set to ``off``, skips the check.
    """
    resolved = resolve_source(source)
    opts = {**(resolved.options or {}), **options}
    fam, det = detect(resolved.path, family=family or resolved.family)
    if not fam.can_load(det.format):
        hint = fam.not_loadable_hint(resolved.path, det.format) if fam.not_loadable_hint else \
            f"convert it first (openllm-hub convert {resolved.path} OUT --to ...)"
        raise InvalidParameterError(f"{fam.name} {det.format} checkpoints cannot be run directly",
                                    where=resolved.path, fix=hint)
    dev_opts = {k: opts.pop(k) for k in DEVICE_OPTIONS if k in opts}
    spec = parse_device(device, **dev_opts)
    validated = validate_options(fam, opts, where=resolved.path)
    run_fmt = fam.run_format(det.format, validated) if fam.run_format else det.format
    placement = plan_placement(spec, fam.devices, run_fmt)
    from openllm_hub.core.plan import refuse_if_too_big

    refuse_if_too_big(fam.memory, resolved.path, det.format, placement)  # early, with the numbers
    return fam.load(LoadRequest(path=resolved.path, format=det.format, detection=det, placement=placement,
                                options=validated))


def launch(source: str | Path, prompt: str, *, nproc: int, family: str | None = None, device: str = "auto",
           threads: int | None = None, dtype: str | None = None, params: Mapping[str, Any] | None = None,
           **options: Any) -> int:
    """Run ``prompt`` over ``nproc`` local processes with a family that supports it (e.g.
    GLM-130B's tensor parallelism); rank 0 streams the text to stdout. Returns the exit code."""
    from openllm_hub.core.config import GenerationConfig
    from openllm_hub.core.family import LaunchRequest

    if nproc < 1:
        raise InvalidParameterError("nproc must be at least 1", where="--nproc")
    resolved = resolve_source(source)
    fam, _ = detect(resolved.path, family=family or resolved.family)
    if fam.launch is None:
        multi = [f.name for f in get_registry().families.values() if f.launch is not None]
        raise InvalidParameterError(f"{fam.name} models do not run over several processes", where="--nproc",
                                    fix="drop --nproc" + (f" (families that do: {', '.join(multi)})" if multi else ""))
    config = GenerationConfig.build(**dict(params or {}))
    opts = {**(resolved.options or {}), **options}
    validated = validate_options(fam, opts, where=resolved.path)
    return fam.launch(LaunchRequest(path=resolved.path, nproc=nproc, device=device, prompt=prompt,
                                    params=config.model_dump(exclude_unset=True), options=validated,
                                    threads=threads, dtype=normalize_dtype(dtype)))


# ---- convert / quantize / merge -------------------------------------------------------------
def find_converter(fam: Family, source_format: str, target: str) -> Converter:
    for conv in fam.converters:
        if conv.source == source_format and conv.target == target:
            return conv
    offered = ", ".join(f"{c.source}->{c.target}" for c in fam.converters) or "none"
    raise InvalidParameterError(f"{fam.name} has no converter from {source_format} to {target}",
                                where=f"family {fam.name}", fix=f"available conversions: {offered}")


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    family: str
    source_format: str
    target: str
    outtype: str | None
    verify: VerifyReport | None


def convert(src: str | Path, dst: str | Path, *, to: str, outtype: str | None = None, verify: bool = False,
            force: bool = False, family: str | None = None, progress: bool | None = None,
            options: Mapping[str, Any] | None = None) -> ConversionResult:
    """Convert ``src`` to format ``to`` at ``dst``; with ``verify`` compare both sides' logits
    and refuse to write the output when they differ beyond the converter's bound."""
    src_path = resolve_source(src).path
    fam, det = detect(src_path, family=family)
    conv = find_converter(fam, det.format, to)
    otype = outtype or conv.default_outtype
    if conv.outtypes and otype not in conv.outtypes:
        raise InvalidParameterError(f"unknown outtype {otype!r} for {det.format}->{to}", where="outtype",
                                    fix=f"use one of: {', '.join(conv.outtypes)}")
    if verify and (otype or "") not in conv.verify_bounds:
        bounded = ", ".join(k for k in conv.verify_bounds if k) or "none"
        raise InvalidParameterError(
            f"--verify has no measured bound for {det.format}->{to} outtype {otype!r}, so it could not fail",
            where="verify", fix=f"drop --verify for this outtype; outtypes it can verify: {bounded}")
    conv_opts = conv.validate_options(options)
    out = check_destination(dst, sources=[src_path], force=force)
    show = progress_enabled() if progress is None else progress
    report: VerifyReport | None = None
    with atomic_output(out, force=force, is_dir=conv.output_is_dir) as tmp:
        conv.run(ConvertRequest(src=src_path, dst=tmp, source_format=det.format, outtype=otype, progress=show,
                                options=conv_opts))
        if verify:
            bound = conv.verify_bounds[otype or ""]
            with load(src_path, family=fam.name, device="cpu", **conv.source_load_options) as a, \
                    load(tmp, family=fam.name, device="cpu", **conv.target_load_options) as b:
                report = verify_models(a, b, bound=bound, require_greedy=(otype or "") in conv.exact_outtypes)
            if not report.passed:
                raise ConversionError(f"verification failed: {report.summary()}", where=out,
                                      fix="nothing was written; report this with the checkpoint's config")
    return ConversionResult(out, fam.name, det.format, to, otype, report)


def quantize(src: str | Path, dst: str | Path, scheme: str, *, force: bool = False, family: str | None = None,
             threads: int | None = None, progress: bool | None = None) -> Path:
    """Quantize the checkpoint at ``src`` with ``scheme`` (e.g. q4_0) into ``dst``."""
    src_path = resolve_source(src).path
    fam, det = detect(src_path, family=family)
    quants = [q for q in fam.quantizers if q.format == det.format]
    if not quants:
        raise InvalidParameterError(f"{fam.name} cannot quantize {det.format} files", where=src_path,
                                    fix="formats it quantizes: " + (", ".join(q.format for q in fam.quantizers)
                                                                     or "none"))
    q = next((q for q in quants if q.scheme(scheme) is not None), None)
    if q is None:
        valid = sorted({s for q in quants for s in q.schemes})
        raise InvalidParameterError(f"unknown quantization type {scheme!r}", where="quantize",
                                    fix=f"valid types: {', '.join(valid)}")
    out = check_destination(dst, sources=[src_path], force=force)
    with atomic_output(out, force=force, is_dir=q.output_is_dir) as tmp:
        q.run(QuantizeRequest(src=src_path, dst=tmp, scheme=q.scheme(scheme) or scheme, threads=threads,
                              progress=progress_enabled() if progress is None else progress))
    return out


def merge_lora(base: str | Path, adapters: Sequence[str | Path], dst: str | Path, *, output_type: str = "hf",
               force: bool = False, family: str | None = None, progress: bool | None = None) -> Path:
    """Merge LoRA ``adapters`` (in order) into ``base``; write the merged checkpoint to ``dst``."""
    base_path = resolve_source(base).path
    fam, det = detect(base_path, family=family)
    merger = fam.lora_merger
    if merger is None or det.format not in merger.base_formats:
        raise InvalidParameterError(f"{fam.name} cannot merge LoRA adapters into {det.format} checkpoints",
                                    where=base_path)
    if output_type not in merger.output_types:
        raise InvalidParameterError(f"unknown output type {output_type!r}", where="merge-lora",
                                    fix=f"use one of: {', '.join(merger.output_types)}")
    if not adapters:
        raise InvalidParameterError("no adapters given", where="merge-lora")
    paths = tuple(Path(a) for a in adapters)
    for a in paths:
        if not a.exists():
            raise NotFoundError("adapter not found", where=a)
    out = check_destination(dst, sources=[base_path, *paths], force=force)
    with atomic_output(out, force=force, is_dir=True) as tmp:
        merger.run(MergeRequest(base=base_path, base_format=det.format, adapters=paths, dst=tmp,
                                output_type=output_type,
                                progress=progress_enabled() if progress is None else progress))
    return out
