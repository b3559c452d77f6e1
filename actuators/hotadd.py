"""Vertical scaling of a running VM: vCPU hot-add and DIMM hot-add, live and persistent.

Where it sits: the actuators of ``HotAddVcpu`` and ``HotAddMemory``, run by the executor. Both
only ever raise a VM's size: vCPU removal is refused (QEMU 7.2 crashes later after a vCPU
unplug) and memory is never taken back. Done means libvirt reports the new size live and in
the persistent definition, and the guest itself sees it (online CPUs, MemTotal) where it can
tell. While the guest brings a new CPU online its vCPUs may use a whole core each (the online
boost, like the boot boost of a new clone): a guest held at its quota under full load onlines a
CPU several times slower (2.3 s against 0.4 s on the lab's TCG guest at a 0.25 quota), and that
is when the CPU is needed. The quota the VM had is put back as soon as the guest sees the CPU,
or has failed to; a controller killed in between puts the policy's quota back when it settles the
hot-add on restart (verification runs again).
"""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt

from actuators.base import ActionContext, find_domain, libvirt_call, require_owned, vm_attribute
from actuators.domain_xml import update_vm_metadata
from autoscaler.model import (
    HotAddMemory,
    HotAddVcpu,
    PreconditionFailed,
    RefusedAction,
    TemporaryError,
)

GUEST_SEES_TIMEOUT_S = 15.0
# Hot-added memory all reaches MemTotal (less ~1/64 for its page structures); the boot-time
# size loses the kernel's and the initramfs's reservations: ~100 MiB measured on the lab guest
# (MemTotal 153 MiB of 256). MemTotal must come within this much of the target.
KERNEL_RESERVED_MIB = 128


def _running_domain(ctx: ActionContext, conn: libvirt.virConnect, vm: str) -> libvirt.virDomain:
    dom = find_domain(conn, vm)
    if dom is None:
        raise PreconditionFailed(f"{vm} is not defined on this host")
    if not dom.isActive():
        raise PreconditionFailed(f"{vm} is not running")
    return dom


ONLINE_BOOST_QUOTA = 1.0
"""Host cores per vCPU while the guest onlines a hot-added CPU."""
_PERIOD = 100000


def _live_quota(dom: libvirt.virDomain) -> int | None:
    params = dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    quota = params.get("vcpu_quota")
    return int(quota) if quota is not None else None


def _quota_to_restore(dom: libvirt.virDomain, live: int) -> int:
    """The VM's own quota (its metadata, once the boot boost has ended), else what it had."""
    text = vm_attribute(dom, "cpu-quota")
    try:
        quota = float(text) if text and vm_attribute(dom, "ready") else None
    except ValueError:
        quota = None
    if quota is None or not 0 < quota <= 1:
        return live
    return int(quota * _PERIOD)


