"""The controller file: policy folder, inventory, endpoints, state folder and intervals.

Where it sits: read once at start (and on reload) by the controller, the CLI and the lab.
Strict like the policy files: pydantic models with ``extra="forbid"``, errors naming the file,
the line and the field. The inventory (regions > datacenters > racks > hosts with libvirt URIs)
also names, per host or rack, its other sources: DPDK telemetry socket, OVS bond, uplinks,
Ceph CRUSH rack and temperature sensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from autoscaler.model import Datacenter, Host, Name, Rack, Region
from policies.brakes import BrakeSettings
from policies.yaml_source import read_yaml, validate_file


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostEntry(Strict):
    name: Name
    uri: str = Field(min_length=1, description="libvirt URI, e.g. qemu+tls://kvm-07.dc1/system")
    cpus: float = Field(gt=0, description="cores offered to guests")
    memory_mib: int = Field(gt=0, description="memory offered to guests")
    netns: str | None = Field(default=None, description="network namespace of the host's links")
    uplinks: tuple[str, ...] = ()
    ovs_bond: str | None = None
    dpdk_socket: str | None = Field(default=None, description="DPDK telemetry v2 socket path")
    node_exporter: str | None = Field(
        default=None, description="the `instance` label of this host's node-exporter"
    )
    cordoned: bool = False


class RackEntry(Strict):
    name: Name
    ceph_crush_rack: str | None = None
    temperature_sensor: str | None = Field(
        default=None, description="hwmon chip label of the rack's sensor in node-exporter"
    )
    hosts: tuple[HostEntry, ...] = Field(min_length=1)


class DatacenterEntry(Strict):
    name: Name
    racks: tuple[RackEntry, ...] = Field(min_length=1)


class RegionEntry(Strict):
    name: Name
    datacenters: tuple[DatacenterEntry, ...] = Field(min_length=1)


class Inventory(Strict):
    regions: tuple[RegionEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Inventory:
        for kind, names in (
            ("region", [r.name for r in self.regions]),
            ("datacenter", [d.name for r in self.regions for d in r.datacenters]),
            ("rack", [k.name for _, _, k in self.racks()]),
            ("host", [h.name for *_, h in self.hosts()]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{kind} names must be unique; repeated: {', '.join(dup)}")
        return self

    def racks(self) -> list[tuple[RegionEntry, DatacenterEntry, RackEntry]]:
        return [(r, d, k) for r in self.regions for d in r.datacenters for k in d.racks]

    def hosts(self) -> list[tuple[RegionEntry, DatacenterEntry, RackEntry, HostEntry]]:
        return [(r, d, k, h) for r, d, k in self.racks() for h in k.hosts]

    def topology(self) -> tuple[list[Region], list[Datacenter], list[Rack], list[Host]]:
        regions = [Region(name=r.name) for r in self.regions]
        dcs = [Datacenter(name=d.name, region=r.name) for r in self.regions for d in r.datacenters]
        racks = [Rack(name=k.name, datacenter=d.name) for _, d, k in self.racks()]
        hosts = [
            Host(
                name=h.name,
                rack=k.name,
                uri=h.uri,
                cpus=h.cpus,
                memory_mib=h.memory_mib,
                cordoned=h.cordoned,
            )
            for _, _, k, h in self.hosts()
        ]
        return regions, dcs, racks, hosts


class Prometheus(Strict):
    url: str = "http://127.0.0.1:9090"
    timeout_s: float = Field(default=5.0, gt=0)
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CAs that sign an https Prometheus's certificate (default: "
        "the system's); TLS verification is always on",
    )


class Ceph(Strict):
    conf: str
    keyring: str | None = None
    client_name: str = "client.admin"
    pool: str = "autoscaler"
    timeout_s: float = Field(default=5.0, gt=0)
    nearfull_ratio: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="no clone of a business on RBD into a pool this full (ceph df's"
        " percent_used, a ratio 0-1); the default is Ceph's mon_osd_nearfull_ratio: set the"
        " cluster's own if it runs another",
    )


class Ovs(Strict):
    control: str = Field(description="ovs-vswitchd control socket (for ovs-appctl bond/show)")
    timeout_s: float = Field(default=2.0, gt=0)


class Balancer(Strict):
    """A load balancer of the access layer, driven through its control interface."""

    name: Name
    kind: Literal["haproxy"] = "haproxy"
    socket: Path = Field(description="HAProxy's runtime API socket (stats socket ... level admin)")
    timeout_s: float = Field(default=2.0, gt=0, le=60)


class Intervals(Strict):
    collect_s: float = Field(default=5, gt=0)
    decide_s: float = Field(default=10, gt=0)
    refit_s: float = Field(default=3600, gt=0)
    ledger_s: float = Field(default=60, gt=0)
    stale_snapshot_collects: int = Field(
        default=3,
        ge=1,
        description="decide refuses a snapshot taken more than this many collect intervals ago,"
        " beyond the collection round's own deadline (a round held up by a hung source ends"
        " there, that source's scopes stale)",
    )


class Executor(Strict):
    max_migrations_per_host: int = Field(default=2, ge=1)
    max_migrations: int = Field(default=4, ge=1)
    max_concurrent_actions: int = Field(default=8, ge=1)
    action_timeout_s: float = Field(default=180, gt=0)
    retries: int = Field(default=3, ge=0)
    migration_bandwidth_mib_s: int = Field(
        default=0, ge=0, description="cap of each live migration's stream in MiB/s (0: none)"
    )
    migration_stall_s: float = Field(
        default=30, gt=0, description="abort a live migration that makes no progress this long"
    )


class Lease(Strict):
    kind: Literal["file", "rados"] = "file"
    duration_s: float = Field(default=15, gt=0)


class State(Strict):
    """Where the journal, the controls, the plans and the controller's memory live."""

    kind: Literal["local", "rados"] = Field(
        default="local",
        description="local: SQLite and files in state_dir (one machine); rados: objects in a"
        " Ceph pool, shared by every controller machine and fenced by the cluster (needs"
        " lease: {kind: rados})",
    )
    pool: str | None = Field(
        default=None, description="the RADOS pool (default: ceph.pool, the lease's)"
    )
    namespace: str = Field(
        default="autoscaler",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the RADOS namespace of the state objects (one per fleet)",
    )


