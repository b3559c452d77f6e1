"""``lab down`` removes every process, namespace, link, mount and cgroup the lab made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import lab as lab_mod
from lab import net, slots
from lab.layout import LabLayout
from lab.spec import LabSpec

pytestmark = pytest.mark.lab


def pids_recorded(root: Path) -> list[int]:
    pids = []
    for pidfile in root.rglob("*.pid"):
        text = pidfile.read_text().split()
        if text and text[0].isdigit():
            pids.append(int(text[0]))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def mounts_mentioning(root: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            text = (proc / "mountinfo").read_text()
        except OSError:
            continue
        if str(root) in text:
            found.append(proc.name)
    return found


def test_lab_down_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "small-lab"
    spec = LabSpec(regions={"east": {"e1": ("e1-r1", "e1-r2")}}, initial_vms={"web": 1})
    lab = lab_mod.up(root, spec)
    layout = LabLayout(slot=lab.state.slot, root=root.resolve())
    pids = pids_recorded(root)
    cgroups = [
        Path(line)
        for h in lab.state.hosts
        for line in (Path(h.base) / "cgroups").read_text().splitlines()
    ]
    assert len(pids) >= 6  # 2 x (libvirtd, virtlogd), 1 qemu, the load driver
    assert all(alive(p) for p in pids)
    assert net.leftover_netns(layout) and net.leftover_links(layout)
    assert mounts_mentioning(root.resolve())
    assert all(c.exists() for c in cgroups)

    lab_mod.down(root)

    assert not [p for p in pids if alive(p)]
    assert net.leftover_netns(layout) == []
    assert net.leftover_links(layout) == []
    assert mounts_mentioning(root.resolve()) == []
    assert [c for c in cgroups if c.exists()] == []
    assert not root.exists()
    assert str(lab.state.slot) not in os.listdir(slots.REGISTRY)
