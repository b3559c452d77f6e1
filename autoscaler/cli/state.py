"""``autoscaler state migrate --to rados``: move one machine's state folder into the pool.

Where it sits: an operator's command, run once when a fleet goes from one controller machine
to several. The controller file already says ``state: {kind: rados}`` (and the RADOS lease);
the command reads the state folder it names (``state_dir``: the SQLite journal, the controls,
the memory record) and writes them into the pool's state objects, as the holder of the lease:
it refuses while a controller leads (exit 3), and refuses a pool that holds a journal already
(exit 1), so nothing is written twice. Its generation is above every generation of the local
journal, so the controllers that start next continue the count.

Plans waiting for approval are not moved: the next leader recommends again.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from autoscaler.cli.apply import LeaderPresent, take_lease
from autoscaler.config import load_controller_config
from autoscaler.runtime.controls import ControlFile
from autoscaler.runtime.journal import SqliteJournal, journal_floor
from autoscaler.runtime.memory_file import MemoryFile
from autoscaler.runtime.rados_lease import RadosLease
from autoscaler.runtime.runner import ceph_handle
from autoscaler.runtime.shared_state import open_shared_state
from autoscaler.runtime.wiring import JOURNAL_FILE

ALL_ROWS = 10**9


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("state", help="move the controller's state between stores")
    p.add_argument("action", choices=["migrate"])
    p.add_argument("--to", choices=["rados"], required=True, help="the store to move it into")
    p.add_argument("--config", type=Path, required=True, help="controller file (state: rados)")
    p.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    config = load_controller_config(args.config)
    if config.state.kind != "rados":
        print(
            f"{args.config}: set state: {{kind: rados}} (and lease: {{kind: rados}}) first;"
            " the command moves state_dir into the pool it names",
            file=sys.stderr,
        )
        return 2
    shared = open_shared_state(config, ceph_handle(config))
    if shared is None:  # the kind is rados: never
        return 2
    local_journal = config.state_dir / JOURNAL_FILE
    lease = RadosLease(
        shared.ioctx,
        f"migrate:{socket.gethostname()}:{os.getpid()}",
        config.lease.duration_s,
        floor=lambda: max(journal_floor(local_journal), shared.fenced.fence()),
        on_acquire=shared.fenced.claim,
    )
    shared.write_as(lease.last_generation)
    try:
        held = take_lease(lease, wait_s=config.lease.duration_s * 1.5 + 1)
    except LeaderPresent as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    try:
        journal = shared.journal()
        if journal.size() > 0:
            print(
                f"refused: the pool's state already holds {journal.size()} journal entries",
                file=sys.stderr,
            )
            return 1
        moved = {"journal": 0, "controls": False, "memory": False}
        if local_journal.exists():
            with SqliteJournal(local_journal) as source:
                for entry in reversed(source.history(ALL_ROWS)):
                    journal.import_entry(entry)
                    moved["journal"] = int(moved["journal"]) + 1
        controls = ControlFile(config.state_dir)
        if controls.path.exists():
            kept = controls.read()
            shared.controls.update(lambda _current: kept)
            moved["controls"] = True
        record = MemoryFile(config.state_dir / "memory.json").load()
        if record is not None:
            shared.memory(lambda: 0.0).save(record)
            moved["memory"] = True
    finally:
        lease.release()
    print(json.dumps({"generation": held.generation, "moved": moved}, sort_keys=True))
    return 0
