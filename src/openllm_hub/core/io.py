"""Safe reading and atomic writing of checkpoint files.

Three promises of the SDK live here:

* nothing half-written: every output goes to a temporary sibling and is renamed into place
  only when complete (:func:`atomic_output`); inputs are never overwritten
  (:func:`check_destination`);
* no code from a checkpoint: tensors are read with safetensors or
  ``torch.load(weights_only=True)`` (:func:`load_torch_checkpoint`), and a pickle that
  needs anything else is refused with :class:`UnsafeCheckpointError`;
* one clear error for every malformed input at the boundary: JSON files (:func:`read_json`:
  bad syntax, bad UTF-8, nesting deep enough to exhaust the parser), safetensors headers
  (:func:`read_safetensors_header`), torch files (random bytes, empty, truncated), paths that
  are folders, symlink loops, over-long names or unreadable (:func:`open_input`), and config
  files validated by a family's pydantic model (:func:`parse_config`).

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

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
    """Read a JSON file, turning a missing, unreadable or malformed file (bad UTF-8, bad
    syntax, nesting deep enough to exhaust the parser) into one clear error."""
    p = Path(path)
    with open_input(p, what="JSON file") as fh:
        raw = fh.read()
    return parse_json(raw, p)


def parse_json(raw: bytes | str, where: str | Path, *, what: str = "invalid JSON") -> Any:
    """``json.loads`` with every failure (syntax, encoding, recursion depth) as :class:`CorruptFileError`."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise CorruptFileError(f"{what}: nested too deeply", where=where,
                               fix="restore the file from its source") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CorruptFileError(f"{what}: {exc}", where=where, fix="restore the file from its source") from None


ConfigT = TypeVar("ConfigT")


def parse_config(model: type[ConfigT], data: Any, where: str | Path, *, fix: str | None = None) -> ConfigT:
    """Validate ``data`` (a parsed config file) with the pydantic ``model``; every failure
    becomes one :class:`CorruptFileError` naming the file, each offending key with its value
    and what it must be, and the fix. Families describe their config files (LLaMA's
    ``config.json``, Meta's ``params.json``, ...) as pydantic models with bounds, so a string
    size, a zero head count or ``vocab_size: 32000.5`` never reaches ``int()`` or an engine."""
    from pydantic import BaseModel, ValidationError

    assert issubclass(model, BaseModel)
    name = Path(str(where)).name
    if not isinstance(data, dict):
        raise CorruptFileError(f"{name} must hold a JSON object, not a {type(data).__name__}", where=where,
                               fix=fix or "restore the file from the model's source")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:3]:
            key = ".".join(str(x) for x in err["loc"]) or "(file)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) or not err["loc"] else f" = {value!r}"[:80]
            parts.append(f"{key}{shown}: {err['msg']}")
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        first = ".".join(str(x) for x in exc.errors()[0]["loc"]) or "the values"
        raise CorruptFileError(f"{name}: " + "; ".join(parts) + more, where=where,
                               fix=fix or f"correct {first} in {name} (or restore the file from the model's "
                                          "source)") from None


#: errno values that mean "there is no such file to read" (rather than "the file is bad").
_NOT_THERE = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}


def open_input(path: str | Path, *, what: str = "file") -> BinaryIO:
    """Open an input file for reading in binary, or raise one clear error: missing, a folder,
    a symlink loop, a name too long (:class:`NotFoundError`), permission denied or any other
    OS failure (:class:`CorruptFileError`), each naming the path and the fix."""
    p = Path(path)
    try:
        if p.is_dir():
            raise CorruptFileError(f"the {what} is a folder, not a file", where=p, fix=f"pass the {what} itself")
        return p.open("rb")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in _NOT_THERE or isinstance(exc, FileNotFoundError):
            raise NotFoundError(f"{what} not found ({reason})", where=p,
                                fix="check the path (and any symbolic link in it)") from None
        if isinstance(exc, PermissionError):
            raise CorruptFileError(f"cannot read the {what}: permission denied", where=p,
                                   fix="make the file readable (chmod u+r) or run as its owner") from None
        raise CorruptFileError(f"cannot read the {what}: {reason}", where=p,
                               fix="check the file and its disk") from None


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


