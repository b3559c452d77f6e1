"""Safe names for businesses, VMs, hosts and the rest of the inventory.

Where it sits: the first gate of the flow. Every name that enters from a policy file, the
controller file, a plan file, a snapshot file or libvirt is checked here before it can reach
domain XML, a path or an argument list. The character set is that of a DNS label, so a name is
also a valid hostname, file name and Prometheus label value, and can never carry quotes, angle
brackets, slashes, whitespace or ``..``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"\A{NAME_PATTERN}\Z")


def check_name(value: str, *, what: str = "name") -> str:
    """Return ``value`` if it is a safe name, else raise ``ValueError`` saying why."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a safe name: use 1-63 lowercase letters, digits and '-',"
            " starting and ending with a letter or digit"
        )
    return value


def _check(value: str) -> str:
    return check_name(value)


Name = Annotated[str, AfterValidator(_check)]
"""A validated inventory or business name (pydantic field type)."""
