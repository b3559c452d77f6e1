"""The lab's Ceph cluster: 1 mon, 1 mgr and memstore OSDs under CRUSH ``rack`` buckets.

Where it sits: a lab component read by the Ceph collector (and used for the RADOS lease). Each
inventory rack gets its OSDs (2 by default) under a CRUSH ``rack`` bucket of the same name; a
pool of size 2 / min_size 1 is spread by rack, so a whole rack can stop without losing data.
Everything binds 127.0.0.1 on the slot's ports (mon on ``PORT_CEPH_MON``, mgr prometheus module
on ``PORT_CEPH_MGR_PROMETHEUS``, other daemons in the messenger block), client op timeouts are
set so no call hangs, and all state lives under ``layout.ceph_dir``. Daemons run in the
foreground under pid files; ``stop_osd``/``start_osd`` inject faults.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rados
import rbd

from autoscaler.model.names import check_name
from lab.layout import (
    PORT_CEPH_MESSENGER_FIRST,
    PORT_CEPH_MESSENGER_LAST,
    PORT_CEPH_MGR_PROMETHEUS,
    PORT_CEPH_MON,
    LabLayout,
)
from lab.supervision import (
    ComponentStatus,
    http_ok,
    recorded_names,
    remove_folder,
    run,
    running_pid,
    spawn,
    start_clean,
    stop_all,
    stop_process,
    wait_until,
)

COMPONENT = "ceph"
POOL = "lab"
IMAGES_POOL = "images"
BACKUPS_POOL = "backups"
LOOPBACK = "127.0.0.1"
CLIENT_TIMEOUT_S = 10
MGR_DISABLED_MODULES = (
    "alerts,diskprediction_local,influx,insights,iostat,localpool,mirroring,nfs,osd_perf_query,"
    "osd_support,restful,selftest,snap_schedule,stats,telegraf,test_orchestrator,zabbix"
)


@dataclass(frozen=True)
class CephCluster:
    """What ``start`` started and how a client reaches it."""

    conffile: Path
    keyring: Path
    pool: str
    osds_by_rack: dict[str, tuple[int, ...]]
    mon_address: str
    mgr_prometheus_url: str
    pids: dict[str, int]


def _run_dir(layout: LabLayout) -> Path:
    return layout.ceph_dir / "run"


def _conf(layout: LabLayout) -> Path:
    return layout.ceph_dir / "ceph.conf"


def _keyring(layout: LabLayout) -> Path:
    return layout.ceph_dir / "keyring"


def _description(layout: LabLayout) -> Path:
    return layout.ceph_dir / "cluster.json"


def _bind_file(layout: LabLayout) -> Path:
    return layout.ceph_dir / "bind-address"


def bind_address(layout: LabLayout) -> str:
    """The address every daemon binds: loopback, or the lab bridge's when guests on the lab's
    hosts (in their own network namespaces) must reach the cluster for their RBD disks."""
    try:
        return _bind_file(layout).read_text().strip() or LOOPBACK
    except FileNotFoundError:
        return LOOPBACK


def _mon_address(layout: LabLayout) -> str:
    return f"{bind_address(layout)}:{layout.port(PORT_CEPH_MON)}"


def render_conf(layout: LabLayout, fsid: str) -> str:
    """ceph.conf of the lab cluster (paths are ours, so no value needs quoting)."""
    d = layout.ceph_dir
    return f"""[global]
