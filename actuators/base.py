"""The Actuator protocol and what every actuator is handed: the fleet and its action context.

Where it sits: between the executor (which schedules a Plan's actions, journals them and retries
temporary errors) and libvirt. One actuator per Action kind; each one checks its precondition
against live libvirt state, executes in named steps (each step journalled before it is taken,
so a crash can be reconciled), verifies by reading back from libvirt and, where the guest can
tell, from inside the guest, and compensates what it can when it fails. An action whose effect
is already live is a no-op (``already_done``): idempotency by key, checked against the fleet.
"""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import libvirt

from actuators.connections import LibvirtPool
from actuators.domain_xml import METADATA_NS, GuestBoot, VmMetadata, parse_vm_metadata
from actuators.guest_agent import GuestView, ReadinessProbe, SerialAgent
from actuators.rbd_store import RbdStore
from autoscaler.model import (
    BaseAction,
    Business,
    FleetKeys,
    NotOwned,
    PermanentError,
    TemporaryError,
    check_name,
)
from autoscaler.model.access import LoadBalancer

A_contra = TypeVar("A_contra", bound=BaseAction, contravariant=True)


class GuestObserver(Protocol):
    """What the guest itself sees (online CPUs, MemTotal); None when the guest cannot tell."""

    def wait_for(
        self,
        conn: libvirt.virConnect,
        domain: libvirt.virDomain,
        predicate: Callable[[GuestView], bool],
        timeout_s: float,
    ) -> GuestView | None: ...


class SerialAgentObserver:
    """The serial agent's channel (the lab's guest reports within ~50 ms of a change)."""

    def wait_for(
        self,
        conn: libvirt.virConnect,
        domain: libvirt.virDomain,
        predicate: Callable[[GuestView], bool],
        timeout_s: float,
    ) -> GuestView | None:
        with SerialAgent(conn, domain) as agent:
            return agent.wait_for(predicate, timeout_s)


@dataclass(frozen=True)
class Fleet:
    """Handles the actuators work with: host URIs, the businesses and how guests boot.

    ``connection`` lends a libvirt connection to a host by name (the controller's URI for it)
    from ``pool``, which the controller keeps across cycles; ``hosts`` maps every inventory
    host to that URI, which is also what a source host uses to reach a migration destination
    (peer to peer).
    """

    hosts: Mapping[str, str]
    businesses: Mapping[str, Business]
    boot: GuestBoot = field(default_factory=GuestBoot)
    domain_type: str = "kvm"
    readiness: ReadinessProbe | None = None
    observer: GuestObserver | None = None
    ready_timeout_s: float = 120.0
    channels: tuple[str, ...] = ()
    balloon_stats_period_s: int = 5
    pool: LibvirtPool = field(default_factory=LibvirtPool, compare=False)
    keys: FleetKeys | None = field(default=None, compare=False, repr=False)
    """The fleet's ownership keys: clones are stamped with them, and nothing that changes or
    destroys a domain is done unless its stamp verifies (``require_owned``)."""
    rbd: RbdStore | None = field(default=None, compare=False, repr=False)
    """RBD on the process's Ceph handle, for businesses whose template has storage rbd."""
    balancers: Mapping[str, LoadBalancer] = field(default_factory=dict, compare=False, repr=False)
    """The access layer's balancers by their name in the controller file."""
    delivery_dir: Path | None = None
    """Template versions' configuration and code (``<business>/<version>/``): a clone of a
    version that has a folder there gets it on a config drive (``config_drive``)."""

    def uri(self, host: str) -> str:
        check_name(host, what="host name")
        try:
            return self.hosts[host]
        except KeyError:
            raise PermanentError(f"host {host!r} is not in the inventory") from None

    def rbd_store(self) -> RbdStore:
        if self.rbd is None:
            raise PermanentError(
                "a template has storage rbd but the controller file has no ceph section"
            )
        return self.rbd

    def balancer(self, name: str) -> LoadBalancer:
        try:
            return self.balancers[name]
        except KeyError:
            raise PermanentError(
                f"balancer {name!r} is named by a policy but not in the controller file"
            ) from None

    def business(self, name: str) -> Business:
        try:
            return self.businesses[name]
        except KeyError:
            raise PermanentError(f"business {name!r} has no policy") from None

    @contextlib.contextmanager
    def connection(self, host: str) -> Iterator[libvirt.virConnect]:
        """A connection to ``host`` from the pool (reused while it stays alive; retired when an
        error leaves the block); an unreachable host is a temporary error."""
        uri = self.uri(host)
        try:
            entry = self.pool.acquire(uri)
        except libvirt.libvirtError as exc:
            raise TemporaryError(f"host {host} unreachable: {exc}", retry_after=5) from exc
        try:
            yield entry.conn
        except BaseException:
            self.pool.release(uri, entry, broken=True)
            raise
        self.pool.release(uri, entry, broken=False)


