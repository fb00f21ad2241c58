"""Atomic file writing: nothing melody writes is ever half-written under its final name.

Every output (audio, shards, checkpoints, reports) is written to a temporary file in the same
folder and renamed into place when complete; `os.replace` is atomic on POSIX within one file
system. A full disk or a crash leaves the previous file (if any) untouched and removes the temp.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from melody.errors import MelodyError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it vanishes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MelodyError(f"{path.parent}: cannot create the output folder ({err.strerror}); choose a writable path") from None
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise MelodyError(f"{path}: the disk is full; free some space and run again (nothing was overwritten)") from None
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise MelodyError(f"{path}: permission denied; choose a writable output path") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: object) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "JSON file") -> object:
    path = Path(path)
    if not path.is_file():
        raise MelodyError(f"{path}: {what} not found; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MelodyError(f"{path}: {what} is not valid JSON ({err.msg if hasattr(err, 'msg') else err}); fix or regenerate it") from None
