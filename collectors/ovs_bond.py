"""Bond redundancy of Open vSwitch bonds, read with ``ovs-appctl bond/show``.

Where it sits: a collector, first stage of the flow. Every host's uplinks are bonded; where the
bond is an OVS bond (userspace or OVS-DPDK datapath) this collector runs ``ovs-appctl -t
<vswitchd control socket> bond/show`` (an argument list, never a shell), parses each bond's
members, and reports per host how many members are enabled, which one is active and whether
redundancy is lost (fewer than two enabled members) while the bond itself is still up. A
vswitchd that does not answer within ``timeout_s`` makes every host it serves stale.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from autoscaler.model import Collection, PermanentError, Sample, Scope, TemporaryError
from autoscaler.model.names import check_name
from collectors.base import LastGood
from collectors.bond_state import BondMember, BondState, bond_samples
from collectors.common import MalformedReply, all_stale

MAX_OUTPUT_BYTES = 1 << 20
_PORT_NAME = r"[A-Za-z0-9_.:@-]{1,64}"
_HEADER = re.compile(rf"\A---- ({_PORT_NAME}) ----\Z")
_MEMBER = re.compile(rf"\A(?:member|slave) ({_PORT_NAME}): (enabled|disabled)\Z")
_ACTIVE = re.compile(r"\A\s+active (?:member|slave)\Z")
_MODE = re.compile(r"\Abond_mode: ([a-z-]+)\Z")


def parse_bond_show(text: str) -> dict[str, BondState]:
    """Every bond in ``ovs-appctl bond/show`` output (OVS 2.x "slave" or 3.x "member" wording)."""
    bonds: dict[str, BondState] = {}
    name: str | None = None
    mode = ""
    members: list[BondMember] = []

    def finish() -> None:
        if name is not None:
            if not mode:
                raise MalformedReply(f"bond/show: bond {name} has no bond_mode line")
            bonds[name] = BondState(name, mode, tuple(members))

    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER.match(line):
            finish()
            name, mode, members = header.group(1), "", []
            if name in bonds:
                raise MalformedReply(f"bond/show line {number}: bond {name} appears twice")
        elif member := _MEMBER.match(line):
            if name is None:
                raise MalformedReply(f"bond/show line {number}: a member before any bond header")
            members.append(BondMember(member.group(1), member.group(2) == "enabled", False))
        elif _ACTIVE.match(line):
            if not members:
                raise MalformedReply(f"bond/show line {number}: 'active member' without a member")
            last = members[-1]
            members[-1] = BondMember(last.name, last.enabled, True)
        elif (found := _MODE.match(line)) and name is not None:
            mode = found.group(1)
    finish()
    return bonds


class OvsBondCollector:
    """Bonds of one ovs-vswitchd; ``bonds`` maps each host to the name of its uplink bond."""

    name = "ovs_bond"
    scope = Scope.CLUSTER

    def __init__(
        self,
        control_socket: Path,
        bonds: Mapping[str, str],
        *,
        target: str = "ovs",
        timeout_s: float = 2.0,
        appctl: str = "ovs-appctl",
    ) -> None:
        self.control_socket = control_socket
        self.bonds = {check_name(h, what="host"): bond for h, bond in bonds.items()}
        self.target = target
        self.timeout_s = timeout_s
        self.appctl = appctl
        self.last_good = LastGood()

    def read(self) -> dict[str, BondState]:
        seconds = str(max(1, int(self.timeout_s)))
        argv = [self.appctl, f"--timeout={seconds}", "-t", str(self.control_socket), "bond/show"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TemporaryError(f"ovs-appctl bond/show: {exc}") from exc
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()[-300:]
            raise TemporaryError(f"ovs-appctl bond/show exited {done.returncode}: {message}")
        if len(done.stdout) > MAX_OUTPUT_BYTES:
            raise MalformedReply(f"ovs-appctl bond/show: over {MAX_OUTPUT_BYTES} bytes")
        return parse_bond_show(done.stdout.decode(errors="replace"))

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        scopes = [(self.scope, self.target), *((Scope.HOST, h) for h in self.bonds)]
        try:
            states = self.read()
        except (TemporaryError, PermanentError) as exc:
            return all_stale(self.name, scopes, self.last_good, str(exc), started)
        self.last_good.ok(self.scope, self.target, now)
        samples: list[Sample] = []
        stale = []
        for host, bond_name in self.bonds.items():
            state = states.get(bond_name)
            if state is None:
                reason = f"bond {bond_name} of host {host} not in bond/show"
                stale.append(self.last_good.stale(Scope.HOST, host, self.name, reason))
                continue
            self.last_good.ok(Scope.HOST, host, now)
            samples += bond_samples([state], host, now)
        return Collection(
            source=self.name,
            samples=tuple(samples),
            stale=tuple(stale),
            duration_s=time.monotonic() - started,
        )
