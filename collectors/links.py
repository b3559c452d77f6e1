"""A host's uplinks through netlink (pyroute2): operstate, carrier, counters, rates, kernel bonds.

Where it sits: a collector, first stage of the flow. It reads the links of one network namespace
(the host's, or the root one) with one RTM_GETLINK dump and reports, for each named uplink
(label ``link``), its operstate, carrier, ``uplink_down``, IFLA_STATS64 counters and their rates
since the previous call; host-wide, ``link_down`` when any uplink cannot carry traffic; for
uplinks that are kernel bonds, their members and whether redundancy is lost (the same figures
as an OVS bond). A namespace that is gone or a
netlink call that does not finish in ``timeout_s`` makes the host stale; an uplink that is not
there is reported as such, never as a link with zero traffic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute, NetNS

from autoscaler.model import Collection, PermanentError, Sample, Scope, SignalName, TemporaryError
from autoscaler.model.bounded import BoundedCaller
from autoscaler.model.names import check_name
from collectors.base import LastGood
from collectors.bond_state import BondMember, BondState, bond_samples
from collectors.common import (
    CounterRates,
    MalformedReply,
    all_stale,
    scoped,
    single_scope_result,
)

COUNTERS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)
UP_STATES = ("UP", "UNKNOWN")  # UNKNOWN: drivers without operstate (tun, some virtual links)
BOND_MODES = {
    0: "balance-rr",
    1: "active-backup",
    2: "balance-xor",
    3: "broadcast",
    4: "802.3ad",
    5: "balance-tlb",
    6: "balance-alb",
}
BOND_MII_UP = 0


@dataclass(frozen=True)
class LinkState:
    name: str
    index: int
    operstate: str
    carrier: bool | None
    counters: dict[str, int]

    @property
    def down(self) -> bool:
        return self.operstate not in UP_STATES or self.carrier is False


def _attr(message: Any, name: str) -> Any:
    return message.get_attr(name) if message is not None else None


def _counters(message: Any, name: str) -> dict[str, int]:
    stats = _attr(message, "IFLA_STATS64")
    if not isinstance(stats, dict):
        raise MalformedReply(f"link {name}: no IFLA_STATS64")
    counters = {}
    for key in COUNTERS:
        value = stats.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MalformedReply(f"link {name}: counter {key} is {value!r}")
        counters[key] = value
    return counters


def parse_links(messages: Iterable[Any]) -> tuple[dict[str, LinkState], dict[str, BondState]]:
    """Every link by name, and every kernel bond with its members, from an RTM_NEWLINK dump."""
    links: dict[str, LinkState] = {}
    by_index: dict[int, Any] = {}
    for message in messages:
        name = _attr(message, "IFLA_IFNAME")
        if not isinstance(name, str) or not name:
            raise MalformedReply("netlink: a link without a name")
        carrier = _attr(message, "IFLA_CARRIER")
        index = int(message["index"])
        links[name] = LinkState(
            name=name,
            index=index,
            operstate=str(_attr(message, "IFLA_OPERSTATE") or "UNKNOWN"),
            carrier=None if carrier is None else bool(carrier),
            counters=_counters(message, name),
        )
        by_index[index] = message
    bonds: dict[str, BondState] = {}
    for index, message in by_index.items():
        info = _attr(message, "IFLA_LINKINFO")
        if _attr(info, "IFLA_INFO_KIND") != "bond":
            continue
        data = _attr(info, "IFLA_INFO_DATA")
        active_index = _attr(data, "IFLA_BOND_ACTIVE_SLAVE")
        members = []
        for member_index, member in sorted(by_index.items()):
            member_info = _attr(member, "IFLA_LINKINFO")
            if _attr(member, "IFLA_MASTER") != index:
                continue
            if _attr(member_info, "IFLA_INFO_SLAVE_KIND") != "bond":
                continue
            slave = _attr(member_info, "IFLA_INFO_SLAVE_DATA")
            mii = _attr(slave, "IFLA_BOND_SLAVE_MII_STATUS")
            name = _attr(member, "IFLA_IFNAME")
            enabled = mii == BOND_MII_UP and not links[name].down
            members.append(BondMember(name, enabled, member_index == active_index))
        bond_name = _attr(message, "IFLA_IFNAME")
        mode = BOND_MODES.get(_attr(data, "IFLA_BOND_MODE"), "unknown")
        bonds[bond_name] = BondState(bond_name, mode, tuple(members))
    return links, bonds


class LinksCollector:
    """The uplinks of one host, read in network namespace ``netns`` (None: the root one)."""

    name = "links"
    scope = Scope.HOST

    def __init__(
        self,
        host: str,
        uplinks: Sequence[str],
        *,
        netns: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.target = check_name(host, what="host")
        self.uplinks = tuple(uplinks)
        self.netns = netns
        self.timeout_s = timeout_s
        self._calls: BoundedCaller[Any] = BoundedCaller(f"links of {self.target}")
        self.last_good = LastGood()
        self._rates = CounterRates()

    def _dump(self) -> tuple[dict[str, LinkState], dict[str, BondState]]:
        try:
            # flags=0: never create a namespace that is not there
            handle = NetNS(self.netns, flags=0) if self.netns else IPRoute()
        except OSError as exc:
            raise TemporaryError(f"netns {self.netns}: {exc}") from exc
        try:
            return parse_links(handle.get_links())
        except OSError as exc:
            raise TemporaryError(f"netlink in {self.netns or 'the root namespace'}: {exc}") from exc
        finally:
            handle.close()

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        try:
            links, bonds = self._calls.call(self._dump, self.timeout_s)
        except (TemporaryError, PermanentError) as exc:
            return all_stale(
                self.name, [(self.scope, self.target)], self.last_good, str(exc), started
            )
        present = [links[u] for u in self.uplinks if u in links]
        missing = [u for u in self.uplinks if u not in links]
        samples: list[Sample] = []
        for link in present:
            samples += self._link_samples(link, now)
        down = float(sum(link.down for link in present))
        samples += [
            scoped("uplinks_total", float(len(self.uplinks)), now, self.scope, self.target),
            scoped("uplinks_down", down, now, self.scope, self.target),
        ]
        if not missing:  # link_down only when every uplink was seen
            samples.append(
                scoped(SignalName.LINK_DOWN, float(down > 0), now, self.scope, self.target)
            )
        uplink_bonds = [bonds[u] for u in self.uplinks if u in bonds]
        if uplink_bonds:
            samples += bond_samples(uplink_bonds, self.target, now)
        where = self.netns or "the root namespace"
        problem = f"uplinks not found in {where}: {missing}" if missing else None
        return single_scope_result(
            self.name, self.scope, self.target, self.last_good, now, started, samples, problem
        )

    def _link_samples(self, link: LinkState, now: float) -> list[Sample]:
        host, name = self.target, link.name
        figures: dict[str, float] = {
            "uplink_operstate_up": float(link.operstate in UP_STATES),
            "uplink_down": float(link.down),
        }
        if link.carrier is not None:
            figures["uplink_carrier"] = float(link.carrier)
        figures |= {f"uplink_{k}_total": float(v) for k, v in link.counters.items()}
        rates = self._rates.update(name, link.index, now, link.counters)
        figures |= {f"uplink_{k}_rate": v for k, v in (rates or {}).items()}
        return [scoped(m, v, now, Scope.HOST, host, link=name) for m, v in figures.items()]
