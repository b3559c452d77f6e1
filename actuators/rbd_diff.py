"""Changed extents of an RBD snapshot, copied into another image or a stream.

Where it sits: under the backup actuator and restore. ``copy_changes`` is ``rbd export-diff |
rbd import-diff`` done in-process with python-rbd: the extents that changed between two
snapshots of the source (all allocated extents for a first, full copy) are written into the
target image, extents discarded since are discarded there too. ``write_diff`` / ``apply_diff``
keep the same changes as a file in RBD's own diff format ("rbd diff v1", as ``rbd
export-diff`` writes it, so ``rbd import-diff`` reads our files and we read its), for a backup
target outside Ceph.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, BinaryIO

CHUNK = 4 << 20
HEADER = b"rbd diff v1\n"


class DiffFormatError(ValueError):
    """A diff file that is not in RBD's diff v1 format (or is cut short)."""


def _extents(source: Any, from_snap: str | None) -> list[tuple[int, int, bool]]:
    """(offset, length, has data) of every extent changed since ``from_snap`` (None: all)."""
    out: list[tuple[int, int, bool]] = []

    def seen(offset: int, length: int, exists: bool) -> int:
        out.append((offset, length, bool(exists)))
        return 0

    source.diff_iterate(0, source.size(), from_snap, seen)
    return out


def _chunks(offset: int, length: int) -> list[tuple[int, int]]:
    return [(o, min(CHUNK, offset + length - o)) for o in range(offset, offset + length, CHUNK)]


def copy_changes(source: Any, from_snap: str | None, target: Any) -> int:
    """Write into ``target`` what changed in ``source`` (an image opened at a snapshot) since
    ``from_snap``; the bytes written. ``target`` is grown to the source's size first."""
    if target.size() < source.size():
        target.resize(source.size())
    written = 0
    for offset, length, exists in _extents(source, from_snap):
        if not exists:
            target.discard(offset, length)
            continue
        for at, size in _chunks(offset, length):
            data = source.read(at, size)
            if data.count(0) == len(data):
                target.discard(at, size)
            else:
                target.write(data, at)
                written += size
    target.flush()
    return written


def write_diff(source: Any, from_snap: str | None, to_snap: str, out: BinaryIO) -> int:
    """Write the changes of ``source`` (opened at ``to_snap``) since ``from_snap`` to ``out``
    in RBD's diff v1 format; the data bytes written."""
    out.write(HEADER)
    if from_snap is not None:
        name = from_snap.encode()
        out.write(b"f" + struct.pack("<I", len(name)) + name)
    name = to_snap.encode()
    out.write(b"t" + struct.pack("<I", len(name)) + name)
    out.write(b"s" + struct.pack("<Q", source.size()))
    written = 0
    for offset, length, exists in _extents(source, from_snap):
        if not exists:
            out.write(b"z" + struct.pack("<QQ", offset, length))
            continue
        for at, size in _chunks(offset, length):
            data = source.read(at, size)
            if data.count(0) == len(data):
                out.write(b"z" + struct.pack("<QQ", at, size))
            else:
                out.write(b"w" + struct.pack("<QQ", at, size) + data)
                written += size
    out.write(b"e")
    return written


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DiffFormatError("the diff ends in the middle of a record")
    return data


def apply_diff(
    stream: BinaryIO, target: Any, *, resize: Callable[[int], None] | None = None
) -> str | None:
    """Apply a diff v1 stream to ``target``; returns its end snapshot's name (``t``)."""
    if _read(stream, len(HEADER)) != HEADER:
        raise DiffFormatError("not an rbd diff v1 stream")
    to_snap: str | None = None
    while True:
        tag = _read(stream, 1)
        if tag in (b"f", b"t"):
            (length,) = struct.unpack("<I", _read(stream, 4))
            name = _read(stream, length).decode()
            if tag == b"t":
                to_snap = name
        elif tag == b"s":
            (size,) = struct.unpack("<Q", _read(stream, 8))
            if target.size() < size:
                (resize or target.resize)(size)
        elif tag == b"w":
            offset, length = struct.unpack("<QQ", _read(stream, 16))
            target.write(_read(stream, length), offset)
        elif tag == b"z":
            offset, length = struct.unpack("<QQ", _read(stream, 16))
            target.discard(offset, length)
        elif tag == b"e":
            target.flush()
            return to_snap
        else:
            raise DiffFormatError(f"unknown record {tag!r} in the diff")
