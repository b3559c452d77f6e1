"""The state of one bond (OVS or kernel) and the samples it gives about its host.

Where it sits: shared by the OVS bond and the link collectors, so a bond reads the same to the
policies whichever datapath carries it: members in all, members enabled, the bonds up, and
``bond_redundancy_lost`` when a bond has fewer than two members able to carry traffic. Metric
names are either host-wide (only ``scope``/``target`` labels) or per member (``bond``,
``member`` labels), never both, so each host-wide name is one signal per host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoscaler.model import Sample, Scope, SignalName
from collectors.common import scoped


@dataclass(frozen=True)
class BondMember:
    name: str
    enabled: bool
    active: bool


@dataclass(frozen=True)
class BondState:
    name: str
    mode: str
    members: tuple[BondMember, ...]

    @property
    def enabled(self) -> int:
        return sum(m.enabled for m in self.members)

    @property
    def redundancy_lost(self) -> bool:
        return self.enabled < 2


def bond_samples(states: Sequence[BondState], host: str, now: float) -> list[Sample]:
    """Host-wide figures over ``states`` (plain names) and each member's (labels bond, member)."""
    figures = {
        "bond_members_total": float(sum(len(s.members) for s in states)),
        "bond_members_enabled": float(sum(s.enabled for s in states)),
        "bond_up": float(all(s.enabled > 0 for s in states)),
        SignalName.BOND_REDUNDANCY_LOST.value: float(any(s.redundancy_lost for s in states)),
    }
    samples = [scoped(m, v, now, Scope.HOST, host) for m, v in figures.items()]
    for state in states:
        for member in state.members:
            labels = {"bond": state.name, "member": member.name}
            samples.append(
                scoped("bond_member_enabled", member.enabled, now, Scope.HOST, host, **labels)
            )
            samples.append(
                scoped("bond_member_active", member.active, now, Scope.HOST, host, **labels)
            )
    return samples
