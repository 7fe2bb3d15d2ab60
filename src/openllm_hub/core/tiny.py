"""Tiny random checkpoints of any family (``openllm-hub tiny FAMILY OUT``).

Each family that can, says so as data (:class:`~openllm_hub.core.family.TinyBuilder` in
``Family.tiny``); this module picks the family and format, checks the ``-o`` keys, writes the
checkpoint atomically (an existing OUT is refused unless ``force``) and checks that what was
written is detected as that family before it appears at OUT. No engine is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openllm_hub.core.family import Family, TinyBuilder
from openllm_hub.core.io import atomic_output
from openllm_hub.core.registry import get_registry
from openllm_hub.errors import CorruptFileError, InvalidParameterError


@dataclass(frozen=True)
class TinyResult:
    """What ``tiny`` wrote: the path to load, its family and the format written."""

    path: Path
    family: str
    format: str


def tiny_families() -> list[tuple[Family, TinyBuilder]]:
    """Every registered family that writes tiny checkpoints, by name."""
    fams = sorted(get_registry().families.values(), key=lambda f: f.name)
    return [(f, f.tiny) for f in fams if f.tiny is not None]


def _builder(family: str) -> tuple[Family, TinyBuilder]:
    fam = get_registry().family(family)
    if fam.tiny is None:
        able = ", ".join(f.name for f, _ in tiny_families()) or "none installed"
        raise InvalidParameterError(f"the {fam.name} family does not write tiny checkpoints", where=family,
                                    fix=f"families that do: {able}")
    return fam, fam.tiny


def write_tiny(family: str, out: str | Path, *, fmt: str | None = None, options: Mapping[str, Any] | None = None,
               force: bool = False) -> TinyResult:
    """Write a small random checkpoint of ``family`` (a name or alias) at ``out`` in ``fmt``
    (default: the family's first tiny format); returns where it is and what it is."""
    fam, builder = _builder(family)
    chosen = fmt or builder.formats[0]
    if chosen not in builder.formats:
        raise InvalidParameterError(f"{fam.name} writes no tiny {chosen!r} checkpoint", where="--format",
                                    fix=f"use one of: {', '.join(builder.formats)}")
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(builder.options))
    if unknown:
        valid = ", ".join(sorted(builder.options)) or "none"
        raise InvalidParameterError(f"unknown tiny option(s) {', '.join(unknown)} for {fam.name}", where="-o",
                                    fix=f"valid options: {valid}")
    target = Path(out)
    with atomic_output(target, force=force) as tmp:
        made = Path(builder.write(tmp, chosen, opts))
        inner = made.relative_to(tmp) if made != tmp else None
        _check_detected(fam, made)
    return TinyResult(target / inner if inner is not None else target, fam.name, chosen)


def _check_detected(fam: Family, path: Path) -> None:
    """What the builder wrote must be recognised as its family (else a plugin bug: nothing is kept)."""
    from openllm_hub.api import detect

    found, _ = detect(path)
    if found.name != fam.name:
        raise CorruptFileError(f"the tiny {fam.name} checkpoint was detected as {found.name}", where=path,
                               fix=f"report this to the {fam.name} plugin's authors")


def int_option(options: Mapping[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
    """``options[key]`` as an integer of at least ``minimum`` (``default`` when absent), for
    tiny builders' ``-o`` values; anything else is an :class:`InvalidParameterError`."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"option {key} must be an integer >= {minimum}, got {value!r}",
                                    where=f"-o {key}=")
    return value


def choice_option(options: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """``options[key]`` as one of ``choices`` (the first when absent)."""
    value = options.get(key, choices[0])
    if value not in choices:
        raise InvalidParameterError(f"option {key} must be one of {', '.join(choices)}, got {value!r}",
                                    where=f"-o {key}=")
    return str(value)


__all__ = ["TinyResult", "choice_option", "int_option", "tiny_families", "write_tiny"]