#: bytes per element of every safetensors dtype (sub-byte float formats are not read).
SAFETENSORS_DTYPE_SIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
_SAFETENSORS_FIX = "download or convert the file again"


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """Return the JSON header of a .safetensors file without reading tensor data.

    Everything the safetensors library would refuse is refused here first, as a
    :class:`CorruptFileError` (or :class:`NotFoundError`) naming the file, the tensor and the
    fix, so no caller ever sees ``safetensors.SafetensorError``: the header must be a JSON
    object; ``__metadata__`` a map of strings; every tensor a known dtype, a shape of
    non-negative integers and two integer offsets whose span is exactly the shape's byte size;
    and the tensors must tile the data area exactly (no gap, overlap or trailing bytes), so a
    truncated or crafted file is reported here rather than deep inside an engine.
    """
    p = Path(path)
    with open_input(p, what="safetensors file") as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(8)
        if len(raw) < 8:
            raise CorruptFileError("not a safetensors file (shorter than its 8-byte header length)", where=p,
                                   fix=_SAFETENSORS_FIX)
        (n,) = struct.unpack("<Q", raw)
        if n < 2 or n > size - 8 or n > 100_000_000:
            raise CorruptFileError(f"not a safetensors file: header length {n} does not fit the file "
                                   f"({size} bytes; truncated?)", where=p, fix=_SAFETENSORS_FIX)
        header = parse_json(fh.read(n), p, what="safetensors header is not valid JSON")
    if not isinstance(header, dict):
        raise CorruptFileError(f"safetensors header is a JSON {type(header).__name__}, not an object", where=p,
                               fix=_SAFETENSORS_FIX)
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            _check_safetensors_metadata(info, p)
            continue
        spans.append((*_check_safetensors_entry(name, info, p), name))
    spans.sort()
    at = 0
    for begin, end, name in spans:
        if begin != at:
            problem = "overlaps the previous tensor" if begin < at else f"leaves a gap of {begin - at} bytes before it"
            raise CorruptFileError(f"tensor {name!r}: data_offsets [{begin}, {end}] {problem}", where=p,
                                   fix=_SAFETENSORS_FIX)
        at = end
    if at != data_len:
        how = "past the end of the file (truncated?)" if at > data_len else f"{data_len - at} bytes short of it"
        raise CorruptFileError(f"the tensors' data ends {how}: offsets cover {at} bytes, the file holds {data_len}",
                               where=p, fix=_SAFETENSORS_FIX)
    return header


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_safetensors_metadata(info: Any, where: Path) -> None:
    if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
        raise CorruptFileError("safetensors __metadata__ must map names to strings", where=where,
                               fix=_SAFETENSORS_FIX)


def _check_safetensors_entry(name: str, info: Any, where: Path) -> tuple[int, int]:
    """One tensor entry's (begin, end), checked: dtype, shape, offsets and their byte size."""
    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"tensor {name!r}: {what}", where=where, fix=_SAFETENSORS_FIX)

    if not isinstance(info, dict):
        raise bad("header entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_SIZE:
        raise bad(f"unknown dtype {dtype!r} (known: {', '.join(SAFETENSORS_DTYPE_SIZE)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets)):
        raise bad(f"data_offsets {offsets!r} are not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets [{begin}, {end}] end before they begin")
    count = 1
    for d in shape:
        count *= d
    if end - begin != count * SAFETENSORS_DTYPE_SIZE[dtype]:
        raise bad(f"shape {shape} of {dtype} needs {count * SAFETENSORS_DTYPE_SIZE[dtype]} bytes but its "
                  f"data_offsets span {end - begin}")
    return begin, end


def load_torch_checkpoint(path: str | Path, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """Load a PyTorch ``.pth``/``.bin`` state dict without executing code from it.

    Uses ``torch.load(weights_only=True)``: a pickle that references anything beyond tensors
    and plain containers raises :class:`UnsafeCheckpointError` and nothing in it runs.
    """
    import pickle
    import zipfile

    import torch

    p = Path(path)
    with open_input(p, what="checkpoint file") as fh:
        head = fh.read(8)
    fix = "download the checkpoint again (or pass the right file)"
    if not head:
        raise CorruptFileError("the checkpoint file is empty (0 bytes)", where=p, fix=fix)
    zipped = zipfile.is_zipfile(p)
    if not zipped and head[:2] == b"PK":
        raise CorruptFileError("cannot read PyTorch checkpoint: its zip archive is truncated or damaged", where=p,
                               fix=fix)
    if not zipped and head[:1] != b"\x80":  # torch.save writes a zip, or (legacy) a protocol-2 pickle
        raise CorruptFileError("not a torch checkpoint (neither a torch.save zip archive nor a pickle)", where=p,
                               fix=fix)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc) and "global" not in str(exc):
            raise CorruptFileError("not a torch checkpoint (its pickle is malformed)", where=p, fix=fix) from None
        raise UnsafeCheckpointError(
            "refusing to load: the checkpoint needs code execution to unpickle",
            where=p,
            fix="convert it to safetensors with the tool that made it, from a source you trust",
        ) from exc
    except RecursionError:
        raise CorruptFileError("cannot read PyTorch checkpoint: its pickle is nested too deeply", where=p,
                               fix=fix) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError,
            AttributeError, MemoryError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"cannot read PyTorch checkpoint ({type(exc).__name__}: {reason[:200]})", where=p,
                               fix=fix) from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"the checkpoint holds a {type(obj).__name__}, not a state dict", where=p,
                               fix="pass a file saved with torch.save(model.state_dict())")
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
