"""The lab's own record of what it created, written before each thing is created.

Where it sits: ``lab up`` appends to it step by step, ``lab down`` reads it to remove every
process, namespace, link, mount and cgroup, also after ``lab up`` crashed midway.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class HostRecord:
    index: int
    name: str
    rack: str
    datacenter: str
    region: str
    netns: str
    base: str
    address: str

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    @property
    def local_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.base}/run/libvirt-sock"


@dataclass
class LabState:
    slot: int
    root: str
    hosts: list[HostRecord] = field(default_factory=list)
    processes: dict[str, str] = field(default_factory=dict)  # name -> pid file
    up: bool = False

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        hosts = [HostRecord(**h) for h in raw.pop("hosts", [])]
        return cls(hosts=hosts, **raw)

    def host(self, name: str) -> HostRecord:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no lab host named {name!r}")
