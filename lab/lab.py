"""``lab up | status | down``: the whole local lab as one idempotent unit.

Where it sits: used by ``make demo``, the integration tests and ``python -m lab``. ``up``
claims a slot, builds the tiny guest once (cached), creates the bridge and one namespace +
libvirtd per host, installs the template disks, writes the lab's controller file and starts the
first VMs. ``down`` removes all of it, driven by the state file written before each step, so it
also cleans up after an ``up`` that crashed midway.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
from ruamel.yaml import YAML

from actuators.base import vm_metadata
from actuators.ceph_secret import rbd_disk_source
from actuators.config_drive import delete_drive_volume, drive_bytes, rbd_image_name, write_volume
from actuators.domain_xml import (
    AGENT_CHANNEL,
    GuestBoot,
    InstanceSpec,
    apply_cpu_quota,
    build_domain_xml,
    mark_ready,
    rbd_disks,
)
from actuators.guest_agent import SerialAgent, SerialAgentReadiness
from actuators.libvirt_events import ensure_event_loop
from actuators.rbd_store import RbdStore
from actuators.volumes import delete_overlay, ensure_overlay
from autoscaler.model import NetworkSpec, RbdStorage
from autoscaler.runtime.fleet_key import load_fleet_keys
from lab import (
    access,
    ceph,
    dhcp,
    dpdk,
    hosts,
    net,
    ovs,
    prometheus,
    rbd,
    slots,
    supervision,
    temperature,
)
from lab.images import build_lab_templates
from lab.layout import PORT_NODE_EXPORTER, LabLayout
from lab.loadchannel import LOAD_CHANNEL
from lab.spec import LabSpec
from lab.state import HostRecord, LabState
from policies.loader import load_policy, load_policy_dir
from policies.schema import BusinessPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GUEST_BUILD = Path(__file__).with_name("guest") / "build.sh"
DEFAULT_CACHE = Path(os.environ.get("AUTOSCALER_CACHE", PROJECT_ROOT / ".cache"))
EXAMPLES = PROJECT_ROOT / "examples"
DELIVERY = EXAMPLES / "delivery"
"""The template versions' configuration and code the lab's controller delivers (config drives)."""
COMPONENTS = ("prometheus", "temperature", "ceph", "dpdk", "ovs")


@dataclass(frozen=True)
class Lab:
    """A lab on disk: its layout, its state, and where its guest and examples come from."""

    layout: LabLayout
    state: LabState
    cache: Path
    parts: Components | None = None

    @property
    def controller_file(self) -> Path:
        return Path(self.state.root) / "controller.yaml"

    @property
    def kernel(self) -> Path:
        return self.cache / "guest" / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.cache / "guest" / "initrd.gz"

    def connect(self, host: str) -> libvirt.virConnect:
        """Connect to a host as the controller does: qemu+tcp through the lab bridge."""
        return libvirt.open(self.state.host(host).uri)

    def serial_log(self, host: str, vm: str) -> Path:
        return Path(self.state.host(host).base) / "log" / "qemu" / f"{vm}-serial.log"


def open_lab(root: Path, cache: Path = DEFAULT_CACHE) -> Lab | None:
    state = LabState.load(root / "lab-state.json")
    if state is None:
        return None
    return Lab(layout=LabLayout(slot=state.slot, root=root), state=state, cache=cache)


def build_guest(cache: Path) -> None:
    subprocess.run(["/bin/bash", str(GUEST_BUILD), str(cache / "guest")], check=True)


def up(
    root: Path,
    spec: LabSpec,
    *,
    cache: Path = DEFAULT_CACHE,
    slot: int | None = None,
    businesses: Path = EXAMPLES / "businesses",
    images: Path | None = None,
    start_vms: bool = True,
    components: Collection[str] = COMPONENTS,
) -> Lab:
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown lab components {sorted(unknown)}; known: {list(COMPONENTS)}")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = LabState.load(root / "lab-state.json")
    if state is None:
        claimed = slots.claim(root, preferred=slot)
        state = LabState(slot=claimed, root=str(root))
        state.save(root / "lab-state.json")
    layout = LabLayout(slot=state.slot, root=root)
    lab = Lab(layout=layout, state=state, cache=cache)
    build_guest(cache)
    # Template disks with each business's content (lab/images.py; cached), unless the caller
    # brings its own folder (examples/images holds empty placeholders of the same names).
    images = images or build_lab_templates(businesses, cache)

    if not state.hosts:
        for index, (region, dc, rack, name) in enumerate(spec.host_names()):
            state.hosts.append(
                HostRecord(
                    index=index,
                    name=name,
                    rack=rack,
                    datacenter=dc,
                    region=region,
                    netns=layout.netns(index),
                    base=str(root / "hosts" / name),
                    address=str(layout.host_address(index)),
                )
            )
        state.save(layout.state_file)

    # The lab runs the businesses it starts: their policy files are copied into the lab, so
    # the controller manages those and an operator can edit them there (mode, bounds).
    lab_businesses = root / "businesses"
    lab_businesses.mkdir(exist_ok=True)
    every = load_policy_dir(businesses, images={p.name for p in images.iterdir()})
    for name in spec.initial_vms:
        source = next(p for p in sorted(businesses.glob("*.yaml")) if p.stem == name)
        target = lab_businesses / source.name
        if not target.exists():
            shutil.copyfile(source, target)
    policies = {n: p for n, p in every.items() if n in spec.initial_vms}
    templates = {p.template.image: images / p.template.image for p in every.values()}
    net.ensure_bridge(layout)
    net.ensure_guest_fabric(layout)
    for record in state.hosts:
        net.ensure_host_netns(layout, record.index)
        net.ensure_host_guest_bridge(layout, record.index)
    # The guests' segment has its DHCP server before any guest boots and asks for an address.
    net.ensure_access_netns(layout)
    dhcp.start(layout)

    def bring_up(record: HostRecord) -> None:
        hosts.start_host(layout, record)
        hosts.prepare_host(record, templates)

    with ThreadPoolExecutor(max_workers=len(state.hosts)) as pool:
        list(pool.map(bring_up, state.hosts))
    parts = start_components(lab, components)
    lab = replace(lab, parts=parts)
    if parts.ceph is not None:
        # The businesses the lab runs (and web, which the tests clone): memstore OSDs keep
        # every byte in memory, so the others' templates are not pushed.
        rbd.push_templates(
            rbd.store(parts.ceph),
            {
                name: images / p.template.image
                for name, p in every.items()
                if name in spec.initial_vms or name == "web"
            },
        )
    if spec.storage == "rbd":
        if parts.ceph is None:
            raise ValueError("a lab with storage rbd needs the ceph component")
        policies = {n: on_rbd(lab_businesses / f"{n}.yaml") for n in policies}
    unserved = sorted(set(spec.access) - set(policies))
    if unserved:
        raise ValueError(f"access: {unserved} are not among the lab's businesses (initial_vms)")
    if spec.access:
        access.start(layout, spec.access)
        for name in spec.access:
            policies[name] = access.with_access(lab_businesses / f"{name}.yaml")
    write_controller_file(lab, spec, lab_businesses, images, parts)
    state.up = True
    state.save(layout.state_file)
    if start_vms:
        start_initial_vms(lab, spec, policies)
    start_load_driver(lab)
    return lab


def on_rbd(policy_file: Path) -> BusinessPolicy:
    """Rewrite a lab policy file so its business clones from its template on RBD, with daily
    backups into the lab's backups pool (unless it says otherwise)."""
    yaml = YAML()
    doc = yaml.load(policy_file.read_text())
    doc["template"].update(rbd.rbd_template(doc["business"]))
    doc.setdefault("backup", rbd.daily_backups())
    out = io.StringIO()
    yaml.dump(doc, out)
    policy_file.write_text(out.getvalue())
    return load_policy(policy_file)


