"""The fleet key file: read (or, on a first start, made) for the ownership stamps.

Where it sits: the runtime's I/O in front of ``autoscaler.model.ownership``. ``build_fleet``
gives the keys to the actuators (clones are stamped, destructive actions check the stamp) and
the VM collector (VMs without a valid stamp are reported, never acted on). The file is the
operator's: one ``KEY_ID HEX_SECRET`` per line, the first one signs; to rotate, put a new key
first and keep the old one below it until every VM has been replaced or adopted again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from autoscaler.model import ConfigError, ConfigProblem, FleetKeys, parse_fleet_keys


def make_key_file(path: Path) -> None:
    """A new key file with one random 256-bit key, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_id = "k" + secrets.token_hex(3)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# kvm-autoscaler fleet key: share with every controller of this fleet\n")
        out.write(f"{key_id} {secrets.token_hex(32)}\n")


def load_fleet_keys(path: Path, *, create: bool) -> FleetKeys:
    """The keys in ``path``; made first when missing and ``create`` (the default location)."""
    if create and not path.exists():
        with contextlib.suppress(FileExistsError):  # made by another process just now
            make_key_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as source:
            mode = os.fstat(source.fileno()).st_mode
            text = source.read()
    except OSError as exc:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="ownership.key_file", message=str(exc))]
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            str(path),
            [
                ConfigProblem(
                    line=None,
                    field="ownership.key_file",
                    message=f"readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it",
                )
            ],
        )
    try:
        return parse_fleet_keys(text, str(path))
    except ValueError as exc:
        raise ConfigError(
            str(path), [ConfigProblem(line=None, field="ownership.key_file", message=str(exc))]
        ) from exc