StepHook = Callable[[BaseAction, str], None]


@dataclass
class ActionContext:
    """One run of one action: the fleet, its deadline, and the step recorder."""

    fleet: Fleet
    deadline: float
    record_step: Callable[[str], None] = lambda _step: None
    figures: dict[str, float] = field(default_factory=dict)

    def step(self, name: str) -> None:
        """Record that ``name`` is about to be (or was just) reached; may not return (crash
        points)."""
        self.record_step(name)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self, what: str) -> None:
        if self.remaining() <= 0:
            raise TemporaryError(f"action timed out {what}", retry_after=0)


class Actuator(Protocol[A_contra]):
    """One action kind's hands. Every method may raise TemporaryError or PermanentError."""

    kind: str

    def already_done(self, action: A_contra, ctx: ActionContext) -> bool:
        """True when the action's effect is already live (executing it again is a no-op)."""
        ...

    def precondition(self, action: A_contra, ctx: ActionContext) -> None:
        """Raise PreconditionFailed / RefusedAction when the action must not run now."""
        ...

    def execute(self, action: A_contra, ctx: ActionContext) -> None:
        """Do it, in steps (``ctx.step``); resumable: each step checks whether it is done."""
        ...

    def verify(self, action: A_contra, ctx: ActionContext) -> str:
        """Read back from libvirt (and the guest); raise if the effect is not there; return a
        one-line description of what was verified."""
        ...

    def compensate(self, action: A_contra, ctx: ActionContext) -> str:
        """Undo what a failed execution left behind, where possible; say what was done."""
        ...


# ---- helpers shared by the actuators -------------------------------------------------------


def find_domain(conn: libvirt.virConnect, vm: str) -> libvirt.virDomain | None:
    check_name(vm, what="vm name")
    try:
        return conn.lookupByName(vm)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise TemporaryError(f"lookup of {vm} failed: {exc}", retry_after=2) from exc


def vm_metadata(domain: libvirt.virDomain) -> VmMetadata | None:
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError:
        return None
    return parse_vm_metadata(text)


def require_owned(
    domain: libvirt.virDomain, vm: str, business: str, fleet: Fleet, doing: str
) -> VmMetadata:
    """The domain's metadata, if it carries a valid ownership stamp for ``business``; else
    ``NotOwned`` (logged and counted by the controller; nothing is done to the domain)."""
    try:
        meta = vm_metadata(domain)
    except ValueError as exc:
        raise NotOwned(f"{doing} {vm}: its metadata is unreadable ({exc}); not ours") from exc
    if meta is None:
        raise NotOwned(f"{doing} {vm}: it carries no metadata of ours; not ours to touch")
    if meta.business != business:
        raise NotOwned(f"{doing} {vm}: it belongs to {meta.business}, not {business}")
    if fleet.keys is None:
        raise NotOwned(f"{doing} {vm}: no fleet key is configured, so no ownership is proven")
    if not meta.owned(vm, fleet.keys):
        raise NotOwned(
            f"{doing} {vm}: its ownership stamp is missing or invalid (not created by this fleet,"
            " or edited); adopt it first (autoscaler adopt)"
        )
    return meta


def vm_attribute(domain: libvirt.virDomain, name: str) -> str | None:
    """One raw attribute of our ``<as:vm>`` element (e.g. ``ready``), None when absent."""
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError:
        return None
    return ET.fromstring(text).get(name)  # noqa: S314 - libvirt's copy of our own element


def disk_sources(domain: libvirt.virDomain, flags: int = 0) -> dict[str, str]:
    """target dev -> source file of the domain's file disks."""
    root = ET.fromstring(domain.XMLDesc(flags))  # noqa: S314 - libvirt's own XML
    out: dict[str, str] = {}
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        if target is not None and source is not None and source.get("file"):
            out[target.get("dev", "")] = source.get("file", "")
    return out


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def libvirt_call(what: str, call: Callable[[], object]) -> object:
    """Run a libvirt call, turning its errors into TemporaryError (the host may recover)."""
    try:
        return call()
    except libvirt.libvirtError as exc:
        raise TemporaryError(f"{what}: {exc}", retry_after=2) from exc