def run_dir(lab: Lab) -> Path:
    return Path(lab.state.root) / "run"


def start_load_driver(lab: Lab) -> None:
    if supervision.running_pid(run_dir(lab), "loaddriver") is not None:
        return
    demand = Path(lab.state.root) / "demand.json"
    if not demand.exists():
        demand.write_text("{}\n")
    supervision.spawn(
        run_dir(lab),
        "loaddriver",
        [sys.executable, "-m", "lab.loaddriver", "--root", lab.state.root],
        log=Path(lab.state.root) / "logs" / "loaddriver.log",
        cwd=PROJECT_ROOT,
    )


def set_demand(lab: Lab, demand: dict[str, dict[str, object]]) -> None:
    """Replace the load driver's demand file (business -> {"cores": x} or a trace entry)."""
    path = Path(lab.state.root) / "demand.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(demand, indent=1))
    os.replace(tmp, path)


def fill_disk(
    lab: Lab, business: str, host: str, vm: str, mib: int, timeout_s: float = 180
) -> None:
    """Have ``vm``'s guest write ``mib`` MiB to its disk and sync (through the load driver,
    which holds the load port), and wait until the guest reports them written."""
    path = Path(lab.state.root) / "demand.json"
    before = json.loads(path.read_text()) if path.exists() else {}
    demand = json.loads(json.dumps(before))
    demand[business] = {**demand.get(business, {}), "fill_mib": {vm: mib}}
    set_demand(lab, demand)
    try:
        conn = lab.connect(host)
        try:
            with SerialAgent(conn, conn.lookupByName(vm)) as agent:
                if agent.wait_for(lambda v: v.data_mib == mib, timeout_s) is None:
                    raise RuntimeError(f"{vm} did not report {mib} MiB written: {agent.latest}")
        finally:
            conn.close()
    finally:
        set_demand(lab, before)


