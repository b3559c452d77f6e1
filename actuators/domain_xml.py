"""Domain XML for an instance of a business, and the controller's metadata in it.

Where it sits: used by the clone actuator (and the lab, which starts its first VMs the same
way) to turn a Template into a libvirt domain, and by collectors and actuators to read back
which business a domain belongs to. XML is built with ElementTree, never by formatting strings,
and every name is a validated ``Name``, so nothing from a policy file can inject markup.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from actuators.rbd_store import RbdDiskSource
from autoscaler.model import FleetKeys, OwnershipStamp, Template, check_name

METADATA_NS = "https://kvm-autoscaler.dev/ns/vm/1"
METADATA_PREFIX = "as"
JOURNAL_NS = "https://kvm-autoscaler.dev/ns/journal/1"
# The serial agent's channel (``actuators.guest_agent``) and the QEMU guest agent's.
AGENT_CHANNEL = "org.kvm-autoscaler.agent"
QEMU_GA_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class GuestBoot:
    """How the guest boots: a kernel + initramfs (the lab) or the disk's own loader."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = "console=ttyS0 quiet memhp_default_state=online"


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    business: str
    template: Template
    disk_path: str
    """The qcow2 overlay's path (storage local); unused when ``rbd`` is set."""
    domain_type: str = "qemu"
    boot: GuestBoot = field(default_factory=GuestBoot)
    mac: str | None = None
    uuid: str | None = None
    created_at: float | None = None
    channels: tuple[str, ...] = ()
    """Named virtio-serial channels (unix sockets bound by QEMU) for the guest's agents."""
    serial_log: str | None = None
    balloon_stats_period_s: int = 5
    """How often the guest's virtio balloon reports its memory statistics (what memory hot-add
    is decided on); 0: a balloon without statistics."""
    owner: OwnershipStamp | None = None
    """The ownership stamp (``FleetKeys.stamp`` of name, business and ``created_text``)."""
    rbd: RbdDiskSource | None = None
    """The disk is this RBD image (storage rbd) instead of the overlay file."""
    config_drive: str | RbdDiskSource | None = None
    """The template version's config drive (``config_drive``) as the second disk, vdb: a raw
    file (storage local) or an RBD image; None: no drive."""
    boot_boost: bool = True
    """Start without the CPU quota (it is applied once the guest is ready: see apply_cpu_quota).
    A throttled TCG guest boots four times slower; real clouds boost boot the same way."""

    @property
    def created_text(self) -> str:
        """``created_at`` as the metadata holds it (what the ownership stamp signs)."""
        return f"{self.created_at:.3f}" if self.created_at is not None else ""

    def __post_init__(self) -> None:
        check_name(self.name, what="vm name")
        check_name(self.business, what="business name")
        if not 0 <= self.balloon_stats_period_s <= 3600:
            raise ValueError(f"balloon stats period not in 0-3600 s: {self.balloon_stats_period_s}")
        if self.domain_type not in ("qemu", "kvm"):
            raise ValueError(f"domain type must be 'qemu' or 'kvm', got {self.domain_type!r}")


