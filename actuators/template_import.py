"""A template image file, read as raw, written into an RBD image.

Where it sits: under ``autoscaler images push`` (and the lab, which pushes its businesses'
templates the same way). ``qemu-img`` reads any image format into a raw copy; the copy goes
into the RBD image one 4 MiB object at a time, all-zero objects skipped so the image stays
thin.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 4 << 20  # one RBD object
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"


def raw_copy(source: Path, folder: Path) -> tuple[Path, int]:
    """A raw copy of ``source`` and its virtual size (qemu-img reads every image format)."""
    info = subprocess.run(
        [QEMU_IMG, "info", "--output=json", str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    size = int(json.loads(info.stdout)["virtual-size"])
    raw = folder / "template.raw"
    subprocess.run(
        [QEMU_IMG, "convert", "-O", "raw", str(source), str(raw)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return raw, size


def write_raw(raw: Path) -> Callable[[Any], None]:
    """A writer for ``RbdStore.push_template`` copying ``raw`` chunk by chunk (zeros skipped;
    a new version over an older one writes zeros where the older had data)."""

    def write(image: Any) -> None:
        with raw.open("rb") as handle:
            offset = 0
            while chunk := handle.read(CHUNK):
                if chunk.count(0) != len(chunk):
                    image.write(chunk, offset)
                elif offset < image.size():
                    image.discard(offset, len(chunk))
                offset += len(chunk)

    return write
