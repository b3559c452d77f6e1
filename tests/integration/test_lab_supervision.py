"""Lab supervision on real processes, cgroups and namespaces: nothing outlives ``stop``.

A component's ``start`` may die halfway (an exception, a SIGKILL of the controller); what it
recorded before dying must be enough for ``stop`` to remove every process and resource.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lab.layout import LabLayout
from lab.supervision import (
    create_netns,
    netns_exists,
    pid_alive,
    record_pid,
    remove_resources,
    running_pid,
    start_clean,
    stop_all,
)
from tests.integration.conftest_components import eventually

PREFIX = "as7-sv"  # lab slot 7's prefix, a name no component uses
SLEEP = shutil.which("sleep") or "/bin/sleep"
IGNORE_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(600)"
)


def test_a_start_killed_midway_leaves_only_what_stop_removes(tmp_path: Path) -> None:
    folder = tmp_path / "component"
    crashing_start = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from lab.supervision import create_cpu_cgroup, create_netns, spawn
        folder = Path({str(folder)!r})
        create_netns(folder, "{PREFIX}-ns")
        cgroup = create_cpu_cgroup(folder, "{PREFIX}-cg", 0.05)
        spawn(folder, "first", ["sleep", "600"], log=folder / "first.log", cgroup=cgroup)
        spawn(folder, "second", ["sleep", "600"], log=folder / "second.log")
        os.kill(os.getpid(), signal.SIGKILL)  # the controller dies before start returns
        """
    )
    done = subprocess.run([sys.executable, "-c", crashing_start], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    orphans = [running_pid(folder, name) for name in ("first", "second")]
    assert all(orphans), "the processes outlive the crashed start"
    assert netns_exists(f"{PREFIX}-ns")
    assert Path(f"/sys/fs/cgroup/cpu/{PREFIX}-cg").exists()

    assert stop_all(folder, timeout=5) == 2
    remove_resources(folder)

    assert not any(pid_alive(pid) for pid in orphans if pid)
    assert not netns_exists(f"{PREFIX}-ns")
    assert not Path(f"/sys/fs/cgroup/cpu/{PREFIX}-cg").exists()


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen([SLEEP, "600"])
    try:
        record_pid(tmp_path, "ours", bystander.pid)
        pid_file = tmp_path / "ours.pid"
        pid, _ = pid_file.read_text().split()
        pid_file.write_text(f"{pid} 1\n")  # same pid, another start time: not our process
        assert running_pid(tmp_path, "ours") is None
        assert stop_all(tmp_path, timeout=1) == 0
        assert bystander.poll() is None, "a process that is not ours was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORE_SIGTERM], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    record_pid(tmp_path, "stubborn", stubborn.pid)
    began = time.monotonic()
    assert stop_all(tmp_path, timeout=0.5) == 1
    assert time.monotonic() - began >= 0.5, "SIGTERM alone cannot have stopped it"
    assert not pid_alive(stubborn.pid)
    stubborn.stdout.close()


def test_a_failing_start_is_cleaned_up_before_the_error_is_raised(tmp_path: Path) -> None:
    stopped: list[str] = []

    def failing_start() -> None:
        create_netns(tmp_path, f"{PREFIX}-ns2")
        raise RuntimeError("daemon refused to start")

    def stop(layout: LabLayout) -> None:
        stopped.append("stop")
        remove_resources(layout.root)

    with pytest.raises(RuntimeError, match="refused"):
        start_clean(LabLayout(slot=7, root=tmp_path), stop, failing_start)
    assert stopped == ["stop", "stop"]  # once before starting afresh, once after the failure
    assert not netns_exists(f"{PREFIX}-ns2")


def test_stop_is_idempotent_on_a_folder_that_never_existed(tmp_path: Path) -> None:
    absent = tmp_path / "never"
    assert stop_all(absent) == 0
    remove_resources(absent)
    eventually(lambda: os.path.exists(absent), lambda exists: not exists, timeout=1, what="absent")
