"""Proof of ownership: a keyed stamp on every domain the controller creates.

Where it sits: in the vocabulary, because the clone actuator writes the stamp, every actuator
that changes or destroys a domain checks it (retire, hot-add, migrate, snapshot), and the VM
collector reports whether a VM carries a valid one. The stamp is an HMAC-SHA256 of the domain's
name, business and creation time under one *fleet key* that every controller of the fleet
reads (``ownership.key_file`` in the controller file), named by a key id so that keys can be
rotated: the file holds one key per line (``ID HEX``), the first one signs, all of them verify.
Editing a domain's XML (its business, its name) cannot forge a stamp without the key. Pure: the
key file is read by the runtime.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.model.errors import PermanentError

KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MIN_KEY_BYTES = 16


class NotOwned(PermanentError):
    """The domain carries no valid ownership stamp: the controller did not create it (or it
    was edited), so nothing that changes or destroys it is done."""


@dataclass(frozen=True)
class OwnershipStamp:
    key_id: str
    mac: str


@dataclass(frozen=True)
class FleetKeys:
    """The fleet's ownership keys: ``keys[current]`` signs, every key verifies."""

    keys: Mapping[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the signing key {self.current!r} is not among the keys")

    @staticmethod
    def _message(name: str, business: str, created: str) -> bytes:
        return "\0".join(("kvm-autoscaler/owner/1", name, business, created)).encode()

    def stamp(self, name: str, business: str, created: str) -> OwnershipStamp:
        mac = hmac.new(self.keys[self.current], self._message(name, business, created), "sha256")
        return OwnershipStamp(key_id=self.current, mac=mac.hexdigest())

    def verify(self, name: str, business: str, created: str, stamp: OwnershipStamp | None) -> bool:
        if stamp is None or stamp.key_id not in self.keys:
            return False
        expected = hmac.new(
            self.keys[stamp.key_id], self._message(name, business, created), hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(expected, stamp.mac)


def parse_fleet_keys(text: str, source: str) -> FleetKeys:
    """Keys from the key file's text: ``ID HEX`` per line, ``#`` comments; the first signs."""
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not KEY_ID.fullmatch(parts[0]):
            raise ValueError(f"{source}:{number}: expected 'KEY_ID HEX_SECRET'")
        try:
            secret = bytes.fromhex(parts[1])
        except ValueError:
            raise ValueError(f"{source}:{number}: the secret is not hexadecimal") from None
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"{source}:{number}: the secret is shorter than {MIN_KEY_BYTES} bytes")
        if parts[0] in keys:
            raise ValueError(f"{source}:{number}: key id {parts[0]!r} appears twice")
        keys[parts[0]] = secret
        order.append(parts[0])
    if not order:
        raise ValueError(f"{source}: no key")
    return FleetKeys(keys=keys, current=order[0])
