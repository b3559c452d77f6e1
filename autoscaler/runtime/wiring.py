"""One builder of the actuators' handles from the controller file, for ``run`` and ``apply``.

Where it sits: between the controller file (``autoscaler.config``) and ``actuators``. The live
loop (``autoscaler.runtime.actuation``) and ``autoscaler apply`` build their fleet, executor
limits, actuator registry (migration bandwidth and stall settings) and journal here, so an
operator's plan runs with exactly the settings the controller uses.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import libvirt

from actuators.base import Fleet, SerialAgentObserver, StepHook
from actuators.connections import LibvirtPool
from actuators.domain_xml import AGENT_CHANNEL, QEMU_GA_CHANNEL, GuestBoot
from actuators.executor import ExecutorLimits, Registry, default_registry
from actuators.guest_agent import readiness_probe
from actuators.rbd_store import RbdStore
from autoscaler.config import ControllerConfig
from autoscaler.model import BaseAction, Lease, LeaseState, TemporaryError
from autoscaler.model.access import LoadBalancer
from autoscaler.runtime.balancers import balancers_of
from autoscaler.runtime.fleet_key import load_fleet_keys
from autoscaler.runtime.journal import DomainStamper, SqliteJournal, journal_floor
from autoscaler.runtime.lease import FileLease
from autoscaler.runtime.rados_journal import RadosJournal
from autoscaler.runtime.rados_lease import RadosLease
from autoscaler.runtime.shared_state import SharedState
from policies.schema import BusinessPolicy

CRASH_ENV = "AUTOSCALER_CRASH_AT"
FREEZE_ENV = "AUTOSCALER_FREEZE_AT"
JOURNAL_FILE = "journal.sqlite"
ActionJournal = SqliteJournal | RadosJournal
"""The journal of either state kind: the ``Journal`` protocol plus what reports read."""

log = logging.getLogger("autoscaler.wiring")


def build_fleet(
    config: ControllerConfig,
    policies: Mapping[str, BusinessPolicy],
    readiness: str | None = None,
    *,
    pool: LibvirtPool | None = None,
    rbd: RbdStore | None = None,
    balancers: Mapping[str, LoadBalancer] | None = None,
) -> Fleet:
    """The actuators' handles: host URIs, businesses, how guests boot and how they report.
    ``pool``: the libvirt connections to keep across calls (the live loop keeps one for its
    lifetime); a new one without. ``rbd``: the RBD store to keep across calls, for templates on
    RBD (``rbd_store``); a new one without."""
    serial = config.guest_agent == "serial"
    agent_channel = AGENT_CHANNEL if serial else QEMU_GA_CHANNEL
    return Fleet(
        hosts={h.name: h.uri for *_, h in config.inventory.hosts()},
        businesses={name: p.to_business() for name, p in policies.items()},
        boot=GuestBoot(kernel=config.guest_kernel, initrd=config.guest_initrd),
        domain_type=config.domain_type,
        readiness=readiness_probe(readiness or ("serial-agent" if serial else "qemu-guest-agent")),
        observer=SerialAgentObserver() if serial else None,
        channels=(agent_channel, *config.guest_channels),
        balloon_stats_period_s=config.balloon_stats_period_s,
        pool=pool if pool is not None else LibvirtPool(),
        keys=load_fleet_keys(config.key_file, create=config.ownership.key_file is None),
        rbd=rbd if rbd is not None else rbd_store(config),
        balancers=balancers if balancers is not None else balancers_of(config),
        delivery_dir=config.delivery_dir,
    )


def rbd_store(config: ControllerConfig) -> RbdStore | None:
    """RBD through a rados handle of its own, connected at first use (a business on RBD acts)
    so a Ceph that is down costs nothing until then; None without a ceph section."""
    if config.ceph is None:
        return None
    from autoscaler.runtime.collection import connect_ceph

    return RbdStore(lambda: connect_ceph(config))


def executor_limits(config: ControllerConfig) -> ExecutorLimits:
    e = config.executor
    return ExecutorLimits(
        max_migrations_per_host=e.max_migrations_per_host,
        max_migrations=e.max_migrations,
        max_concurrent=e.max_concurrent_actions,
        action_timeout_s=e.action_timeout_s,
        retries=e.retries,
    )


def actuator_registry(config: ControllerConfig) -> Registry:
    return default_registry(
        migration_bandwidth_mib_s=config.executor.migration_bandwidth_mib_s,
        migration_stall_s=config.executor.migration_stall_s,
    )


def open_journal(state_dir: Path, fleet: Fleet, shared: SharedState | None = None) -> ActionJournal:
    """The journal the controller file names: SQLite in the state folder, or the shared
    state's; either stamps each change into the domain too."""
    stamper = DomainStamper(dict(fleet.hosts), fleet.pool)
    if shared is not None:
        return shared.journal(stamper)
    return SqliteJournal(state_dir / JOURNAL_FILE, stamper=stamper)


