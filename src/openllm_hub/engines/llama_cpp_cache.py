"""GGUF files made on demand in the cache, so a checkpoint folder can run on llama.cpp.

``load(folder, engine="llama.cpp")`` (LLaMA) or ``load(folder, quantize="q4_0")`` (ChatGLM)
convert the folder once with the family's own ``--to gguf`` converter and, for a llama.cpp
quantization type, quantize that with the family's GGUF quantizer. The loader passes its
:class:`~openllm_hub.core.family.Family`, whose converter and quantizer objects are called
directly (no detection again, no re-entry through the public :func:`openllm_hub.convert`);
each file is written to a temporary name and renamed into place (a killed run leaves no half
file at the entry's name; its temporary, ``.openllm-hub-tmp-<pid>@...`` in the same cache
folder, is removed by the next use of that folder or by ``openllm-hub cache clean``). Entries
are keyed by a fingerprint of the source folder's files, so an edited checkpoint makes new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.core.convert import ConvertRequest
from openllm_hub.core.io import atomic_output, check_destination, remove_stale_temporaries
from openllm_hub.core.progress import progress_enabled
from openllm_hub.core.quantize import QuantizeRequest
from openllm_hub.errors import DestinationExistsError, InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.convert import Converter
    from openllm_hub.core.family import Family
    from openllm_hub.core.quantize import Quantizer

#: Bumped when the layout of cached files changes, so old entries are not reused.
CACHE_VERSION = "1"


def source_fingerprint(folder: Path, options: Mapping[str, Any] | None = None) -> str:
    """A key that changes when any file of ``folder`` changes (name, size, mtime; no data is
    read), when the folder moves, or when the conversion ``options`` differ."""
    h = hashlib.sha256(f"{CACHE_VERSION}\0{Path(folder).resolve()}".encode())
    for f in sorted(Path(folder).iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"\n{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    h.update(json.dumps(dict(options or {}), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cached_gguf(folder: str | Path, family: Family, *, source_format: str = "hf", scheme: str = "f16",
                convert_options: Mapping[str, Any] | None = None) -> Path:
    """The GGUF form of the checkpoint ``folder`` (in ``source_format``) with ``scheme`` (f32,
    f16 or any llama.cpp quantization type), made once into ``cache_dir()/<family>-gguf/`` and
    reused after.

    ``family`` is the caller's own :class:`~openllm_hub.core.family.Family`: its
    ``source_format -> gguf`` converter and its GGUF quantizer do the work, called directly
    (the folder is not detected again and nothing goes back through the public API).
    Quantized files come from the f16 conversion (llama.cpp's usual path; it is kept for the
    next scheme); bf16 comes from f32, which does not clip bf16's range the way f16 would.
    """
    from openllm_hub.core.paths import cache_dir

    src = Path(folder)
    base_type = "f32" if scheme in ("f32", "bf16") else "f16"
    converter = _gguf_converter(family, source_format, base_type)
    quantizer = None if scheme == base_type else _gguf_quantizer(family, scheme)
    out_dir = cache_dir() / f"{family.name}-gguf"
    stem = f"{src.resolve().name}-{source_fingerprint(src, convert_options)}"
    target = out_dir / f"{stem}-{scheme}.gguf"
    remove_stale_temporaries(out_dir)  # what killed writers left here
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{stem}-{base_type}.gguf"
    if not base.is_file():
        _write(base, src, lambda tmp: converter.run(ConvertRequest(
            src=src, dst=tmp, source_format=source_format, outtype=base_type, progress=progress_enabled(),
            options=dict(convert_options or {}))))
    if quantizer is not None:
        run_quantizer = quantizer.run
        _write(target, base, lambda tmp: run_quantizer(QuantizeRequest(
            src=base, dst=tmp, scheme=scheme, progress=progress_enabled())))
    return target


def _write(dst: Path, src: Path, run: Callable[[Path], None]) -> None:
    """Run a writer into a temporary sibling of ``dst``, renamed into place when it succeeds;
    when another process made ``dst`` meanwhile, that one is kept."""
    with contextlib.suppress(DestinationExistsError):
        out = check_destination(dst, sources=[src])
        with atomic_output(out) as tmp:
            run(tmp)


def _gguf_converter(family: Family, source_format: str, outtype: str) -> Converter:
    conv = next((c for c in family.converters if c.source == source_format and c.target == "gguf"), None)
    if conv is None:
        raise InvalidParameterError(f"{family.name} has no converter from {source_format} to gguf",
                                    where="GGUF cache", fix="load a GGUF file instead")
    if conv.outtypes and outtype not in conv.outtypes:
        raise InvalidParameterError(f"{family.name}'s {source_format}->gguf converter does not write {outtype}",
                                    where="GGUF cache", fix=f"it writes: {', '.join(conv.outtypes)}")
    return conv


def _gguf_quantizer(family: Family, scheme: str) -> Quantizer:
    quants = [q for q in family.quantizers if q.format == "gguf"]
    q = next((q for q in quants if scheme in q.schemes), None)
    if q is None:
        valid = sorted({s for q in quants for s in q.schemes})
        raise InvalidParameterError(f"unknown quantization type {scheme!r}", where="GGUF cache",
                                    fix=f"valid types: {', '.join(valid) or f'none ({family.name} quantizes no GGUF)'}")
    return q


__all__ = ["cached_gguf", "source_fingerprint"]