def random_mac(rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*(r.randint(0, 255) for _ in range(3)))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build_domain_xml(spec: InstanceSpec) -> str:
    t = spec.template
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid or str(uuid.uuid4()))
    meta = _sub(dom, "metadata")
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    vm_meta = ET.SubElement(meta, f"{{{METADATA_NS}}}vm")
    vm_meta.set("business", spec.business)
    vm_meta.set("image", t.image)
    vm_meta.set("max-vcpus", str(t.max_vcpus))
    vm_meta.set("max-memory-mib", str(t.max_memory_mib))
    vm_meta.set("nic", t.nic_model.value)
    if t.version is not None:
        vm_meta.set("version", t.version)
    if t.cpu_quota is not None:
        vm_meta.set("cpu-quota", f"{t.cpu_quota:g}")
    if spec.created_at is not None:
        vm_meta.set("created", spec.created_text)
    if spec.owner is not None:
        vm_meta.set("owner-key", spec.owner.key_id)
        vm_meta.set("owner-mac", spec.owner.mac)
    slots = max(1, (t.max_memory_mib - t.memory_mib + t.dimm_mib - 1) // t.dimm_mib)
    _sub(dom, "maxMemory", str(t.memory_mib + slots * t.dimm_mib), slots=str(slots), unit="MiB")
    _sub(dom, "memory", str(t.memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(t.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(t.max_vcpus), placement="static", current=str(t.vcpus))
    if t.cpu_quota is not None and not spec.boot_boost:
        tune = _sub(dom, "cputune")
        _sub(tune, "period", "100000")
        _sub(tune, "quota", str(int(t.cpu_quota * 100000)))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.boot.kernel:
        _sub(os_el, "kernel", spec.boot.kernel)
        if spec.boot.initrd:
            _sub(os_el, "initrd", spec.boot.initrd)
        # The business configuration reaches the guest as kernel parameters (names are safe).
        cmdline = f"{spec.boot.cmdline} as.vm={spec.name} as.business={spec.business}"
        if t.network is not None:
            cmdline += " as.net=dhcp"  # a guest on a network asks for its address
        _sub(os_el, "cmdline", cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
    _sub(cpu, "model", "qemu64", fallback="forbid")
    numa = _sub(cpu, "numa")
    _sub(numa, "cell", id="0", cpus=f"0-{t.max_vcpus - 1}", memory=str(t.memory_mib), unit="MiB")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    _sub(dev, "emulator", "/usr/bin/qemu-system-x86_64")
    if spec.rbd is not None:
        _rbd_disk(dev, spec.rbd, "vda")
    else:
        _file_disk(dev, spec.disk_path, "qcow2", "vda")
    # The config drive is not marked read-only (the guest mounts it ro): a live migration
    # without shared storage copies only writable disks, and the destination must get it.
    if isinstance(spec.config_drive, RbdDiskSource):
        _rbd_disk(dev, spec.config_drive, "vdb")
    elif spec.config_drive is not None:
        drive = _file_disk(dev, spec.config_drive, "raw", "vdb")
        # A disk snapshot (snapshot.py: external, of vda) leaves the drive as it is.
        drive.set("snapshot", "no")
    if t.network is not None:
        # On the host's bridge of that name (the same on every host: migration finds it).
        nic = _sub(dev, "interface", type="bridge")
        _sub(nic, "source", bridge=t.network.bridge)
    else:
        nic = _sub(dev, "interface", type="ethernet")  # attached to nothing
    _sub(nic, "mac", address=spec.mac or random_mac())
    _sub(nic, "model", type="virtio")
    serial = _sub(dev, "serial", type="pty")
    if spec.serial_log:
        _sub(serial, "log", file=spec.serial_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(dev, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if spec.channels:
        for channel in spec.channels:
            ch = _sub(dev, "channel", type="unix")
            _sub(ch, "source", mode="bind")
            _sub(ch, "target", type="virtio", name=channel)
    # The virtio balloon is never inflated here: it is how the guest reports the memory it
    # uses (``memoryStats``), which memory hot-add is decided on (QEMU's RSS only grows).
    balloon = _sub(dev, "memballoon", model="virtio")
    if spec.balloon_stats_period_s > 0:
        _sub(balloon, "stats", period=str(spec.balloon_stats_period_s))
    return ET.tostring(dom, encoding="unicode")


def _file_disk(devices: ET.Element, path: str, fmt: str, target: str) -> ET.Element:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt, cache="none")
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus="virtio")
    return disk


def _rbd_disk(devices: ET.Element, source: RbdDiskSource, target: str) -> None:
    disk = _sub(devices, "disk", type="network", device="disk")
    # writeback is what RBD's own cache is safe with; QEMU flushes it on the guest's flushes.
    _sub(disk, "driver", name="qemu", type="raw", cache="writeback", discard="unmap")
    if source.secret_uuid is not None:
        auth = _sub(disk, "auth", username=source.user)
        _sub(auth, "secret", type="ceph", uuid=source.secret_uuid)
    src = _sub(disk, "source", protocol="rbd", name=f"{source.pool}/{source.image}")
    for host, port in source.monitors:
        _sub(src, "host", name=host, port=str(port))
    _sub(disk, "target", dev=target, bus="virtio")


def rbd_disks(xml: str) -> list[tuple[str, str]]:
    """(pool, image) of every RBD disk of a domain's XML."""
    root = ET.fromstring(xml)  # noqa: S314 - libvirt's own XML
    out = []
    for source in root.findall("./devices/disk[@type='network']/source[@protocol='rbd']"):
        pool, _, image = source.get("name", "").partition("/")
        if pool and image:
            out.append((pool, image))
    return out


def rbd_user(xml: str) -> str:
    """The cephx user the domain's RBD disk authenticates as (admin without auth)."""
    root = ET.fromstring(xml)  # noqa: S314 - libvirt's own XML
    auth = root.find("./devices/disk[@type='network']/auth")
    return check_name(auth.get("username", "admin") if auth is not None else "admin", what="user")


@dataclass(frozen=True)
class VmMetadata:
    business: str
    image: str
    max_vcpus: int
    max_memory_mib: int
    nic: str
    cpu_quota: float | None
    created_at: float | None
    draining: bool = False
    created_text: str = ""
    owner: OwnershipStamp | None = None
    address: str | None = None
    """The address the guest reported when it became ready (``mark_ready``)."""

    def owned(self, name: str, keys: FleetKeys | None) -> bool:
        """Whether this metadata carries a valid ownership stamp for domain ``name``."""
        return keys is not None and keys.verify(name, self.business, self.created_text, self.owner)


def parse_vm_metadata(text: str) -> VmMetadata | None:
    """Parse our ``<as:vm>`` metadata element (as returned by ``dom.metadata``); None if absent.

    Raises ``ValueError`` when the element is present but malformed or names an unsafe business.
    """
    if not text:
        return None
    try:
        el = ET.fromstring(text)  # noqa: S314 - libvirt's own output of our element, no DTDs
    except ET.ParseError as exc:
        raise ValueError(f"unreadable vm metadata: {exc}") from exc
    try:
        quota = el.get("cpu-quota")
        created = el.get("created")
        return VmMetadata(
            business=check_name(el.get("business", ""), what="business in domain metadata"),
            image=el.get("image", ""),
            max_vcpus=int(el.get("max-vcpus", "0")),
            max_memory_mib=int(el.get("max-memory-mib", "0")),
            nic=el.get("nic", "virtio"),
            cpu_quota=float(quota) if quota else None,
            created_at=float(created) if created else None,
            draining=el.get("draining") == "1",
            created_text=created or "",
            address=_address(el.get("address")),
            owner=(
                OwnershipStamp(key_id=el.get("owner-key", ""), mac=el.get("owner-mac", ""))
                if el.get("owner-mac")
                else None
            ),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid vm metadata: {exc}") from exc


def _address(text: str | None) -> str | None:
    """An IP address from the metadata, normalised; ValueError if it is not one."""
    return str(ipaddress.ip_address(text)) if text else None


def apply_cpu_quota(domain: libvirt.virDomain, quota: float | None) -> None:
    """Set the per-vCPU CPU quota live and in the persistent definition (ends the boot boost)."""
    if quota is None:
        return
    params = {"vcpu_period": 100000, "vcpu_quota": int(quota * 100000)}
    # libvirt refuses LIVE|CONFIG together for scheduler parameters: one call each.
    domain.setSchedulerParametersFlags(params, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    domain.setSchedulerParametersFlags(params, libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def update_vm_metadata(domain: libvirt.virDomain, **attrs: str | None) -> None:
    """Set (or, with None, remove) attributes of our ``<as:vm>`` element, live and persistent.

    Attribute names use '_' for '-' (``max_vcpus`` -> ``max-vcpus``).
    """
    try:
        current = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        el = ET.fromstring(current)  # noqa: S314 - libvirt's copy of our own element
    except libvirt.libvirtError:
        el = ET.Element("vm")
    for key, value in attrs.items():
        name = key.replace("_", "-")
        if value is None:
            el.attrib.pop(name, None)
        else:
            el.set(name, value)
    el.tag = "vm"
    xml = ET.tostring(el, encoding="unicode")
    flags = [libvirt.VIR_DOMAIN_AFFECT_CONFIG]
    if domain.isActive():
        flags.append(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    for flag in flags:
        domain.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, METADATA_PREFIX, METADATA_NS, flag
        )


def mark_ready(domain: libvirt.virDomain, at: float, address: str | None = None) -> None:
    """Mark the VM ready, with the address its guest reported (if it reported one).

    The address lives in the domain's metadata, which migrates with the domain: the
    collectors read it from there wherever the VM runs.
    """
    update_vm_metadata(
        domain, ready=f"{at:.3f}", address=_address(address) if address is not None else None
    )
