"""GGUF files made on demand in the cache, so a checkpoint folder can run on llama.cpp.

``load(folder, engine="llama.cpp")`` (LLaMA) or ``load(folder, quantize="q4_0")`` (ChatGLM)
convert the folder once with the family's own ``--to gguf`` converter and, for a llama.cpp
quantization type, quantize that with the family's GGUF quantizer; both go through the
public :func:`openllm_hub.convert` / :func:`openllm_hub.quantize`, so they are written to a
temporary name and renamed into place (a killed run leaves no half file). Entries are keyed
by a fingerprint of the source folder's files, so an edited checkpoint makes new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def cached_gguf(folder: str | Path, *, family: str, scheme: str = "f16",
                convert_options: Mapping[str, Any] | None = None) -> Path:
    """The GGUF form of the checkpoint ``folder`` with ``scheme`` (f32, f16 or any llama.cpp
    quantization type), made once into ``cache_dir()/<family>-gguf/`` and reused after.

    Quantized files come from the f16 conversion (llama.cpp's usual path; it is kept for the
    next scheme); bf16 comes from f32, which does not clip bf16's range the way f16 would.
    """
    import openllm_hub
    from openllm_hub.core.paths import cache_dir
    from openllm_hub.errors import DestinationExistsError

    src = Path(folder)
    out_dir = cache_dir() / f"{family}-gguf"
    stem = f"{src.resolve().name}-{source_fingerprint(src, convert_options)}"
    target = out_dir / f"{stem}-{scheme}.gguf"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    base_type = "f32" if scheme in ("f32", "bf16") else "f16"
    base = out_dir / f"{stem}-{base_type}.gguf"
    if not base.is_file():
        with contextlib.suppress(DestinationExistsError):  # another process made it meanwhile
            openllm_hub.convert(src, base, to="gguf", outtype=base_type, family=family,
                                options=convert_options)
    if target != base:
        with contextlib.suppress(DestinationExistsError):
            openllm_hub.quantize(base, target, scheme, family=family)
    return target


__all__ = ["cached_gguf", "source_fingerprint"]
