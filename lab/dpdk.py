"""The lab's DPDK data plane: one CPU-capped ``dpdk-testpmd`` on net_null ports, with telemetry.

Where it sits: a lab component read by the DPDK collector through the telemetry v2 socket
``/var/run/dpdk/<file prefix>/dpdk_telemetry.v2``. testpmd runs without hugepages or PCI
(``--no-huge --no-pci``) on ``net_null`` virtual ports forwarding in io mode; its forwarding
lcore busy-polls, so that thread (``rte-worker-*``) is moved into a cgroup with a CPU quota
before forwarding starts; the main and telemetry threads stay uncapped and answer at once (on
cgroup v2, where threads cannot simply be split off, the whole process is capped). Its stdin
is a FIFO held open read-write (testpmd exits on end of file), through which ``command`` sends
interactive commands. The process, FIFO, cgroup and DPDK runtime folder are removed by ``stop``.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from autoscaler.model import AutoscalerError
from collectors.dpdk import TelemetryConnection, parse_port_list
from lab.layout import LabLayout
from lab.supervision import (
    ComponentStatus,
    create_cpu_cgroup,
    remove_folder,
    remove_resources,
    running_pid,
    spawn,
    start_clean,
    stop_all,
    wait_until,
)

COMPONENT = "dpdk"
PROCESS = "testpmd"
DPDK_RUNTIME_ROOT = Path("/var/run/dpdk")


@dataclass(frozen=True)
class Testpmd:
    pid: int
    telemetry_socket: Path
    ports: int
    cpu_cores: float


def runtime_dir(layout: LabLayout) -> Path:
    """DPDK's own runtime folder for the lab's file prefix (root runs it under /var/run)."""
    return DPDK_RUNTIME_ROOT / layout.dpdk_file_prefix


def telemetry_socket(layout: LabLayout) -> Path:
    return runtime_dir(layout) / "dpdk_telemetry.v2"


def _fifo(layout: LabLayout) -> Path:
    return layout.dpdk_dir / "stdin.fifo"


def start(
    layout: LabLayout, *, ports: int = 2, cpu_cores: float = 0.1, timeout: float = 30.0
) -> Testpmd:
    """Start (or keep) testpmd with ``ports`` net_null ports, capped to ``cpu_cores`` CPUs."""
    if not 1 <= ports <= 8:
        raise ValueError(f"ports must be 1..8, got {ports}")
    pid = running_pid(layout.dpdk_dir, PROCESS)
    if pid is not None and telemetry_socket(layout).exists():
        return Testpmd(pid, telemetry_socket(layout), ports, cpu_cores)
    return start_clean(layout, stop, lambda: _start_fresh(layout, ports, cpu_cores, timeout))


def _start_fresh(layout: LabLayout, ports: int, cpu_cores: float, timeout: float) -> Testpmd:
    layout.dpdk_dir.mkdir(parents=True, exist_ok=True)
    fifo = _fifo(layout)
    os.mkfifo(fifo)
    cgroup = create_cpu_cgroup(layout.dpdk_dir, f"{layout.cpu_cgroup_prefix}-dpdk", cpu_cores)
    argv = [
        "dpdk-testpmd",
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        *(f"--vdev=net_null{i}" for i in range(ports)),
        "-l",
        "0-1",
        f"--file-prefix={layout.dpdk_file_prefix}",
        "--",
        "-i",
        "--forward-mode=io",
        "--total-num-mbufs=16384",
    ]
    pid = spawn(layout.dpdk_dir, PROCESS, argv, log=layout.dpdk_dir / "testpmd.log", stdin=fifo)

    def ready() -> bool:
        if running_pid(layout.dpdk_dir, PROCESS) is None:
            log = (layout.dpdk_dir / "testpmd.log").read_text(errors="replace")
            raise RuntimeError(f"dpdk-testpmd exited: {log[-600:]}")
        return _ports_listed(layout) == ports

    wait_until(ready, timeout=timeout, what=f"{ports} ports in DPDK telemetry")
    _cap_workers(pid, cgroup)
    command(layout, "start")
    return Testpmd(pid, telemetry_socket(layout), ports, cpu_cores)


def _ports_listed(layout: LabLayout) -> int:
    try:
        connection = TelemetryConnection(telemetry_socket(layout), timeout_s=1.0)
    except AutoscalerError:
        return -1
    try:
        return len(parse_port_list(connection.query("/ethdev/list")))
    except AutoscalerError:
        return -1
    finally:
        connection.close()


def _cap_workers(pid: int, cgroup: Path) -> None:
    """Move testpmd's busy-polling worker threads into the CPU-capped cgroup."""
    if not (cgroup / "tasks").exists():  # cgroup v2: no per-thread placement here
        (cgroup / "cgroup.procs").write_text(f"{pid}\n")
        return
    workers = [
        task.name
        for task in Path(f"/proc/{pid}/task").iterdir()
        if _thread_name(task).startswith("rte-worker")
    ]
    if not workers:
        raise RuntimeError("dpdk-testpmd has no rte-worker thread to cap")
    for tid in workers:
        (cgroup / "tasks").write_text(f"{tid}\n")


def _thread_name(task: Path) -> str:
    """A thread's name; "" for one that ended while we listed them (EAL's start-up threads
    do)."""
    try:
        return task.joinpath("comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def command(layout: LabLayout, text: str) -> None:
    """Send one interactive command (e.g. ``stop``, ``start``) to the running testpmd."""
    if "\n" in text or running_pid(layout.dpdk_dir, PROCESS) is None:
        raise ValueError("testpmd is not running, or the command spans lines")
    descriptor = os.open(_fifo(layout), os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(descriptor, f"{text}\n".encode())
    finally:
        os.close(descriptor)


def kill(layout: LabLayout) -> None:
    """Fault injection: SIGKILL testpmd (its telemetry socket file stays behind, dead)."""
    pid = running_pid(layout.dpdk_dir, PROCESS)
    if pid is None:
        raise RuntimeError("testpmd is not running")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: running_pid(layout.dpdk_dir, PROCESS) is None, timeout=10, what="exit")


def stop(layout: LabLayout) -> None:
    """Stop testpmd, remove its cgroup, FIFO, folder and DPDK runtime folder."""
    stop_all(layout.dpdk_dir)
    remove_resources(layout.dpdk_dir)
    shutil.rmtree(runtime_dir(layout), ignore_errors=True)
    remove_folder(layout.dpdk_dir)


def status(layout: LabLayout) -> ComponentStatus:
    return ComponentStatus(
        component=COMPONENT,
        processes={PROCESS: running_pid(layout.dpdk_dir, PROCESS)},
        details={"telemetry": str(telemetry_socket(layout))},
    )