class Metrics(Strict):
    listen: str = Field(default="127.0.0.1:9900", pattern=r"^[0-9a-fA-F.:\[\]]+:[0-9]{1,5}$")


# A virtio-serial port name (``org.example.agent``): dotted DNS-label characters, nothing that
# could leave the domain XML attribute or the guest's /dev/virtio-ports path.
ChannelName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$", max_length=100)
]


class Ownership(Strict):
    key_file: Path | None = Field(
        default=None,
        description="the fleet key file (one 'KEY_ID HEX' per line, the first signs); every"
        " controller of a fleet must read the same file. None: state_dir/fleet.key, made on"
        " first start (fine for one controller machine only)",
    )


class Testing(Strict):
    in_process_fence: bool = Field(
        default=True,
        description="False: the executor does not check its own lease before each step, so"
        " only the store's fence stops a deposed leader (the fault test that shows RADOS"
        " refusing its write); needs state: {kind: rados}; never on a real fleet",
    )
    fault_hooks: bool = Field(
        default=False,
        description="let AUTOSCALER_CRASH_AT / AUTOSCALER_FREEZE_AT kill or stop the controller "
        "at a journalled step (the fault tests); never on a real fleet (validate warns)",
    )


class ControllerConfig(Strict):
    api_version: Literal["autoscaler/v1"] = Field(alias="apiVersion")
    kind: Literal["Controller"]
    policy_dir: Path
    image_dir: Path
    state_dir: Path
    delivery_dir: Path | None = Field(
        default=None,
        description="template versions' configuration and code: <business>/<version>/ trees,"
        " delivered to each clone on a config drive; None: no config drives",
    )
    domain_type: Literal["qemu", "kvm"] = "kvm"
    guest_kernel: str | None = Field(
        default=None, description="boot instances from this kernel (the lab); None: from disk"
    )
    guest_initrd: str | None = None
    guest_agent: Literal["qemu-guest-agent", "serial"] = Field(
        default="qemu-guest-agent",
        description="how a guest says it is ready and what it sees: qemu-ga, or the serial agent",
    )
    guest_channels: tuple[ChannelName, ...] = Field(
        default=(),
        description="more virtio-serial channels every new instance gets (for the guest's agents)",
    )
    balloon_stats_period_s: int = Field(
        default=5,
        ge=0,
        le=3600,
        description="how often a new instance's virtio balloon reports the guest's memory"
        " statistics (memory hot-add is decided on them); 0: no statistics, no memory hot-add",
    )
    inventory: Inventory
    prometheus: Prometheus | None = None
    ceph: Ceph | None = None
    ovs: Ovs | None = None
    balancers: tuple[Balancer, ...] = Field(
        default=(),
        description="the access layer's load balancers; a business's policy names the one in"
        " front of it (``access.balancer``)",
    )
    intervals: Intervals = Intervals()
    executor: Executor = Executor()
    lease: Lease = Lease()
    state: State = State()
    metrics: Metrics = Metrics()
    ownership: Ownership = Ownership()
    brakes: BrakeSettings = Field(
        default=BrakeSettings(),
        description="fleet-wide brakes: actions per minute, and the freeze on retires and"
        " migrations when the metrics look broken",
    )
    testing: Testing = Testing()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _shared_state_needs_the_shared_lease(self) -> ControllerConfig:
        if not self.testing.in_process_fence and self.state.kind != "rados":
            raise ValueError(
                "testing.in_process_fence: false needs state: {kind: rados}: without it"
                " nothing would stop a deposed leader"
            )
        if self.state.kind == "rados" and (self.lease.kind != "rados" or self.ceph is None):
            raise ValueError(
                "state: {kind: rados} needs lease: {kind: rados} and a ceph section: the"
                " state is fenced by the lease's generation"
            )
        return self

    @model_validator(mode="after")
    def _balancer_names_unique(self) -> ControllerConfig:
        names = [b.name for b in self.balancers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"balancers: {', '.join(twice)} named twice")
        return self

    @property
    def state_pool(self) -> str:
        """The pool of the shared state (the lease's unless ``state.pool`` names another)."""
        return self.state.pool or (self.ceph.pool if self.ceph is not None else "")

    @property
    def key_file(self) -> Path:
        return self.ownership.key_file or self.state_dir / "fleet.key"

    def resolved(self, base: Path) -> ControllerConfig:
        """Relative folders are relative to the controller file's own folder."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        key_file = self.ownership.key_file
        return self.model_copy(
            update={
                "policy_dir": fix(self.policy_dir),
                "image_dir": fix(self.image_dir),
                "state_dir": fix(self.state_dir),
                "delivery_dir": fix(self.delivery_dir) if self.delivery_dir else None,
                "ownership": Ownership(key_file=fix(key_file) if key_file else None),
            }
        )


def load_controller_config(path: Path) -> ControllerConfig:
    data = read_yaml(path)
    config = validate_file(ControllerConfig, path, data)
    return config.resolved(path.parent.resolve())
