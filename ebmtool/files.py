"""Files on disk, without torch: the one atomic write, and the header of a safetensors file.

:func:`atomic_write` is the only way ebmtool puts a file in place (artifacts, PNG grids, figures, FID statistics,
the recipes' tables). The content goes to a temporary file in the target's folder, which then takes the target's
name in one step: ``os.replace`` when the caller may overwrite, else an exclusive hard link (``os.link`` fails on a
name that exists), so of two runs writing one new path exactly one wins and the other is refused in one line.
Nothing half-written ever appears under the target's name; a failed write (a full disk, a quota) is one line
naming the file (:class:`WriteError`). The temporary file is named ``.NAME.ebmtool.HOST.PID.XXXX.tmp``: a write
that was killed (``kill -9``) leaves it behind, and the next write to the same path on the same host removes it
once that process is gone.

:func:`safetensors_header` reads a safetensors file's JSON header (its ``__metadata__`` and the tensors' dtypes,
shapes and byte ranges) from the bytes alone, so tools that only look at metadata (``recipes/table.py``) need not
import torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ebmtool.errors import UserError

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header (bytes)


class WriteError(UserError):
    """The system refused a write (no space left, a quota, an I/O error): one line naming the file."""


class OutputExists(UserError):
    """A write without overwrite found its name taken meanwhile (another run's file, which is kept)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:40] or "host"


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(r"\." + re.escape(name) + r"\.ebmtool\.([A-Za-z0-9-]+)\.(\d+)\.[A-Za-z0-9_]+\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process (or a pid we cannot ask about): alive
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writes to ``path`` on this host left behind when their process died
    (``kill -9``); returns those removed. A live writer's file is kept."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    pattern, host, gone = _temp_pattern(p.name), _host(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return gone
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and m.group(1) == host and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                gone.append(Path(entry.path))
    return gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _refuse_existing(p: Path) -> UserError:
    return OutputExists(f"{p}: output exists (it appeared while this was being written; pass --force to overwrite)")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path in the folder of ``path``; when the block ends it takes the name ``path`` (mode
    0o666 less the umask, as a file made by ``open`` would have); on any error it is removed. ``overwrite`` False:
    a file that reached ``path`` meanwhile (another run's) is kept and this write refused in one line. An
    ``OSError`` while writing (a full disk) becomes a :class:`WriteError` naming ``path``."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    remove_stale_temps(p)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.ebmtool.{_host()}.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise WriteError(f"{p}: cannot be written ({_reason(e)})") from None
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            if overwrite:
                os.replace(tmp, p)
            else:
                _link_new(tmp, p)
        except OSError as e:
            raise WriteError(f"{p}: cannot be written ({_reason(e)}); nothing was written there") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _link_new(tmp: str, p: Path) -> None:
    """Give ``tmp`` the name ``p`` only if nothing has it: a hard link fails atomically on an existing name. Where
    the file system has no hard links (some FUSE and SMB mounts), a check just before the rename."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise _refuse_existing(p) from None
    except OSError as e:
        if e.errno is not None and e.errno not in _NO_LINKS:
            raise
        if os.path.lexists(p):
            raise _refuse_existing(p) from None
        os.replace(tmp, p)
        return
    with contextlib.suppress(OSError):  # the file is in place; the second name goes
        os.unlink(tmp)


# errors of a file system without hard links (or with a link limit): there the name is checked, then renamed
_NO_LINKS = {getattr(errno, n) for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "EMLINK", "ENOSYS")
             if hasattr(errno, n)}


def write_bytes(path: str | os.PathLike, data: bytes | memoryview, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


def safetensors_header(source: str | os.PathLike | bytes | memoryview) -> tuple[dict[str, Any], int]:
    """(the parsed JSON header, the offset of the first tensor byte) of a safetensors file, given its path or
    its bytes. The header maps each tensor's name to ``{"dtype", "shape", "data_offsets"}`` (offsets relative to
    the data section) and ``"__metadata__"`` to the string metadata. ``ValueError`` when it is not one."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:8])
        if len(head) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > len(source):
            raise ValueError("header length beyond the end of the file")
        raw = bytes(source[8:8 + n])
    else:
        with open(source, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise ValueError("header length beyond the end of the file")
            raw = f.read(n)
            if len(raw) < n:
                raise ValueError("header length beyond the end of the file")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata (``__metadata__``) of a safetensors file; ``{}`` where it has none.
    ``ValueError`` when the file is not a safetensors file."""
    md = safetensors_header(path)[0].get("__metadata__") or {}
    if not isinstance(md, dict):
        raise ValueError("__metadata__ is not a JSON object")
    return md
