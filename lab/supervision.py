"""Processes and kernel resources a lab component starts, recorded so they can always be removed.

Where it sits: under every lab component (Ceph, DPDK, OVS, Prometheus, the temperature feeder).
A component records each resource in its own folder *before* creating it (a cgroup, a network
namespace) and each process's pid file right after spawning it, so ``stop`` can remove
everything even after a crash midway through ``start``. Pid files hold the pid and the process
start time, so a recycled pid is never signalled. Everything here uses argument lists only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from lab.layout import LabLayout

T = TypeVar("T")

CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
LEDGER_NAME = "resources.jsonl"


@dataclass(frozen=True)
class ComponentStatus:
    """What ``status(layout)`` of a component reports: each recorded process and whether it runs."""

    component: str
    processes: Mapping[str, int | None] = field(default_factory=dict)
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return bool(self.processes) and all(pid is not None for pid in self.processes.values())


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; raise ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """True if ``url`` (a loopback URL the lab built) answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_comm = stat.rsplit(")", 1)[1].split()
    if after_comm[0] in ("Z", "X"):
        return None
    return after_comm[19]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def start_clean(
    layout: LabLayout, stop: Callable[[LabLayout], None], start_fresh: Callable[[], T]
) -> T:
    """Stop whatever is left of a component, start it afresh; on any failure stop it again.

    So a start that fails halfway never leaves processes or resources behind.
    """
    stop(layout)
    try:
        return start_fresh()
    except BaseException:
        stop(layout)
        raise


def pid_alive(pid: int) -> bool:
    _reap(pid)
    return _start_time(pid) is not None


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def record_pid(run_dir: Path, name: str, pid: int) -> None:
    start = _start_time(pid) or "?"
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file(run_dir, name).write_text(f"{pid} {start}\n")


def running_pid(run_dir: Path, name: str) -> int | None:
    """The pid recorded under ``name`` if that very process still runs (not a recycled pid)."""
    try:
        fields = pid_file(run_dir, name).read_text().split()
    except OSError:
        return None
    if not fields or not fields[0].isdigit():
        return None
    pid = int(fields[0])
    _reap(pid)
    start = _start_time(pid)
    if start is None:
        return None
    if len(fields) > 1 and fields[1] != "?" and fields[1] != start:
        return None
    return pid


def recorded_names(run_dir: Path) -> list[str]:
    """Names of every pid file in ``run_dir``, oldest first."""
    if not run_dir.is_dir():
        return []
    files = sorted(run_dir.glob("*.pid"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [p.stem for p in files]


def _python_path() -> str:
    # The lab is not installed with the product: its Python helpers (``python -m lab.X``) find
    # it from the project folder, wherever they are started from.
    root = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root


def spawn(
    run_dir: Path,
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: Path | None = None,
    cgroup: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, record its pid file at once and return its pid.

    ``stdin`` names a FIFO opened read-write (so the process never sees end of file).
    ``cgroup`` is a cgroup folder the process (all its threads) is moved into.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    stdin_fd = os.open(stdin, os.O_RDWR) if stdin is not None else None
    try:
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": _python_path(), **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)
    record_pid(run_dir, name, process.pid)
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(f"{process.pid}\n")
    return process.pid


def stop_process(run_dir: Path, name: str, *, timeout: float = 10.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after ``timeout``; remove its pid file.

    Returns True if a live process was stopped.
    """
    pid = running_pid(run_dir, name)
    stopped = False
    if pid is not None:
        stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not pid_alive(pid), timeout=timeout, what=f"{name} to exit")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), timeout=5.0, what=f"{name} to die")
    pid_file(run_dir, name).unlink(missing_ok=True)
    return stopped


def stop_all(run_dir: Path, *, timeout: float = 10.0) -> int:
    """Stop every recorded process, newest first. Returns how many were running."""
    return sum(stop_process(run_dir, n, timeout=timeout) for n in reversed(recorded_names(run_dir)))


def run(argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> str:
    """Run a short command to completion; raise ``RuntimeError`` with its output on failure."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}"
        )
    return done.stdout


# --- kernel resources: recorded in a ledger before they exist -------------------------------


def _ledger(folder: Path) -> Path:
    return folder / LEDGER_NAME


def note_resource(folder: Path, kind: str, name: str) -> None:
    """Record that ``kind``/``name`` is about to be created by the component owning ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with _ledger(folder).open("a") as ledger:
        ledger.write(json.dumps({"kind": kind, "name": name}) + "\n")


def noted_resources(folder: Path) -> list[tuple[str, str]]:
    try:
        lines = _ledger(folder).read_text().splitlines()
    except OSError:
        return []
    entries: list[tuple[str, str]] = []
    for line in lines:
        try:
            item = json.loads(line)
            entries.append((str(item["kind"]), str(item["name"])))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def cpu_cgroup_path(name: str) -> Path:
    if (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
        return CGROUP_V1_CPU / name
    return CGROUP_V2 / name


def create_cpu_cgroup(folder: Path, name: str, cores: float) -> Path:
    """A cgroup capping its processes to ``cores`` CPUs (cgroup v1 cpu or v2 cpu.max)."""
    path = cpu_cgroup_path(name)
    note_resource(folder, "cgroup", str(path))
    path.mkdir(exist_ok=True)
    quota = max(1000, int(cores * CFS_PERIOD_US))
    if path.parent == CGROUP_V1_CPU:
        (path / "cpu.cfs_period_us").write_text(f"{CFS_PERIOD_US}\n")
        (path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    else:
        (path / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}\n")
    return path


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    try:
        leftover = (path / "cgroup.procs").read_text().split()
    except OSError:
        leftover = []
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    wait_until(
        lambda: not (path / "cgroup.procs").read_text().strip(),
        timeout=5.0,
        what=f"cgroup {path} to empty",
    )
    path.rmdir()


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def create_netns(folder: Path, name: str) -> None:
    note_resource(folder, "netns", name)
    if not netns_exists(name):
        run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def remove_resources(folder: Path) -> None:
    """Remove every recorded cgroup and network namespace, newest first."""
    for kind, name in reversed(noted_resources(folder)):
        if kind == "cgroup":
            _remove_cgroup(Path(name))
        elif kind == "netns" and netns_exists(name):
            run(["ip", "netns", "delete", name])
    _ledger(folder).unlink(missing_ok=True)


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
