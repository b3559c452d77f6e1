"""Config drives without a lab: the ISO built from a version's folder reads back (names,
content, the CGI's executable bit through Rock Ridge, the generated VERSION and meta.json),
refusals (size, symlinks leaving the folder), the domain XML with and without the drive, the
controller file's delivery_dir, and config= in the guest's STATE line."""

from __future__ import annotations

import io
import json
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pycdlib
import pytest

from actuators.config_drive import build_iso, drive_bytes, version_folder
from actuators.domain_xml import GuestBoot, InstanceSpec, build_domain_xml
from actuators.guest_agent import GuestView
from actuators.rbd_store import RbdDiskSource
from autoscaler.config import load_controller_config
from autoscaler.model import PermanentError
from policies.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
DELIVERY = ROOT / "examples" / "delivery"
IMAGES = {p.name for p in (ROOT / "examples" / "images").iterdir()}
STATE = (
    "STATE seq=4 ready=1 vm=web-1 business=web cpus=0 ncpus=1 mem_kib=156540 duty=0"
    " held_mib=0 disk=vda mounted=1 content=25ad5be25b51bacb data_mib=0 boots=1 addr=none"
)


def read_back(image: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    return iso


def rr_file(iso: pycdlib.PyCdlib, path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=path)
    return out.getvalue()


def rr_mode(iso: pycdlib.PyCdlib, path: str) -> int:
    return int(iso.get_record(rr_path=path).rock_ridge.get_file_mode())


def a_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "web" / "v7"
    (folder / "www" / "cgi-bin").mkdir(parents=True)
    (folder / "www" / "index.html").write_text("<h1>v7</h1>\n")
    cgi = folder / "www" / "cgi-bin" / "work"
    cgi.write_text("#!/bin/sh\necho hi\n")
    cgi.chmod(0o755)
    (folder / "config").mkdir()
    (folder / "config" / "a-rather-long-configuration-name.conf").write_text("x=1\n")
    return folder


def test_the_iso_reads_back_with_long_names_content_and_the_cgis_exec_bit(tmp_path: Path) -> None:
    image = build_iso(a_folder(tmp_path), "web-9", "web", "v7")
    iso = read_back(image)
    try:
        assert rr_file(iso, "/www/index.html") == b"<h1>v7</h1>\n"
        assert rr_file(iso, "/config/a-rather-long-configuration-name.conf") == b"x=1\n"
        assert rr_mode(iso, "/www/cgi-bin/work") & 0o111 == 0o111
        assert stat.S_ISREG(rr_mode(iso, "/www/cgi-bin/work"))
        assert rr_mode(iso, "/www/index.html") & 0o111 == 0
        joliet = io.BytesIO()
        iso.get_file_from_iso_fp(joliet, joliet_path="/www/index.html")
        assert joliet.getvalue() == b"<h1>v7</h1>\n"
    finally:
        iso.close()


def test_version_and_meta_json_are_generated(tmp_path: Path) -> None:
    folder = a_folder(tmp_path)
    (folder / "VERSION").write_text("forged\n")  # the generated one wins
    iso = read_back(build_iso(folder, "web-9", "web", "v7"))
    try:
        assert rr_file(iso, "/VERSION") == b"v7\n"
        meta = json.loads(rr_file(iso, "/meta.json"))
        assert meta == {"vm": "web-9", "business": "web", "version": "v7"}
    finally:
        iso.close()


def test_a_folder_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    folder = a_folder(tmp_path)
    (folder / "big.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(PermanentError, match="over 0 MiB"):
        build_iso(folder, "web-9", "web", "v7", max_bytes=4000)


def test_a_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    folder = a_folder(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("key\n")
    (folder / "www" / "leak").symlink_to(secret)
    with pytest.raises(PermanentError, match="symlink leaving it"):
        build_iso(folder, "web-9", "web", "v7")


def test_a_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    folder = a_folder(tmp_path)
    (folder / "www" / "home.html").symlink_to(folder / "www" / "index.html")
    iso = read_back(build_iso(folder, "web-9", "web", "v7"))
    try:
        assert rr_file(iso, "/www/home.html") == b"<h1>v7</h1>\n"
    finally:
        iso.close()


def test_no_version_folder_means_no_drive(tmp_path: Path) -> None:
    a_folder(tmp_path)
    assert version_folder(tmp_path, "web", "v7") is not None
    assert drive_bytes(tmp_path, "web-9", "web", "v8") is None
    assert drive_bytes(tmp_path, "web-9", "web", None) is None
    assert drive_bytes(None, "web-9", "web", "v7") is None


def test_the_examples_cgi_is_executable_on_the_drive() -> None:
    iso = read_back(drive_bytes(DELIVERY, "web-1", "web", "v2") or b"")
    try:
        assert rr_mode(iso, "/www/cgi-bin/work") & 0o111 == 0o111
        assert b"v2" in rr_file(iso, "/www/index.html")
    finally:
        iso.close()


def spec(drive: str | RbdDiskSource | None) -> InstanceSpec:
    template = load_policy(ROOT / "examples/businesses/web.yaml", images=IMAGES).template
    return InstanceSpec(
        name="web-9",
        business="web",
        template=template.to_template(),
        disk_path="/pool/web-9.qcow2",
        boot=GuestBoot(kernel="/k", initrd="/i"),
        config_drive=drive,
    )


def disks(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml)  # noqa: S314 - our own XML
    return {d.find("target").get("dev", ""): d for d in root.findall("./devices/disk")}  # type: ignore[union-attr]


def test_the_domain_has_no_second_disk_without_a_drive() -> None:
    assert set(disks(build_domain_xml(spec(None)))) == {"vda"}


def test_a_local_drive_is_a_writable_raw_vdb() -> None:
    vdb = disks(build_domain_xml(spec("/pool/web-9-config.iso")))["vdb"]
    assert vdb.get("type") == "file"
    assert vdb.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert vdb.find("source").get("file") == "/pool/web-9-config.iso"  # type: ignore[union-attr]
    assert vdb.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    # Not readonly: a non-shared live migration copies only writable disks.
    assert vdb.find("readonly") is None
    assert vdb.get("snapshot") == "no"  # a disk snapshot of vda leaves it alone


def test_an_rbd_drive_is_an_rbd_vdb() -> None:
    source = RbdDiskSource("rbd", "web-9-config", (("10.0.0.1", 6789),), "admin", None)
    vdb = disks(build_domain_xml(spec(source)))["vdb"]
    assert vdb.get("type") == "network"
    assert vdb.find("source").get("name") == "rbd/web-9-config"  # type: ignore[union-attr]


def test_the_guest_reports_its_config_version() -> None:
    view = GuestView.parse(STATE + " config=v2", 1.0)
    assert view is not None and view.config == "v2"
    none = GuestView.parse(STATE + " config=none", 1.0)
    assert none is not None and none.config == ""
    older = GuestView.parse(STATE, 1.0)
    assert older is not None and older.config == ""


def test_delivery_dir_is_relative_to_the_controller_file(tmp_path: Path) -> None:
    example = ROOT / "examples" / "controller.yaml"
    assert load_controller_config(example).delivery_dir == Path("/etc/kvm-autoscaler/delivery")
    text = "\n".join(x for x in example.read_text().splitlines() if "delivery_dir" not in x)
    path = tmp_path / "controller.yaml"
    path.write_text(text + "\ndelivery_dir: delivery\n")
    config = load_controller_config(path)
    assert config.delivery_dir == (tmp_path / "delivery").resolve()
    path.write_text(text)
    assert load_controller_config(path).delivery_dir is None