@contextlib.contextmanager
def online_boost(dom: libvirt.virDomain) -> Iterator[bool]:
    """Lift a throttled VM's vCPU quota to ONLINE_BOOST_QUOTA (live only) for the block, then
    put the VM's quota back (also one a killed controller left boosted). Yields whether it
    boosted: a VM without a quota (or still in its boot boost) is left alone."""
    boost = int(ONLINE_BOOST_QUOTA * _PERIOD)
    live = _live_quota(dom)
    if live is None or live <= 0:
        yield False
        return
    restore = _quota_to_restore(dom, live)
    boosted = live < boost
    if boosted:
        # The boost's CPU is not the business's load: the metadata says when it ran, and the
        # collector measures no utilisation over an interval that overlaps it (as for a boot).
        # Until it ends, it is taken to last as long as verification may.
        started = time.time()
        update_vm_metadata(
            dom,
            boost_from=f"{started:.3f}",
            boost_until=f"{started + GUEST_SEES_TIMEOUT_S:.3f}",
        )
        dom.setSchedulerParametersFlags({"vcpu_quota": boost}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    try:
        yield boosted
    finally:
        if boosted or restore != live:
            dom.setSchedulerParametersFlags({"vcpu_quota": restore}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if boosted:
            update_vm_metadata(dom, boost_until=f"{time.time():.3f}")


def _vcpus(dom: libvirt.virDomain) -> tuple[int, int, int]:
    """(live current, persistent current, maximum)."""
    live = int(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE))
    config = int(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    maximum = int(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_VCPU_MAXIMUM))
    return live, config, maximum


class HotAddVcpuActuator:
    kind = "hot_add_vcpu"

    def already_done(self, action: HotAddVcpu, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None or not dom.isActive():
                return False
            live, config, _ = _vcpus(dom)
            return live == action.vcpus and config == action.vcpus

    def precondition(self, action: HotAddVcpu, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = _running_domain(ctx, conn, action.vm)
            require_owned(dom, action.vm, action.business, ctx.fleet, "adding vCPUs to")
            live, _, maximum = _vcpus(dom)
            if action.vcpus < live:
                raise RefusedAction(
                    f"refusing to lower {action.vm} from {live} to {action.vcpus} vCPUs:"
                    " vCPU unplug makes QEMU 7.2 crash later; retire and clone instead"
                )
            if action.vcpus > maximum:
                raise PreconditionFailed(
                    f"{action.vm} can have at most {maximum} vCPUs (template maximum),"
                    f" {action.vcpus} asked"
                )

    def execute(self, action: HotAddVcpu, ctx: ActionContext) -> None:
        with ctx.fleet.connection(action.host) as conn:
            dom = _running_domain(ctx, conn, action.vm)
            live, config, _ = _vcpus(dom)
            ctx.step("setting-vcpus")
            if live < action.vcpus:
                libvirt_call(
                    "setVcpusFlags live",
                    lambda: dom.setVcpusFlags(action.vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE),
                )
            if config != action.vcpus:
                libvirt_call(
                    "setVcpusFlags config",
                    lambda: dom.setVcpusFlags(action.vcpus, libvirt.VIR_DOMAIN_AFFECT_CONFIG),
                )
            ctx.step("vcpus-set")

    def verify(self, action: HotAddVcpu, ctx: ActionContext) -> str:
        with ctx.fleet.connection(action.host) as conn:
            dom = _running_domain(ctx, conn, action.vm)
            live, config, _ = _vcpus(dom)
            if (live, config) != (action.vcpus, action.vcpus):
                raise TemporaryError(
                    f"libvirt reports {live} live / {config} persistent vCPUs,"
                    f" {action.vcpus} wanted"
                )
            if ctx.fleet.observer is None:
                return f"{action.vm}: {live} vCPUs (libvirt; the guest cannot tell)"
            started = time.monotonic()
            try:
                with online_boost(dom) as boosted:
                    view = ctx.fleet.observer.wait_for(
                        conn,
                        dom,
                        lambda v: v.online_cpus == action.vcpus,
                        min(GUEST_SEES_TIMEOUT_S, max(1.0, ctx.remaining())),
                    )
            except libvirt.libvirtError as exc:
                raise TemporaryError(f"online boost of {action.vm}: {exc}") from exc
            if view is None:
                raise TemporaryError(f"the guest does not see {action.vcpus} online CPUs")
            ctx.figures["guest_online_s"] = time.monotonic() - started
            boost = f" (online boost {ONLINE_BOOST_QUOTA:g} core/vCPU)" if boosted else ""
            return f"{action.vm}: {view.online_cpus} vCPUs online in the guest{boost}"

    def compensate(self, action: HotAddVcpu, ctx: ActionContext) -> str:
        # Taking vCPUs back would be an unplug: never. A half-applied add is harmless.
        return "nothing undone (vCPU unplug is never done)"


def _memory_state(dom: libvirt.virDomain, flags: int) -> tuple[int, int, int, int]:
    """(memory MiB, maxMemory MiB, maxMemory slots, DIMMs attached) from the domain XML."""
    root = ET.fromstring(dom.XMLDesc(flags))  # noqa: S314 - libvirt's own XML

    def mib(tag: str) -> tuple[int, ET.Element | None]:
        el = root.find(tag)
        if el is None or el.text is None:
            return 0, None
        unit = el.get("unit", "KiB")
        factor = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "b": 1 / 1024 / 1024}.get(unit, 1 / 1024)
        return int(int(el.text) * factor), el

    memory, _ = mib("memory")
    maximum, max_el = mib("maxMemory")
    slots = int(max_el.get("slots", "0")) if max_el is not None else 0
    dimms = len(root.findall("./devices/memory[@model='dimm']"))
    return memory, maximum, slots, dimms


def _dimm_xml(size_mib: int) -> str:
    mem = ET.Element("memory", model="dimm")
    target = ET.SubElement(mem, "target")
    ET.SubElement(target, "size", unit="MiB").text = str(size_mib)
    ET.SubElement(target, "node").text = "0"
    return ET.tostring(mem, encoding="unicode")


class HotAddMemoryActuator:
    kind = "hot_add_memory"

    def already_done(self, action: HotAddMemory, ctx: ActionContext) -> bool:
        with ctx.fleet.connection(action.host) as conn:
            dom = find_domain(conn, action.vm)
            if dom is None or not dom.isActive():
                return False
            live = _memory_state(dom, 0)[0]
            config = _memory_state(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)[0]
            return live == action.memory_mib and config == action.memory_mib

    def _dimm_mib(self, action: HotAddMemory, ctx: ActionContext) -> int:
        return ctx.fleet.business(action.business).template.dimm_mib

    def precondition(self, action: HotAddMemory, ctx: ActionContext) -> None:
        dimm = self._dimm_mib(action, ctx)
        with ctx.fleet.connection(action.host) as conn:
            dom = _running_domain(ctx, conn, action.vm)
            require_owned(dom, action.vm, action.business, ctx.fleet, "adding memory to")
            memory, maximum, slots, dimms = _memory_state(dom, 0)
            if action.memory_mib < memory:
                raise RefusedAction(
                    f"refusing to lower {action.vm}'s memory from {memory} to"
                    f" {action.memory_mib} MiB: memory is only ever added"
                )
            if slots == 0:
                raise PreconditionFailed(f"{action.vm} has no maxMemory slots for DIMMs")
            if (action.memory_mib - memory) % dimm:
                raise PreconditionFailed(
                    f"{action.memory_mib - memory} MiB is not a whole number of {dimm} MiB DIMMs"
                )
            needed = (action.memory_mib - memory) // dimm
            if action.memory_mib > maximum or dimms + needed > slots:
                raise PreconditionFailed(
                    f"{action.vm} has room for {slots - dimms} more DIMM(s) up to {maximum} MiB;"
                    f" {action.memory_mib} MiB asked"
                )

    def execute(self, action: HotAddMemory, ctx: ActionContext) -> None:
        dimm = self._dimm_mib(action, ctx)
        with ctx.fleet.connection(action.host) as conn:
            dom = _running_domain(ctx, conn, action.vm)
            live = _memory_state(dom, 0)[0]
            config = _memory_state(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)[0]
            ctx.step("attaching-dimms")
            # LIVE and CONFIG separately: after a crash between the two, each side catches up.
            while live < action.memory_mib:
                libvirt_call(
                    "attach DIMM live",
                    lambda: dom.attachDeviceFlags(_dimm_xml(dimm), libvirt.VIR_DOMAIN_AFFECT_LIVE),
                )
                live += dimm
            while config < action.memory_mib:
                libvirt_call(
                    "attach DIMM config",
                    lambda: dom.attachDeviceFlags(
                        _dimm_xml(dimm), libvirt.VIR_DOMAIN_AFFECT_CONFIG
                    ),
                )
                config += dimm
            ctx.step("dimms-attached")

    def verify(self, action: HotAddMemory, ctx: ActionContext) -> str:
        with ctx.fleet.connection(action.host) as conn:
            dom = _running_domain(ctx, conn, action.vm)
            live = _memory_state(dom, 0)[0]
            config = _memory_state(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)[0]
            if (live, config) != (action.memory_mib, action.memory_mib):
                raise TemporaryError(
                    f"libvirt reports {live} MiB live / {config} MiB persistent,"
                    f" {action.memory_mib} wanted"
                )
            if ctx.fleet.observer is None:
                return f"{action.vm}: {live} MiB (libvirt; the guest cannot tell)"
            floor_kib = (action.memory_mib - KERNEL_RESERVED_MIB - action.memory_mib // 64) * 1024
            view = ctx.fleet.observer.wait_for(
                conn,
                dom,
                lambda v: v.mem_kib >= floor_kib,
                min(GUEST_SEES_TIMEOUT_S, max(1.0, ctx.remaining())),
            )
            if view is None:
                raise TemporaryError(f"the guest's MemTotal does not reach {floor_kib} KiB")
            return f"{action.vm}: MemTotal {view.mem_kib} KiB in the guest ({live} MiB)"

    def compensate(self, action: HotAddMemory, ctx: ActionContext) -> str:
        # DIMM removal needs the guest to offline the memory (online_movable); not worth the
        # risk for a failed add: a bigger VM than planned is harmless.
        return "nothing undone (DIMMs stay attached)"