def load_status(lab: Lab) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads(
            (Path(lab.state.root) / "loaddriver-status.json").read_text()
        )
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return status


@dataclass(frozen=True)
class Components:
    """What the lab's other parts are, for its controller file."""

    prometheus: prometheus.PrometheusStack | None = None
    ceph: ceph.CephCluster | None = None
    dpdk: dpdk.Testpmd | None = None
    ovs: ovs.OvsLab | None = None
    temperature: temperature.TemperatureFeeder | None = None


def start_components(lab: Lab, wanted: Collection[str]) -> Components:
    """Prometheus (+ node-exporter, Alertmanager), the rack temperature feed, Ceph with two
    OSDs per rack, a CPU-capped dpdk-testpmd and a userspace OVS with a bond per host."""
    layout = lab.layout
    racks = sorted({h.rack for h in lab.state.hosts})
    hosts_in_order = [h.name for h in lab.state.hosts]
    return Components(
        prometheus=prometheus.start(layout, PROJECT_ROOT / "grafana" / "rules")
        if "prometheus" in wanted
        else None,
        temperature=temperature.start(layout, racks) if "temperature" in wanted else None,
        ceph=ceph.start(layout, tuple(racks), bind=str(layout.bridge_address))
        if "ceph" in wanted
        else None,
        dpdk=dpdk.start(layout) if "dpdk" in wanted else None,
        ovs=ovs.start(layout, hosts_in_order) if "ovs" in wanted else None,
    )


def stop_components(layout: LabLayout) -> None:
    for component in (access, ovs, dpdk, ceph, temperature, prometheus):
        component.stop(layout)


def write_controller_file(
    lab: Lab, spec: LabSpec, businesses: Path, images: Path, parts: Components | None = None
) -> None:
    parts = parts or Components()
    regions: dict[str, dict[str, dict[str, list[HostRecord]]]] = {}
    for h in lab.state.hosts:
        regions.setdefault(h.region, {}).setdefault(h.datacenter, {}).setdefault(h.rack, []).append(
            h
        )
    doc: dict[str, Any] = {
        "apiVersion": "autoscaler/v1",
        "kind": "Controller",
        "policy_dir": str(businesses.resolve()),
        "image_dir": str(images.resolve()),
        "state_dir": str(Path(lab.state.root) / "state"),
        "delivery_dir": str(DELIVERY),
        "domain_type": spec.domain_type,
        "guest_kernel": str(lab.kernel),
        "guest_initrd": str(lab.initrd),
        "guest_agent": "serial",
        "guest_channels": [LOAD_CHANNEL],
        # One fleet key for the lab, outside any controller's state folder: every controller
        # and test of this lab (whatever its state folder) sees the lab's VMs as ours.
        "ownership": {"key_file": str(lab_key_file(lab))},  # made by load_fleet_keys below
        "inventory": {
            "regions": [
                {
                    "name": region,
                    "datacenters": [
                        {
                            "name": dc,
                            "racks": [
                                {
                                    "name": rack,
                                    "ceph_crush_rack": rack,
                                    "temperature_sensor": f"rack_{rack}",
                                    "hosts": [host_entry(lab, spec, h, parts) for h in hs],
                                }
                                for rack, hs in racks.items()
                            ],
                        }
                        for dc, racks in dcs.items()
                    ],
                }
                for region, dcs in regions.items()
            ]
        },
    }
    if parts.prometheus is not None:
        doc["prometheus"] = {"url": parts.prometheus.url}
    if parts.ceph is not None:
        doc["ceph"] = {
            "conf": str(parts.ceph.conffile),
            "keyring": str(parts.ceph.keyring),
            "pool": parts.ceph.pool,
        }
        doc["lease"] = {"kind": "file", "duration_s": 15}
    if parts.ovs is not None:
        doc["ovs"] = {"control": str(parts.ovs.vswitchd_control)}
    balancers = access.controller_balancers(lab.layout)
    if balancers:
        doc["balancers"] = balancers
    load_fleet_keys(lab_key_file(lab), create=True)
    out = io.StringIO()
    out.write(f"# Controller file of lab slot {lab.layout.slot}, written by `python -m lab up`.\n")
    YAML(typ="safe", pure=True).dump(doc, out)
    lab.controller_file.write_text(out.getvalue())


