"""The state folder is private (0700, files 0600) and a symlink planted in it is refused.

Before: the controls file and the SQLite files were written 0644 (umask) and through any
symlink, so a planted ``controls.json -> /etc/...`` made the next ``autoscaler pause``
overwrite the target. Real files and symlinks in a temporary folder; the real classes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from autoscaler.runtime.controls import ControlFile
from autoscaler.runtime.history import HistoryStore
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.private_files import UnsafeStatePath, ensure_private_dir
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_state_folder_is_0700_and_every_state_file_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # noqa: S103 - the loose folder the controller must tighten
    old_umask = os.umask(0o022)
    try:
        ControlFile(state).pause("web")
        SqliteJournal(state / "journal.sqlite").close()
        HistoryStore(state / "history.sqlite").close()
    finally:
        os.umask(old_umask)
    assert mode(state) == 0o700
    files = {p.name: mode(p) for p in state.iterdir()}
    assert {"controls.json", "controls.lock", "journal.sqlite", "history.sqlite"} <= set(files)
    assert all(m == 0o600 for m in files.values()), files
    record(
        "bad-input",
        "state folder and files are private",
        injected="a state folder made 0755 under umask 022; controls, journal, history written",
        behaviour=f"folder tightened to 0700; files {sorted(files)} all 0600",
        lost="nothing",
    )


@pytest.mark.parametrize("name", ["controls.json", "controls.lock", "journal.sqlite"])
def test_a_symlink_planted_where_a_state_file_goes_is_refused(tmp_path: Path, name: str) -> None:
    state = ensure_private_dir(tmp_path / "state")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / name).symlink_to(victim)
    with pytest.raises(UnsafeStatePath, match="symlink"):
        if name == "journal.sqlite":
            SqliteJournal(state / name)
        else:
            ControlFile(state).pause("web")
    assert victim.read_text() == "precious\n"
    assert (state / name).is_symlink()
    record(
        "bad-input",
        f"a symlink planted as {name} is refused",
        injected=f"state/{name} -> a file outside the state folder, then the controller's write",
        behaviour="UnsafeStatePath: the write refused, the link left as it was",
        lost="nothing: the target file unchanged",
    )


def test_a_state_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").symlink_to(elsewhere)
    with pytest.raises(UnsafeStatePath, match="symlink"):
        ControlFile(tmp_path / "state").pause("web")
    assert list(elsewhere.iterdir()) == []
