"""Safe reading and atomic writing of checkpoint files.

Two promises of the SDK live here:

* nothing half-written: every output goes to a temporary sibling and is renamed into place
  only when complete (:func:`atomic_output`); inputs are never overwritten
  (:func:`check_destination`);
* no code from a checkpoint: tensors are read with safetensors or
  ``torch.load(weights_only=True)`` (:func:`load_torch_checkpoint`), and a pickle that
  needs anything else is refused with :class:`UnsafeCheckpointError`.

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.errors import (
    CorruptFileError,
    DestinationExistsError,
    InvalidParameterError,
    NotFoundError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

TMP_MARK = ".openllm-hub-tmp-"


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def check_destination(dst: str | Path, *, sources: Iterable[str | Path] = (), force: bool = False) -> Path:
    """Refuse an output path that would overwrite an input or an existing file.

    ``dst`` may not equal, contain or lie inside any of ``sources``; an existing ``dst`` is
    refused unless ``force``. Returns ``dst`` as a :class:`Path`.
    """
    out = Path(dst)
    for src in sources:
        if _same_or_inside(out, Path(src)):
            raise DestinationExistsError(
                "the output would overwrite an input",
                where=out,
                fix=f"choose an output path outside {src}",
            )
    if out.exists() and not force:
        raise DestinationExistsError(
            "the output already exists",
            where=out,
            fix="choose another path, or pass --force (force=True) to replace it",
        )
    if not out.parent.exists():
        raise NotFoundError("the output's parent folder does not exist", where=out.parent, fix="create it first")
    return out


@contextlib.contextmanager
def atomic_output(dst: str | Path, *, force: bool = False, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``dst``; rename it to ``dst`` only if the block succeeds.

    With ``is_dir`` the temporary path is created as an empty folder. On any exception (or a
    kill) the temporary is removed and ``dst`` is untouched. With ``force`` an existing
    ``dst`` is replaced only after the new output is complete.
    """
    out = Path(dst)
    if out.exists() and not force:
        raise DestinationExistsError(
            "the output already exists", where=out, fix="choose another path, or pass --force to replace it"
        )
    tmp = out.with_name(f"{TMP_MARK}{uuid.uuid4().hex[:8]}-{out.name}")
    if is_dir:
        tmp.mkdir(parents=False)
    try:
        yield tmp
        if not tmp.exists():
            raise CorruptFileError("the writer produced no output", where=out)
        if out.exists():
            old = out.with_name(f"{TMP_MARK}old-{uuid.uuid4().hex[:8]}-{out.name}")
            out.rename(old)
            tmp.rename(out)
            _remove(old)
        else:
            tmp.rename(out)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON (inside a folder that :func:`atomic_output` guards)."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a missing or malformed file into a clear error."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError("file not found", where=p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"invalid JSON: {exc}", where=p, fix="restore the file from its source") from exc


def read_text_file(path: str | Path, *, what: str = "file") -> str:
    """The UTF-8 text of a file a user named (a prompt, a system prompt, a corpus), or one clear error."""
    p = Path(path)
    fix = f"pass a readable UTF-8 text file as {what}"
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {p}", where=what, fix=fix) from None
    except IsADirectoryError:
        raise InvalidParameterError(f"{p} is a directory, not a text file", where=what, fix=fix) from None
    except OSError as exc:
        raise InvalidParameterError(f"cannot read {p}: {exc.strerror or exc}", where=what, fix=fix) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameterError(f"{p} is not UTF-8 text (byte {exc.start})", where=what, fix=fix) from None


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """Return the JSON header of a .safetensors file without reading tensor data.

    Validates the header length and that every tensor's data lies inside the file, so a
    truncated download is reported here rather than as a crash deep inside an engine.
    """
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CorruptFileError("not a safetensors file (shorter than its 8-byte header length)", where=p)
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise CorruptFileError("safetensors header length runs past the end of the file", where=p)
        try:
            header: dict[str, Any] = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"safetensors header is not valid JSON: {exc}", where=p) from exc
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not offsets or len(offsets) != 2 or offsets[1] > data_len:
            raise CorruptFileError(
                f"tensor {name!r} lies past the end of the file (truncated?)",
                where=p,
                fix="download or convert the file again",
            )
    return header


def load_torch_checkpoint(path: str | Path, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """Load a PyTorch ``.pth``/``.bin`` state dict without executing code from it.

    Uses ``torch.load(weights_only=True)``: a pickle that references anything beyond tensors
    and plain containers raises :class:`UnsafeCheckpointError` and nothing in it runs.
    """
    import pickle
    import zipfile

    import torch

    p = Path(path)
    if not p.is_file():
        raise NotFoundError("checkpoint file not found", where=p)
    use_mmap = mmap and zipfile.is_zipfile(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            "refusing to load: the checkpoint needs code execution to unpickle",
            where=p,
            fix="convert it to safetensors with the tool that made it, from a source you trust",
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CorruptFileError(f"cannot read PyTorch checkpoint: {exc}", where=p, fix="download it again") from exc
    if not isinstance(obj, dict):
        raise CorruptFileError("checkpoint does not hold a state dict", where=p)
    return obj


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