def host_entry(lab: Lab, spec: LabSpec, h: HostRecord, parts: Components) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": h.name,
        "uri": h.uri,
        "cpus": spec.host_cpus,
        "memory_mib": spec.host_memory_mib,
        "netns": h.netns,
        "uplinks": [lab.layout.veth(h.index)[1]],
    }
    if parts.prometheus is not None:
        entry["node_exporter"] = f"127.0.0.1:{lab.layout.port(PORT_NODE_EXPORTER)}"
    if parts.ovs is not None and h.name in parts.ovs.bonds:
        entry["ovs_bond"] = parts.ovs.bonds[h.name].bond
    if parts.dpdk is not None and h.index == 0:
        # One testpmd per lab, mapped to the first host (a real fleet has one per host).
        entry["dpdk_socket"] = str(parts.dpdk.telemetry_socket)
    return entry


def lab_key_file(lab: Lab) -> Path:
    return Path(lab.state.root) / "fleet.key"


def instance_spec(lab: Lab, policy: BusinessPolicy, vm: str, host: str, disk: str) -> InstanceSpec:
    """The lab's first VMs are provisioned as the fleet's installer would: stamped with the
    fleet key, so the controller may manage them."""
    created = f"{time.time():.3f}"
    keys = load_fleet_keys(lab_key_file(lab), create=True)
    template = policy.template.to_template()
    if template.network is None:  # every lab guest is on the lab's guest segment
        template = template.model_copy(
            update={"network": NetworkSpec(bridge=lab.layout.guest_bridge)}
        )
    return InstanceSpec(
        name=vm,
        business=policy.business,
        template=template,
        disk_path=disk,
        domain_type="qemu",
        boot=GuestBoot(kernel=str(lab.kernel), initrd=str(lab.initrd)),
        created_at=float(created),
        serial_log=f"/var/log/libvirt/qemu/{vm}-serial.log",
        channels=(AGENT_CHANNEL, LOAD_CHANNEL),
        owner=keys.stamp(vm, policy.business, created),
    )


def start_initial_vms(
    lab: Lab, spec: LabSpec, policies: dict[str, BusinessPolicy], ready_timeout_s: float = 120
) -> list[str]:
    """Start each business's first instances, spread round-robin over the hosts, and wait
    until each guest is ready (then its CPU quota applies: the boot boost ends)."""
    placed: list[tuple[str, HostRecord, BusinessPolicy]] = []
    order = lab.state.hosts
    position = 0
    for business, count in sorted(spec.initial_vms.items()):
        for i in range(1, count + 1):
            placed.append((f"{business}-{i}", order[position % len(order)], policies[business]))
            position += 1

    def start(item: tuple[str, HostRecord, BusinessPolicy]) -> str:
        vm, record, policy = item
        start_vm(lab, policy, vm, record.name, ready_timeout_s)
        return vm

    ensure_event_loop()
    with ThreadPoolExecutor(max_workers=max(1, len(placed))) as pool:
        return list(pool.map(start, placed))


