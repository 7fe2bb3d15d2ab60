"""Safe reading and atomic writing of checkpoint files.

Two promises of the SDK live here:

* nothing half-written: every output goes to a temporary sibling and is renamed into place
  only when complete (:func:`atomic_output`); inputs are never overwritten
  (:func:`check_destination`);
* no code from a checkpoint: tensors are read with safetensors or
  ``torch.load(weights_only=True)`` (:func:`load_torch_checkpoint`), and a pickle that
  needs anything else is refused with :class:`UnsafeCheckpointError`.

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
import json
import os
import re
import shutil
import stat
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
    """Read a JSON file, turning a missing or malformed file into a clear error."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError("file not found", where=p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"invalid JSON: {exc}", where=p, fix="restore the file from its source") from exc


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
