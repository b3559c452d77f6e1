"""Collector Samples → Snapshot.

Where it sits: between the collectors and ``policies.decide``. The topology comes from the
controller file's inventory; hosts get their reachability, free memory and libvirt latency from
the libvirt collectors; VMs are assembled from the per-domain samples (business from our domain
metadata, template facts from the policy, memory in use from the guest's balloon statistics
while they are fresh); samples labelled with a ``scope`` and ``target``
become Signals; whatever a collector could not see is carried over as Stale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from autoscaler.config import ControllerConfig
from autoscaler.model import (
    VM,
    BackupCatalogue,
    BackupRecord,
    Collection,
    Host,
    NicModel,
    Sample,
    Scope,
    Signal,
    Snapshot,
    Stale,
    VmState,
    check_name,
)
from autoscaler.model.access import AccessView, ServerAdmin, ServerHealth, ServerState
from policies.schema import BusinessPolicy


def _by_key(samples: Iterable[Sample], *keys: str) -> dict[tuple[str, ...], dict[str, Sample]]:
    out: dict[tuple[str, ...], dict[str, Sample]] = defaultdict(dict)
    for s in samples:
        key = tuple(s.label(k) or "" for k in keys)
        out[key][s.metric] = s
    return out


def _vm(
    host: str,
    name: str,
    metrics: dict[str, Sample],
    policies: Mapping[str, BusinessPolicy],
    ready_after: float,
) -> VM | None:
    info = metrics.get("vm_info")
    if info is None:
        return None
    try:
        check_name(name, what="vm name")
        check_name(host, what="host name")
    except ValueError:
        return None  # a domain we did not create and cannot name safely is not ours to manage
    business = info.label("business") or None
    policy = policies.get(business) if business else None
    template = policy.template.to_template() if policy else None

    def val(metric: str) -> float | None:
        sample = metrics.get(metric)
        return sample.value if sample is not None else None

    vcpus = int(val("vm_vcpus") or (template.vcpus if template else 1))
    max_vcpus = int(val("vm_template_max_vcpus") or (template.max_vcpus if template else vcpus))
    memory = int(val("vm_memory_mib") or (template.memory_mib if template else 1))
    max_memory = int(
        val("vm_template_max_memory_mib") or (template.max_memory_mib if template else memory)
    )
    state_label = info.label("state") or "unknown"
    state = VmState(state_label) if state_label in VmState.__members__.values() else VmState.UNKNOWN
    nic_label = info.label("nic") or "virtio"
    nic = NicModel(nic_label) if nic_label in NicModel.__members__.values() else NicModel.VIRTIO
    return VM(
        name=name,
        host=host,
        business=business if business and policy else None,
        state=state,
        vcpus=max(1, vcpus),
        max_vcpus=max(1, max_vcpus, vcpus),
        memory_mib=max(1, memory),
        max_memory_mib=max(1, max_memory, memory),
        nic_model=nic,
        cpu_quota=val("vm_cpu_quota"),
        cpu_utilisation=val("vm_cpu_utilisation"),
        memory_used_mib=val("vm_memory_used_mib"),
        memory_guest_total_mib=val("vm_memory_guest_total_mib"),
        ready=state is VmState.RUNNING
        and (ready_at := val("vm_ready_timestamp")) is not None
        and ready_at <= ready_after,
        draining=bool(val("vm_draining")),
        created_at=val("vm_created_timestamp"),
        owned=info.label("owned") == "1",
        address=info.label("address") or None,
        version=info.label("version") or None,
    )


def build_snapshot(
    config: ControllerConfig,
    policies: Mapping[str, BusinessPolicy],
    collections: Iterable[Collection],
    now: float,
    *,
    warmup_s: float = 0.0,
) -> Snapshot:
    """``warmup_s``: a VM counts as ready (its load as demand) only that long after it became
    ready, so the CPU of its boot does not read as load (Kubernetes' HPA ignores a new pod's CPU
    for its initialization period for the same reason)."""
    collections = list(collections)
    samples = [s for c in collections for s in c.samples]
    stale: list[Stale] = [st for c in collections for st in c.stale]
    regions, datacenters, racks, inventory_hosts = config.inventory.topology()

    per_host = _by_key((s for s in samples if s.metric.startswith("libvirt_")), "host")
    hosts: list[Host] = []
    for host in inventory_hosts:
        metrics = per_host.get((host.name,), {})
        up = metrics.get("libvirt_host_up")
        free = metrics.get("libvirt_host_free_memory_mib")
        latency = metrics.get("libvirt_call_seconds")
        hosts.append(
            host.model_copy(
                update={
                    "reachable": bool(up.value) if up is not None else False,
                    "free_memory_mib": int(free.value) if free is not None else None,
                    "libvirt_latency_s": latency.value if latency is not None else None,
                }
            )
        )
    known_hosts = {h.name for h in hosts}
    vms: list[VM] = []
    for (host_name, name), metrics in _by_key(
        (s for s in samples if s.metric.startswith("vm_")), "host", "vm"
    ).items():
        if host_name not in known_hosts:
            continue
        vm = _vm(host_name, name, metrics, policies, now - warmup_s)
        if vm is not None:
            vms.append(vm)
    # A VM seen on two hosts (mid-migration): keep the running copy.
    unique: dict[str, VM] = {}
    for vm in sorted(vms, key=lambda v: v.state is not VmState.RUNNING):
        unique.setdefault(vm.name, vm)

    signals = []
    scopes = {s.value for s in Scope}
    for s in samples:
        # Only samples about a whole scope become Signals; those with more labels (per OSD,
        # per port, per window) are details of a scope, kept for history and dashboards.
        if len(s.labels) != 2:
            continue
        scope, target = s.label("scope"), s.label("target")
        if scope in scopes and target:
            signals.append(
                Signal(
                    scope=Scope(scope),
                    target=target,
                    name=s.metric,
                    value=s.value,
                    observed_at=s.timestamp,
                )
            )
    return Snapshot(
        now=now,
        regions=tuple(regions),
        datacenters=tuple(datacenters),
        racks=tuple(racks),
        hosts=tuple(hosts),
        vms=tuple(sorted(unique.values(), key=lambda v: v.name)),
        businesses=tuple(p.to_business() for _, p in sorted(policies.items())),
        signals=tuple(signals),
        stale=tuple(stale),
        backups=backup_catalogues(samples),
        access=access_views(samples),
    )


def _safe_name(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True


def backup_catalogues(samples: Iterable[Sample]) -> tuple[BackupCatalogue, ...]:
    """The backup catalogue collector's samples as catalogues: one per business it listed
    (a business it could not list has none: unknown, so nothing is planned for it)."""
    listed: dict[str, float] = {}
    per_vm: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for s in samples:
        business = s.label("business")
        if not business or not s.metric.startswith("backup_"):
            continue
        if s.metric == "backup_catalogue_listed":
            listed[business] = s.timestamp
        elif (vm := s.label("vm")) is not None:
            per_vm[(business, vm)][s.metric] = s.value
    out = []
    for business, listed_at in sorted(listed.items()):
        records = []
        for (b, vm), figures in sorted(per_vm.items()):
            if b != business or not _safe_name(vm):
                continue
            records.append(
                BackupRecord(
                    vm=vm,
                    last_success_at=figures.get("backup_last_success_timestamp"),
                    count=int(figures.get("backup_count", 0)),
                    last_failure_at=figures.get("backup_last_failure_timestamp"),
                )
            )
        out.append(BackupCatalogue(business=business, listed_at=listed_at, records=tuple(records)))
    return tuple(out)


def access_views(samples: Iterable[Sample]) -> tuple[AccessView, ...]:
    """The access collector's samples as one view per business it asked about: the servers of
    a backend it read, or stale (with the balancer's reason) for one it could not."""
    views: dict[str, AccessView] = {}
    servers: dict[str, list[ServerState]] = defaultdict(list)
    for s in samples:
        business = s.label("business")
        if not business or not s.metric.startswith("access_"):
            continue
        if s.metric in ("access_backend_read", "access_backend_unread"):
            unread = s.metric == "access_backend_unread"
            views[business] = AccessView(
                business=business,
                balancer=s.label("balancer") or "",
                backend=s.label("backend") or "",
                read_at=s.timestamp,
                stale=unread,
                reason=(s.label("reason") or "no answer") if unread else "",
            )
        elif s.metric == "access_server_sessions":
            try:
                servers[business].append(
                    ServerState(
                        name=s.label("server") or "",
                        address=s.label("address") or "",
                        port=int(s.label("port") or 0),
                        admin=ServerAdmin(s.label("admin") or ""),
                        health=ServerHealth(s.label("health") or ""),
                        sessions=max(0, int(s.value)),
                    )
                )
            except ValueError:
                continue  # a label the vocabulary does not know: that server is not reported
    return tuple(
        view if view.stale else view.model_copy(update={"servers": tuple(servers[name])})
        for name, view in sorted(views.items())
    )