def open_lease(
    config: ControllerConfig,
    holder: str,
    cluster: Any = None,
    shared: SharedState | None = None,
) -> Lease:
    """The leader lease the controller file names (a file in the state folder, or RADOS with
    the cluster handle), its next generation floored by the journal's highest. With shared
    state the lease claims it as it is acquired, and the state's writes carry the lease's
    generation."""
    if config.lease.kind == "rados":
        if config.ceph is None or cluster is None:
            raise TemporaryError("the lease is on RADOS but the cluster cannot be reached")
        if shared is None:
            ioctx = cluster.open_ioctx(config.ceph.pool)
            return RadosLease(
                ioctx, holder, config.lease.duration_s, floor=lambda: _journal_floor(config)
            )
        # Beside the state, in its namespace: one fleet's objects, one capability to grant.
        lease = RadosLease(
            shared.ioctx,
            holder,
            config.lease.duration_s,
            floor=shared.fenced.fence,
            on_acquire=shared.fenced.claim,
        )
        shared.write_as(lease.last_generation)
        return lease
    return file_lease(config, holder)


def file_lease(config: ControllerConfig, holder: str) -> FileLease:
    """The lease as a file of the state folder (one machine), floored by the journal."""
    return FileLease(
        config.state_dir / "lease",
        holder,
        config.lease.duration_s,
        floor=lambda: _journal_floor(config),
    )


def _journal_floor(config: ControllerConfig) -> int:
    return journal_floor(config.state_dir / JOURNAL_FILE)


def quiet_libvirt() -> None:
    """libvirt prints every error to stderr by default, also the ones we expect and handle
    (a lookup of a domain that is not there); they reach us as exceptions anyway."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def crash_hook(
    enabled: bool, spec: str | None = None, freeze: str | None = None
) -> StepHook | None:
    """For the crash tests: a step hook that SIGKILLs this process right after ``<kind>:<step>``
    is journalled (``spec``, else ``AUTOSCALER_CRASH_AT``, e.g. ``clone_from_template:started``;
    ``...@N``: at its N-th occurrence, so that earlier actions of that kind complete),
    or SIGSTOPs it there once (``freeze``, else ``AUTOSCALER_FREEZE_AT``: a leader frozen
    mid-action). Only when ``enabled`` (the controller file's ``testing.fault_hooks``): in
    production an environment variable must not be able to kill the controller mid-action;
    one set without the setting is logged and ignored."""
    target = spec if spec is not None else os.environ.get(CRASH_ENV, "")
    stop_at = freeze if freeze is not None else os.environ.get(FREEZE_ENV, "")
    if not target and not stop_at:
        return None
    if not enabled:
        log.warning(
            "%s/%s ignored: the controller file does not set testing.fault_hooks",
            CRASH_ENV,
            FREEZE_ENV,
        )
        return None
    frozen = threading.Event()
    target, _, nth = target.partition("@")
    kill_at = int(nth) if nth.isdigit() else 1
    reached = [0]
    lock = threading.Lock()

    def hook(action: BaseAction, step: str) -> None:
        point = f"{getattr(action, 'kind', '')}:{step}"
        if point == target:
            with lock:
                reached[0] += 1
                now = reached[0] == kill_at
            if now:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        elif point == stop_at and not frozen.is_set():
            # Once only: resumed, the process must show what it does next, not stop again.
            frozen.set()
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    return hook


class StoreFenceOnly:
    """The lease with its in-process fence switched off (``testing.in_process_fence: false``):
    every call but ``fence`` goes to the lease; ``fence`` lets the action on, so only the
    shared state's fence at the store can stop a deposed leader (the fault test of it)."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def try_acquire(self, now: float) -> LeaseState | None:
        return self._lease.try_acquire(now)

    def renew(self, now: float) -> LeaseState:
        return self._lease.renew(now)

    def release(self) -> None:
        self._lease.release()

    def current(self) -> LeaseState | None:
        return self._lease.current()

    def held(self) -> LeaseState | None:
        return self._lease.held()

    def fence(self, generation: int | None, what: str) -> None:
        del generation, what


def executor_lease(config: ControllerConfig, lease: Lease) -> Lease:
    """The lease the executor checks before each step: the lease itself, unless the controller
    file switches the in-process fence off for the fault tests."""
    if config.testing.in_process_fence:
        return lease
    log.warning("testing.in_process_fence is off: only the store fences a deposed leader")
    return StoreFenceOnly(lease)
