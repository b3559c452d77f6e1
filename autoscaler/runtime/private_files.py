"""Private files of the state folder: folder 0700, files 0600, never through a symlink.

Where it sits: under every writer of the state folder (controls, journal and history SQLite
files, lock files). The state folder is root-equivalent for this controller (it holds the
journal the reconciler acts on, the lease, the operator's controls), so nobody else may read or
write it, and a symlink planted where a state file goes (to make the controller overwrite
``/etc/...``, or read a file of the attacker's choosing as its controls) is refused: every open
is ``O_NOFOLLOW``, every new file is made ``O_EXCL`` with mode 0600, and a replace goes through
a fresh temporary file in the same folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafeStatePath(OSError):
    """A state path that is a symlink, not of the expected kind, or owned by someone else."""


def ensure_private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a folder only its owner can use; refuse a symlink
    or a folder owned by another user. An existing folder with looser modes is tightened."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeStatePath(f"the state folder {path} is a symlink: refused")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeStatePath(f"the state folder {path} is not a folder")
    if info.st_uid != os.geteuid():
        raise UnsafeStatePath(f"the state folder {path} belongs to uid {info.st_uid}, not us")
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE, follow_symlinks=False)
    return path


def open_private(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """A file descriptor of ``path`` opened without following a symlink (created 0600); a
    symlink there raises ``UnsafeStatePath``."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeStatePath(f"{path} is a symlink: refused") from exc
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeStatePath(f"{path} is not a regular file")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.fchmod(fd, FILE_MODE)
    return fd


def open_private_text(path: Path, mode: str = "a") -> IO[str]:
    """``open(path, mode)`` for ``a`` (append, e.g. a lock file) or ``r``, private and
    without following a symlink."""
    flags = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "r": os.O_RDONLY}[mode]
    return os.fdopen(open_private(path, flags), mode)


def ensure_private_file(path: Path) -> Path:
    """Create ``path`` empty if missing (0600), tighten it if looser, refuse a symlink: for
    files another library opens by name afterwards (SQLite)."""
    os.close(open_private(path))
    return path


def read_private_text(path: Path) -> str:
    """The text of ``path``, refused if it is a symlink (FileNotFoundError if missing)."""
    with open_private_text(path, "r") as src:
        return src.read()


def write_private_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` at once (readers see the old or the new content): a new
    0600 temporary file in the same folder, synced, renamed over ``path``. A symlink at
    ``path`` is refused (``UnsafeStatePath``); one at the temporary name is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        if os.path.islink(path):
            raise UnsafeStatePath(f"{path} is a symlink: refused")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
