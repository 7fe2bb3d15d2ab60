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

Where temporaries live: beside their destination, in the destination's own folder (so the
final rename never crosses a file system), named
``.openllm-hub-tmp-<pid>@<host>-<random>[.old|.scratch|.probe]-<destination name>``: the writing
process's id, a short hash of the machine's host name, and the name of what it becomes
(cut to 255 bytes). A writer that raises (an error, or Ctrl-C's KeyboardInterrupt) removes its
temporary itself. A process that dies without running Python code (SIGKILL, a default
SIGTERM, a crash, power loss) cannot: its temporary stays until the next writer into that
folder (:func:`check_destination`, :func:`atomic_output`, :func:`scratch_dir`; the GGUF cache
also on every use) or ``openllm-hub cache clean`` removes it (:func:`remove_stale_temporaries`).
Only temporaries of this machine whose process is gone are removed, never one a live writer is
still using (a process id that is reused before the clean-up only delays it). Cache entries
(the GGUF cache, converted Meta checkpoints) are written the same way inside the cache folder.

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
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
#: Longest file name most file systems accept (bytes).
NAME_MAX = 255
_TMP_RE = re.compile(r"^\.openllm-hub-tmp-(\d+)@([0-9a-f]{6})-[0-9a-f]{8}(\.old|\.scratch|\.probe)?-(.*)$", re.DOTALL)


def _host_tag() -> str:
    """Six hex digits naming this machine, so a temporary on a shared folder is only judged
    (alive or dead) by the machine whose process ids it holds."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temporary_path(dst: str | Path, *, kind: str = "") -> Path:
    """A fresh temporary sibling of ``dst`` named after this process and ``dst`` (see the module
    docstring); ``kind`` is ``""`` (the output being written), ``"old"`` (a replaced output on
    its way out), ``"scratch"`` (intermediate files) or ``"probe"`` (an empty file that tests
    whether the folder is writable). Over-long names are cut to fit."""
    out = Path(dst)
    head = f"{TMP_MARK}{os.getpid()}@{_host_tag()}-{uuid.uuid4().hex[:8]}{'.' + kind if kind else ''}-"
    name = (head + out.name).encode("utf-8", "surrogateescape")[:NAME_MAX].decode("utf-8", "ignore")
    return out.with_name(name)


def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs here (a zombie counts as gone: it writes nothing)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    except OverflowError:  # a pid no kernel hands out
        return True
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return line.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def stale_temporaries(folder: str | Path) -> list[Path]:
    """The temporaries in ``folder`` (not below it) left by processes of this machine that are
    gone; live writers' temporaries and anything else are never listed."""
    host = _host_tag()
    out: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m and m.group(2) == host and _process_gone(int(m.group(1))):
            out.append(Path(entry.path))
    return out


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove what :func:`stale_temporaries` lists in ``folder``; returns the bytes freed.

    A killed writer's ``.old`` temporary (a replaced output between its two renames, only on
    systems without an atomic exchange) is put back at its destination when that is missing."""
    freed = 0
    for tmp in stale_temporaries(folder):
        m = _TMP_RE.match(tmp.name)
        assert m is not None
        dst = tmp.with_name(m.group(4))
        if m.group(3) == ".old" and m.group(4) and not os.path.lexists(dst):
            with contextlib.suppress(OSError):
                tmp.rename(dst)
                continue
        freed += _size(tmp)
        _remove(tmp)
    return freed


def remove_stale_temporaries_below(root: str | Path, *, depth: int = 3) -> int:
    """:func:`remove_stale_temporaries` in ``root`` and its folders down to ``depth`` levels
    (a cache folder); returns the bytes freed."""
    freed = remove_stale_temporaries(root)
    if depth > 0:
        with contextlib.suppress(OSError):
            for entry in os.scandir(root):
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(TMP_MARK):
                    freed += remove_stale_temporaries_below(entry.path, depth=depth - 1)
    return freed


def _size(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            for p in path.rglob("*"):
                with contextlib.suppress(OSError):
                    st = p.lstat()
                    total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        else:
            total += path.lstat().st_size
    return total


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def _check_writable_folder(out: Path) -> None:
    """The folder ``out`` goes into exists, is a folder, and this process can create files in it
    (tried for real: permission bits say nothing for root or on a read-only mount)."""
    parent = out.parent
    if not parent.exists():
        raise NotFoundError("the output's folder does not exist", where=parent,
                            fix=f"create it first (mkdir -p {parent}) or choose another output path")
    if not parent.is_dir():
        raise InvalidParameterError("the output's folder is not a folder", where=parent,
                                    fix="choose an output path inside an existing folder")
    probe = temporary_path(out, kind="probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InvalidParameterError(f"cannot write into the output's folder: {exc.strerror or exc}",
                                    where=parent, fix="choose a folder you can write to") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_destination(dst: str | Path, *, sources: Iterable[str | Path] = (), force: bool = False) -> Path:
    """Refuse an output path that would overwrite an input, an existing file, or that cannot be
    written; called before any work starts.

    ``dst`` may not equal, contain or lie inside any of ``sources``; an existing ``dst`` is
    refused unless ``force``; its folder must exist and be writable, and its name must fit the
    file system. Temporaries that killed writers left in that folder are removed
    (:func:`remove_stale_temporaries`). Returns ``dst`` as a :class:`Path`.
    """
    out = Path(dst)
    if not out.name or out.name in (".", ".."):
        raise InvalidParameterError(f"{str(dst)!r} names no file or folder", where="output",
                                    fix="give the output a name, e.g. out/model.gguf")
    if len(out.name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise InvalidParameterError(f"the output's name is longer than {NAME_MAX} bytes", where=out.parent,
                                    fix="choose a shorter name")
    try:
        for src in sources:
            if _same_or_inside(out, Path(src)):
                raise DestinationExistsError(
                    "the output would overwrite an input",
                    where=out,
                    fix=f"choose an output path outside {src}",
                )
        exists = os.path.lexists(out)
    except (OSError, RuntimeError) as exc:  # over-long paths, symlink loops
        raise InvalidParameterError(f"cannot use this output path: {exc}", where=out,
                                    fix="choose another output path") from None
    if exists and not force:
        raise DestinationExistsError(
            "the output already exists",
            where=out,
            fix="choose another path, or pass --force (force=True) to replace it",
        )
    _check_writable_folder(out)
    remove_stale_temporaries(out.parent)
    return out


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE); False where
    the system cannot."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(rc == 0)


@contextlib.contextmanager
def atomic_output(dst: str | Path, *, force: bool = False, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``dst`` (:func:`temporary_path`); rename it to ``dst`` only
    if the block succeeds.

    With ``is_dir`` the temporary path is created as an empty folder. On an exception the
    temporary is removed and ``dst`` is untouched; a killed process leaves its temporary to the
    next writer into the same folder (see the module docstring), and ``dst`` is untouched too.
    With ``force`` an existing ``dst`` is replaced only after the new output is complete (a
    file by one atomic rename, a folder by an atomic exchange where the system has one).
    """
    out = Path(dst)
    if out.exists() and not force:
        raise DestinationExistsError(
            "the output already exists", where=out, fix="choose another path, or pass --force to replace it"
        )
    remove_stale_temporaries(out.parent)
    tmp = temporary_path(out)
    if is_dir:
        try:
            tmp.mkdir(parents=False)
        except OSError as exc:
            raise InvalidParameterError(f"cannot write into the output's folder: {exc.strerror or exc}",
                                        where=out.parent, fix="choose a folder you can write to") from None
    try:
        yield tmp
        if not tmp.exists():
            raise CorruptFileError("the writer produced no output", where=out)
        if not out.exists():
            tmp.rename(out)
        elif not (out.is_dir() and not out.is_symlink()):
            os.replace(tmp, out)
        elif _exchange(tmp, out):
            _remove(tmp)  # now holds the old output
        else:
            old = temporary_path(out, kind="old")
            out.rename(old)
            tmp.rename(out)
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def scratch_dir(near: str | Path) -> Iterator[Path]:
    """A temporary folder for intermediate files of the output ``near`` (in its folder, named
    like every temporary here, so a killed writer's scratch is cleaned up as well); removed when
    the block ends."""
    remove_stale_temporaries(Path(near).parent)
    path = temporary_path(Path(near), kind="scratch")
    path.mkdir()
    try:
        yield path
    finally:
        _remove(path)


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


#: The largest text file :func:`read_text_file` reads (a device like /dev/zero never ends).
TEXT_FILE_LIMIT = 1 << 30


def read_text_file(path: str | Path, *, what: str = "file") -> str:
    """The UTF-8 text of a file a user named (a prompt, a system prompt, a corpus), or one clear
    error: missing, a folder, unreadable (permission, symlink loop, over-long name), larger
    than :data:`TEXT_FILE_LIMIT`, or not UTF-8."""
    p = Path(path)
    fix = f"pass a readable UTF-8 text file as {what}"
    try:
        with p.open("rb") as fh:
            data = fh.read(TEXT_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {p}", where=what, fix=fix) from None
    except IsADirectoryError:
        raise InvalidParameterError(f"{p} is a directory, not a text file", where=what, fix=fix) from None
    except OSError as exc:
        raise InvalidParameterError(f"cannot read {p}: {exc.strerror or exc}", where=what, fix=fix) from None
    if len(data) > TEXT_FILE_LIMIT:
        raise InvalidParameterError(f"{p} is larger than {TEXT_FILE_LIMIT >> 20} MiB", where=what,
                                    fix=f"{fix}, or split it")
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