fsid = {fsid}
mon host = [v2:{_mon_address(layout)}]
public addr = {bind_address(layout)}
cluster addr = {bind_address(layout)}
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = {layout.port(PORT_CEPH_MESSENGER_FIRST)}
ms bind port max = {layout.port(PORT_CEPH_MESSENGER_LAST)}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
crash dir = {d}/crash
exporter sock dir = {d}/run
osd pool default size = 2
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
auth allow insecure global id reclaim = false
; every OSD shares this machine: count reporters per OSD, or a stopped OSD is never marked down
mon osd reporter subtree level = osd
mon osd min down reporters = 1
osd heartbeat grace = 6
; a busy two-core machine can make an OSD miss the short grace a few times: an OSD marked
; down 5 times in 10 minutes would otherwise shut itself down for good
osd max markdown count = 1000
osd heartbeat interval = 1
mon pg stuck threshold = 10
rados osd op timeout = {CLIENT_TIMEOUT_S}
rados mon op timeout = {CLIENT_TIMEOUT_S}
client mount timeout = {CLIENT_TIMEOUT_S}
[client]
admin socket =
[mon]
mon data = {d}/mon.$id
mon cluster log file = {d}/log/cluster.log
mon data avail warn = 2
mon data avail crit = 1
mon mgr digest period = 1
mgr initial modules = prometheus
[mgr]
mgr disabled modules = {MGR_DISABLED_MODULES}
mgr stats period = 1
mgr data = {d}/mgr.$id
keyring = {d}/mgr.$id/keyring
[osd]
osd data = {d}/osd$id
keyring = {d}/osd$id/keyring
osd objectstore = memstore
; a SIGTERM really unmounts the store, so memstore data survives an OSD restart
osd fast shutdown = false
memstore device bytes = 536870912
osd memory target = 939524096
osd op num shards = 1
osd op num threads per shard = 2
"""


def _mon_command(client: Any, command: dict[str, object], inbuf: bytes = b"") -> Any:
    ret, out, err = client.mon_command(json.dumps(command), inbuf, timeout=CLIENT_TIMEOUT_S)
    if ret != 0:
        raise RuntimeError(f"ceph {command['prefix']}: {err or ret}")
    return json.loads(out) if out else None


def _connect(layout: LabLayout) -> Any:
    client = rados.Rados(
        conffile=str(_conf(layout)), conf={"keyring": str(_keyring(layout))}, name="client.admin"
    )
    client.connect(timeout=CLIENT_TIMEOUT_S)
    return client


def _spawn_daemon(layout: LabLayout, binary: str, daemon: str, ident: str) -> int:
    return spawn(
        _run_dir(layout),
        f"{daemon}.{ident}",
        [binary, "-c", str(_conf(layout)), "-i", ident, "-f"],
        log=layout.ceph_dir / "log" / f"{daemon}.{ident}.stdout",
    )


def _authtool(*args: str) -> None:
    run(["ceph-authtool", *args])


def _bootstrap_keys(layout: LabLayout) -> None:
    keyring, mgr_keyring = str(_keyring(layout)), str(layout.ceph_dir / "mgr.x" / "keyring")
    _authtool("--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
    _authtool(
        keyring,
        "--gen-key",
        "-n",
        "client.admin",
        "--cap",
        "mon",
        "allow *",
        "--cap",
        "osd",
        "allow *",
        "--cap",
        "mgr",
        "allow *",
    )
    _authtool(
        "--create-keyring",
        mgr_keyring,
        "--gen-key",
        "-n",
        "mgr.x",
        "--cap",
        "mon",
        "allow profile mgr",
        "--cap",
        "osd",
        "allow *",
    )
    _authtool(keyring, "--import-keyring", mgr_keyring)


def start(
    layout: LabLayout,
    racks: Sequence[str],
    *,
    osds_per_rack: int = 2,
    timeout: float = 90.0,
    bind: str = LOOPBACK,
) -> CephCluster:
    """Start (or keep, if running with the same racks) the lab cluster; HEALTH_OK on return.

    ``bind`` is the address the daemons listen on (the lab bridge's, so that QEMU in a host's
    namespace reaches its RBD disks). Besides the state pool, the cluster has an ``images``
    pool for VM disks (by rack, like the state) and a ``backups`` pool on a CRUSH rule of its
    own, so a backup need not share the failure domain rule of what it protects.
    """
    names = tuple(check_name(r, what="rack") for r in racks)
    if not names or osds_per_rack < 1:
        raise ValueError("need at least one rack and one OSD per rack")
    current = status(layout)
    existing = _load(layout)
    if (
        current.running
        and existing is not None
        and _same_shape(existing, names, osds_per_rack)
        and bind_address(layout) == bind
    ):
        return existing
    return start_clean(
        layout, stop, lambda: _start_fresh(layout, names, osds_per_rack, timeout, bind)
    )


def _same_shape(cluster: CephCluster, racks: tuple[str, ...], osds_per_rack: int) -> bool:
    return tuple(cluster.osds_by_rack) == racks and all(
        len(ids) == osds_per_rack for ids in cluster.osds_by_rack.values()
    )


def _start_fresh(
    layout: LabLayout, racks: tuple[str, ...], osds_per_rack: int, timeout: float, bind: str
) -> CephCluster:
    base = layout.ceph_dir
    for sub in ("run", "log", "crash", "mon.a", "mgr.x"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    _bind_file(layout).write_text(bind + "\n")
    fsid = str(uuid.uuid4())
    conf = _conf(layout)
    conf.write_text(render_conf(layout, fsid))
    _bootstrap_keys(layout)
    monmap = str(base / "monmap")
    run(
        [
            "monmaptool",
            "--create",
            "--clobber",
            "--enable-all-features",
            "--fsid",
            fsid,
            "--addv",
            "a",
            f"[v2:{_mon_address(layout)}]",
            monmap,
        ]
    )
    run(
        [
            "ceph-mon",
            "-c",
            str(conf),
            "-i",
            "a",
            "--mkfs",
            "--monmap",
            monmap,
            "--keyring",
            str(_keyring(layout)),
        ]
    )
    pids = {"mon.a": _spawn_daemon(layout, "ceph-mon", "mon", "a")}
    client = _connect(layout)
    try:
        for key, value in (
            ("mgr/prometheus/server_addr", "127.0.0.1"),
            ("mgr/prometheus/server_port", str(layout.port(PORT_CEPH_MGR_PROMETHEUS))),
            ("mgr/prometheus/scrape_interval", "2"),
            ("mgr/devicehealth/enable_monitoring", "false"),
        ):
            _mon_command(
                client,
                {"prefix": "config set", "who": "mgr", "name": key, "value": value, "force": True},
            )
        pids["mgr.x"] = _spawn_daemon(layout, "ceph-mgr", "mgr", "x")
        osds_by_rack = _create_osds(layout, client, racks, osds_per_rack)
        for ids in osds_by_rack.values():
            for osd in ids:
                pids[f"osd.{osd}"] = _spawn_daemon(layout, "ceph-osd", "osd", str(osd))
        total = len(racks) * osds_per_rack
        wait_until(
            lambda: _mon_command(client, {"prefix": "osd stat", "format": "json"})["num_up_osds"]
            == total,
            timeout=timeout,
            what=f"{total} OSDs up",
        )
        _create_pool(client)
        wait_until(lambda: _pgs_clean(client), timeout=timeout, what="every PG active+clean")
        cluster = CephCluster(
            conffile=conf,
            keyring=_keyring(layout),
            pool=POOL,
            osds_by_rack=osds_by_rack,
            mon_address=_mon_address(layout),
            mgr_prometheus_url=f"http://127.0.0.1:{layout.port(PORT_CEPH_MGR_PROMETHEUS)}/metrics",
            pids=pids,
        )
        _description(layout).write_text(
            json.dumps({"racks": {r: list(ids) for r, ids in osds_by_rack.items()}})
        )
        wait_until(
            lambda: http_ok(cluster.mgr_prometheus_url),
            timeout=timeout,
            what="the mgr prometheus module",
        )
        wait_until(
            lambda: _mon_command(client, {"prefix": "health", "format": "json"})["status"]
            == "HEALTH_OK",
            timeout=timeout,
            what="HEALTH_OK",
        )
    finally:
        client.shutdown()
    return cluster


def _create_osds(
    layout: LabLayout, client: Any, racks: tuple[str, ...], osds_per_rack: int
) -> dict[str, tuple[int, ...]]:
    """Register the OSDs, give each its CRUSH location, and mkfs them in parallel."""
    conf = _conf(layout)
    osds_by_rack: dict[str, tuple[int, ...]] = {}
    secrets: dict[int, tuple[str, str]] = {}
    for rack in racks:
        ids: list[int] = []
        for _ in range(osds_per_rack):
            osd_uuid = str(uuid.uuid4())
            secret = run(["ceph-authtool", "--gen-print-key"]).strip()
            created = _mon_command(
                client,
                {"prefix": "osd new", "uuid": osd_uuid, "format": "json"},
                json.dumps({"cephx_secret": secret}).encode(),
            )
            osd = int(created["osdid"])
            (layout.ceph_dir / f"osd{osd}").mkdir()
            (layout.ceph_dir / f"osd{osd}" / "keyring").write_text(
                f"[osd.{osd}]\n\tkey = {secret}\n"
            )
            with conf.open("a") as handle:
                handle.write(
                    f"[osd.{osd}]\ncrush location = root=default rack={rack} host={rack}-osd{osd}\n"
                )
            secrets[osd] = (osd_uuid, secret)
            ids.append(osd)
        osds_by_rack[rack] = tuple(ids)
    for osd, (osd_uuid, secret) in secrets.items():  # memstore mkfs takes a fraction of a second
        run(["ceph-osd", "-c", str(conf), "-i", str(osd), "--mkfs", "--key", secret,
             "--osd-uuid", osd_uuid], timeout=60)  # fmt: skip
    return osds_by_rack


def _create_pool(client: Any) -> None:
    _mon_command(
        client,
        {
            "prefix": "osd crush rule create-replicated",
            "name": "by-rack",
            "root": "default",
            "type": "rack",
        },
    )
    _mon_command(
        client,
        {
            "prefix": "osd pool create",
            "pool": POOL,
            "pg_num": 8,
            "pgp_num": 8,
            "pool_type": "replicated",
            "rule": "by-rack",
        },
    )
    _mon_command(
        client,
        {
            "prefix": "osd crush rule create-replicated",
            "name": "backups-by-osd",
            "root": "default",
            "type": "osd",
        },
    )
    for pool, rule, app in (
        (POOL, "by-rack", "rados"),
        (IMAGES_POOL, "by-rack", "rbd"),
        (BACKUPS_POOL, "backups-by-osd", "rbd"),
    ):
        if pool != POOL:
            _mon_command(
                client,
                {
                    "prefix": "osd pool create",
                    "pool": pool,
                    "pg_num": 8,
                    "pgp_num": 8,
                    "pool_type": "replicated",
                    "rule": rule,
                },
            )
        for var, val in (("size", "2"), ("min_size", "1")):
            _mon_command(client, {"prefix": "osd pool set", "pool": pool, "var": var, "val": val})
        _mon_command(client, {"prefix": "osd pool application enable", "pool": pool, "app": app})
        if app == "rbd":
            with client.open_ioctx(pool) as ioctx:
                rbd.RBD().pool_init(ioctx, False)


def _pgs_clean(client: Any) -> bool:
    summary = _mon_command(client, {"prefix": "pg stat", "format": "json"})["pg_summary"]
    clean = sum(s["num"] for s in summary["num_pg_by_state"] if s["name"] == "active+clean")
    return bool(summary["num_pgs"] > 0 and clean == summary["num_pgs"])


def described(layout: LabLayout) -> CephCluster | None:
    """The lab cluster as ``start`` described it, None when there is none."""
    return _load(layout)


def _load(layout: LabLayout) -> CephCluster | None:
    try:
        described = json.loads(_description(layout).read_text())
        racks = {str(r): tuple(int(i) for i in ids) for r, ids in described["racks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    run_dir = _run_dir(layout)
    return CephCluster(
        conffile=_conf(layout),
        keyring=_keyring(layout),
        pool=POOL,
        osds_by_rack=racks,
        mon_address=_mon_address(layout),
        mgr_prometheus_url=f"http://127.0.0.1:{layout.port(PORT_CEPH_MGR_PROMETHEUS)}/metrics",
        pids={n: p for n in recorded_names(run_dir) if (p := running_pid(run_dir, n)) is not None},
    )


def stop_osd(layout: LabLayout, osd: int) -> None:
    """Fault injection: stop one OSD with SIGTERM (memstore keeps its data for a restart)."""
    if not stop_process(_run_dir(layout), f"osd.{osd}"):
        raise RuntimeError(f"osd.{osd} was not running")


def start_osd(layout: LabLayout, osd: int) -> int:
    """Restart an OSD stopped by ``stop_osd``; returns its pid (it rejoins within seconds)."""
    pid = running_pid(_run_dir(layout), f"osd.{osd}")
    return pid if pid is not None else _spawn_daemon(layout, "ceph-osd", "osd", str(osd))


def stop_mon(layout: LabLayout) -> None:
    """Fault injection: stop the monitor with SIGTERM (its store keeps the cluster's maps)."""
    if not stop_process(_run_dir(layout), "mon.a"):
        raise RuntimeError("mon.a was not running")


def start_mon(layout: LabLayout) -> int:
    """Restart the monitor stopped by ``stop_mon``; returns its pid (clients find it again)."""
    pid = running_pid(_run_dir(layout), "mon.a")
    return pid if pid is not None else _spawn_daemon(layout, "ceph-mon", "mon", "a")


def stop(layout: LabLayout) -> None:
    """Stop the OSDs, then the mgr, then the mon, and remove the cluster's folder."""
    stop_all(_run_dir(layout))  # newest first: OSDs, then the mgr, then the mon
    remove_folder(layout.ceph_dir)


def status(layout: LabLayout) -> ComponentStatus:
    run_dir = _run_dir(layout)
    names = recorded_names(run_dir)
    return ComponentStatus(
        component=COMPONENT,
        processes={name: running_pid(run_dir, name) for name in names},
        details={"mon": _mon_address(layout)},
    )