def start_vm(
    lab: Lab, policy: BusinessPolicy, vm: str, host: str, ready_timeout_s: float = 120
) -> None:
    """Define (if needed) and start one instance on ``host``; return once the guest is ready.

    The lab's own way to make its first VMs; the controller uses the clone actuator.
    """
    ensure_event_loop()
    conn = lab.connect(host)
    try:
        if vm in {d.name() for d in conn.listAllDomains(0)}:
            dom = conn.lookupByName(vm)
        else:
            spec = instance_spec(lab, policy, vm, host, "")
            storage = policy.template.storage
            # The version's config drive, as the clone actuator makes it (same functions).
            drive = drive_bytes(DELIVERY, vm, policy.business, policy.template.version)
            if isinstance(storage, RbdStorage):
                store = lab_rbd(lab)
                created = spec.created_text
                keys = load_fleet_keys(lab_key_file(lab), create=True)
                stamp = keys.stamp(vm, policy.business, created)
                store.clone(
                    storage.pool,
                    policy.template.image,
                    str(policy.template.version),
                    vm,
                    policy.business,
                    created,
                    stamp,
                )
                source = rbd_disk_source(conn, store, storage, vm)
                spec = replace(spec, rbd=source)
                if drive is not None:
                    image = rbd_image_name(vm)
                    store.put_image(storage.pool, image, drive, vm, policy.business, created, stamp)
                    spec = replace(spec, config_drive=replace(source, image=image))
            else:
                spec = replace(spec, disk_path=ensure_overlay(conn, vm, policy.template.image))
                if drive is not None:
                    spec = replace(spec, config_drive=write_volume(conn, vm, drive))
            dom = conn.defineXML(build_domain_xml(spec))
        if not dom.isActive():
            dom.create()
        probe = SerialAgentReadiness()
        if not probe.wait_ready(conn, dom, ready_timeout_s):
            raise RuntimeError(f"{vm} on {host} did not become ready")
        apply_cpu_quota(dom, policy.template.cpu_quota)
        mark_ready(dom, time.time(), probe.address(conn, dom))
    finally:
        conn.close()


def remove_vm(lab: Lab, vm: str, host: str) -> None:
    """Destroy, undefine and delete the disk of one lab instance (the lab's own cleanup): its
    overlay, or its RBD image (after the image's ownership check)."""
    images: list[tuple[str, str, str]] = []
    conn = lab.connect(host)
    try:
        try:
            dom = conn.lookupByName(vm)
        except libvirt.libvirtError:
            dom = None
        if dom is not None:
            meta = vm_metadata(dom)
            if meta is not None:
                images = [
                    (p, i, meta.business)
                    for p, i in rbd_disks(dom.XMLDesc(0))
                    if i in (vm, rbd_image_name(vm))
                ]
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        delete_overlay(conn, vm)
        delete_drive_volume(conn, vm)
    finally:
        conn.close()
    if images:
        store, keys = lab_rbd(lab), load_fleet_keys(lab_key_file(lab), create=True)
        for pool, image, business in images:
            store.remove(pool, vm, business, keys, image=image)


def lab_rbd(lab: Lab) -> RbdStore:
    """RBD on the lab's Ceph (a new handle: the lab's own setup and cleanup only)."""
    described = ceph.described(lab.layout)
    if described is None:
        raise RuntimeError("the lab has no Ceph")
    return rbd.store(described)


@dataclass(frozen=True)
class LabStatus:
    slot: int
    hosts: dict[str, bool]
    domains: dict[str, list[str]]


def status(lab: Lab) -> LabStatus:
    answered: dict[str, bool] = {}
    domains: dict[str, list[str]] = {}
    for record in lab.state.hosts:
        try:
            conn = libvirt.open(record.uri)
        except libvirt.libvirtError:
            answered[record.name] = False
            continue
        try:
            answered[record.name] = True
            domains[record.name] = sorted(
                d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            )
        finally:
            conn.close()
    return LabStatus(slot=lab.state.slot, hosts=answered, domains=domains)


def down(root: Path, *, purge: bool = False, cache: Path = DEFAULT_CACHE) -> None:
    """Remove every process, namespace, link, mount, cgroup and file of the lab at ``root``."""
    root = root.resolve()
    state = LabState.load(root / "lab-state.json")
    if state is not None:
        layout = LabLayout(slot=state.slot, root=root)
        supervision.stop_all(root / "run")
        stop_components(layout)
        for record in state.hosts:
            hosts.stop_host(record)
        dhcp.stop(layout)
        for record in state.hosts:
            net.remove_host_netns(layout, record.index)
        net.remove_guest_network(layout)
        net.remove_bridge(layout)
    if root.exists():
        shutil.rmtree(root)
    slots.release(root)
    if purge and cache.exists():
        shutil.rmtree(cache)
