"""The guest's disk, host side: the template images the lab builds (a real ext4 filesystem,
read back with e2fsprogs, and the content checksum the guest computes, recomputed with the
shell's own tools) and the agent's and load channel's new fields (no lab, no guest)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from actuators.guest_agent import GuestView
from lab import images
from lab.loadchannel import LoadChannel
from lab.loaddriver import read_holds
from policies.loader import load_policy_dir

NEW = (
    "STATE seq=7 ready=1 vm=web-1 business=web cpus=0-1 ncpus=2 mem_kib=156540 duty=30"
    " held_mib=0 disk=vda mounted=1 content=25ad5be25b51bacb data_mib=64 boots=2"
)
OLD = "STATE seq=3 ready=1 vm=web-1 business=web cpus=0 ncpus=1 mem_kib=156540 duty=0 held_mib=0"


def test_the_disk_fields_of_a_state_line_are_parsed() -> None:
    view = GuestView.parse(NEW, 1.0)
    assert view is not None
    assert (view.disk, view.mounted, view.content, view.data_mib, view.boots) == (
        "vda",
        True,
        "25ad5be25b51bacb",
        64,
        2,
    )
    assert (view.seq, view.online_cpus, view.duty) == (7, 2, 30)


def test_an_older_guest_without_disk_fields_reads_as_no_disk() -> None:
    view = GuestView.parse(OLD, 1.0)
    assert view is not None and view.ready
    assert (view.disk, view.mounted, view.content, view.data_mib, view.boots) == (
        "",
        False,
        "",
        0,
        0,
    )


def test_a_disk_that_did_not_mount_reports_no_content() -> None:
    line = OLD + " disk=vda mounted=0 content=none data_mib=0 boots=0"
    view = GuestView.parse(line, 1.0)
    assert view is not None
    assert (view.disk, view.mounted, view.content) == ("vda", False, "")
    none = GuestView.parse(OLD + " disk=none mounted=0 content=none data_mib=0 boots=0", 1.0)
    assert none is not None and none.disk == ""
    assert GuestView.parse(OLD + " data_mib=lots", 1.0) is None  # garbage is no report


class FakeChannel:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.sent: list[str] = []

    def read_lines(self) -> list[str]:
        out, self.lines = self.lines, []
        return out

    def send_line(self, text: str) -> None:
        self.sent.append(text)


def test_the_load_channel_sends_fill_and_reads_filled() -> None:
    channel = LoadChannel.__new__(LoadChannel)  # no libvirt stream: a fake one in its place
    fake = FakeChannel(["ACK vm=web-1 duty=10", "FILLED vm=web-1 mib=64"])
    channel._channel = fake  # type: ignore[assignment]
    channel.held_mib = channel.filled_mib = None
    channel.fill(64)
    channel.fill(-3)
    assert fake.sent == ["fill 64", "fill 0"]
    assert channel.acknowledged() == 10
    assert channel.filled_mib == 64


def test_the_demand_file_names_data_to_write_per_instance(tmp_path: Path) -> None:
    demand = tmp_path / "demand.json"
    demand.write_text(
        json.dumps({"web": {"cores": 0.1, "fill_mib": {"web-1": 64}, "hold_mib": {"web-2": 9}}})
    )
    assert read_holds(demand, "fill_mib") == {"web-1": 64}
    assert read_holds(demand) == {"web-2": 9}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("templates")
    return images.build_qcow2_template("web", "v3", out / "qcow2")


def test_a_template_is_a_clean_ext4_filesystem_with_the_business_content(built: Path) -> None:
    raw = built.parent.parent / "raw" / "web.raw"
    assert raw.stat().st_size == images.FS_SIZE_MIB << 20
    subprocess.run([images._tool("e2fsck"), "-fn", str(raw)], check=True, capture_output=True)
    version = subprocess.run(
        [images._tool("debugfs"), "-R", "cat content/version", str(raw)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert version == "v3\n"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(built)],  # noqa: S607
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == images.FS_SIZE_MIB << 20
    assert built.stat().st_size < 4 << 20  # what was written, not the whole filesystem


def test_the_checksum_is_what_shell_tools_compute_over_the_image_content(
    built: Path, tmp_path: Path
) -> None:
    raw = built.parent.parent / "raw" / "web.raw"
    subprocess.run(
        [images._tool("debugfs"), "-R", f"rdump content {tmp_path}", str(raw)],
        check=True,
        capture_output=True,
    )
    # The guest's own recipe (lab/guest/init.sh), here with coreutils instead of busybox.
    shell = subprocess.run(
        ["/bin/sh", "-c", "sha256sum $(find . -type f | sort) | sha256sum"],
        cwd=tmp_path / "content",
        check=True,
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert shell[: images.REPORTED_HEX] == images.expected_content_checksum("web", "v3")
    files = images.content_files("web", "v3")
    on_disk = {
        str(p.relative_to(tmp_path / "content")): p.read_bytes()
        for p in (tmp_path / "content").rglob("*")
        if p.is_file()
    }
    assert on_disk == files
    assert "web" in files["index.html"].decode() and "v3" in files["index.html"].decode()


def test_the_checksum_names_the_business_and_version() -> None:
    web = images.expected_content_checksum("web", "v1")
    assert len(web) == images.REPORTED_HEX
    assert web == images.expected_content_checksum("web", "v1")
    assert web != images.expected_content_checksum("api", "v1")
    assert web != images.expected_content_checksum("web", "v2")


def test_a_built_template_is_reused_until_what_made_it_changes(built: Path) -> None:
    raw = built.parent.parent / "raw" / "web.raw"
    stamps = (raw.stat().st_mtime_ns, built.stat().st_mtime_ns)
    again = images.build_qcow2_template("web", "v3", built.parent)
    assert again == built
    assert (raw.stat().st_mtime_ns, built.stat().st_mtime_ns) == stamps
    images._marker(raw).write_text("stale\n")  # as if the builder had changed
    images.build_qcow2_template("web", "v3", built.parent)
    assert raw.stat().st_mtime_ns != stamps[0]


def test_the_lab_templates_cover_every_example_policy_by_its_image_name(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    folder = images.build_lab_templates(examples / "businesses", tmp_path)
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    policies = load_policy_dir(examples / "businesses").values()
    assert {p.template.image for p in policies} <= set(visible)
    # The placeholders that `autoscaler validate` finds are those of the local templates (a
    # template on RBD is an image in the pool, made from the built file by `lab up`).
    local = sorted(p.template.image for p in policies if not p.template.on_rbd)
    assert local == sorted(p.name for p in (examples / "images").iterdir())
