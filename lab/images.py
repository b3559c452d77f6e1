"""Business template images with content: a small ext4 filesystem per business.

Where it sits: the lab's stand-in for the seed cloud's delivery of template images. ``lab up``
installs the qcow2 variants into every host's ``images`` pool (``build_lab_templates``); the
raw variant is what gets imported into Ceph RBD. The tiny guest (``lab/guest/init.sh``) mounts
its disk at ``/data``, finds the business's content under ``/data/content`` and reports its
checksum; ``expected_content_checksum`` computes the same value on the host side, so a test can
tell that a guest really reads the template it was cloned from.

Filesystems are built without mounting (``mke2fs -d``), so no root-only loop device is needed.
Built images are cached with a stamp of what made them (this file's source, the business,
the version), as ``lab/guest/build.sh`` caches the guest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from policies.loader import load_policy_dir

FS_SIZE_MIB = 128
"""Room for the content, the guest's boot records and a ``fill 64`` (what a benchmark writes
before a block migration) with space to spare; the raw file is sparse and the qcow2 holds
only what was written (a few MiB)."""
REPORTED_HEX = 16
"""The guest reports the first this-many hex digits of the content checksum."""
LAB_TEMPLATE_VERSION = "v1"
_BLOB_BYTES = 64 * 1024


def content_files(business: str, version: str) -> dict[str, bytes]:
    """The business's content, by path relative to ``content/``: small and deterministic."""
    blob = b"".join(
        hashlib.sha256(f"{business}/{version}/{i}".encode()).digest()
        for i in range(_BLOB_BYTES // 32)
    )
    page = (
        "<!doctype html>\n"
        f"<html><head><title>{business} {version}</title></head>\n"
        f"<body><h1>{business}</h1><p>business {business}, template version {version}</p>"
        "</body></html>\n"
    )
    return {
        "index.html": page.encode(),
        "version": f"{version}\n".encode(),
        "business": f"{business}\n".encode(),
        "assets/blob.bin": blob,  # some bulk, so the checksum reads real data blocks
    }


def content_checksum(files: dict[str, bytes]) -> str:
    """sha256 of the ``sha256sum`` listing of the files, sorted by ``./path``.

    The guest computes exactly this with busybox (in ``/data/content``):
    ``sha256sum $(find . -type f | sort) | sha256sum``; each listing line is
    ``<hex>  ./<path>``. Paths are plain ASCII, so busybox ``sort`` and Python agree.
    """
    listing = "".join(
        f"{hashlib.sha256(files[rel]).hexdigest()}  ./{rel}\n"
        for rel in sorted(files, key=lambda r: f"./{r}".encode())
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def expected_content_checksum(business: str, version: str = LAB_TEMPLATE_VERSION) -> str:
    """What a guest of ``business`` on a template of ``version`` reports as ``content=``."""
    return content_checksum(content_files(business, version))[:REPORTED_HEX]


def _stamp(business: str, version: str) -> str:
    """What an image was made from: this builder's own source, the business and the version."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"\0{business}\0{version}\0{FS_SIZE_MIB}".encode())
    return digest.hexdigest()[:16]


def _tool(name: str) -> str:
    """A tool's full path (e2fsprogs lives in /usr/sbin, not always on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin") or name


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.stamp")  # hidden: the folder lists only images


def _cached(path: Path, stamp: str) -> bool:
    marker = _marker(path)
    return path.exists() and marker.exists() and marker.read_text().strip() == stamp


def _mark(path: Path, stamp: str) -> None:
    _marker(path).write_text(stamp + "\n")


def _write_tree(root: Path, business: str, version: str) -> None:
    for rel, data in content_files(business, version).items():
        target = root / "content" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (root / "vms").mkdir()  # where each guest keeps its own data


def build_raw_template(business: str, version: str, out_dir: Path) -> Path:
    """``out_dir/<business>.raw``: a ``FS_SIZE_MIB`` ext4 filesystem (sparse file) with
    ``content/`` (the business's content) and an empty ``vms/``. Cached: rebuilt only when
    its stamp changes. Returns the image's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / f"{business}.raw"
    stamp = _stamp(business, version)
    if _cached(image, stamp):
        return image
    # A UUID derived from the business and version: the same template is recognisable as
    # such (the bytes differ from build to build: mke2fs draws inode generations at random).
    fs_uuid = str(uuid.UUID(hashlib.sha256(f"{business}/{version}".encode()).hexdigest()[:32]))
    with tempfile.TemporaryDirectory(prefix=f"template-{business}-", dir=out_dir) as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        _write_tree(tree, business, version)
        partial = Path(tmp) / image.name
        subprocess.run(
            [
                _tool("mke2fs"),
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-m",
                "0",  # the guest runs as root: no blocks reserved for it
                "-N",
                "1024",  # a handful of files: a small inode table
                "-J",
                "size=4",
                "-L",
                f"{business}-{version}"[:16],  # an ext4 label holds 16 bytes
                "-U",
                fs_uuid,
                # Initialise inode tables and journal now, not in the guest: under TCG the
                # kernel's lazy init would cost CPU time and grow every overlay.
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
                "-d",
                str(tree),
                str(partial),
                f"{FS_SIZE_MIB}M",
            ],
            check=True,
            capture_output=True,
        )
        os.replace(partial, image)
    _mark(image, stamp)
    return image


def build_qcow2_template(
    business: str, version: str, out_dir: Path, raw_dir: Path | None = None
) -> Path:
    """``out_dir/<business>.qcow2``, converted from the raw image (built in ``raw_dir``,
    default ``out_dir/../raw``). Cached like the raw one. Returns its path."""
    raw = build_raw_template(business, version, raw_dir or out_dir.parent / "raw")
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / f"{business}.qcow2"
    stamp = _stamp(business, version)
    if _cached(image, stamp):
        return image
    partial = out_dir / f".{business}.qcow2.partial"
    subprocess.run(
        [_tool("qemu-img"), "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)],
        check=True,
        capture_output=True,
    )
    os.replace(partial, image)
    _mark(image, stamp)
    return image


def template_dir(cache: Path, version: str = LAB_TEMPLATE_VERSION) -> Path:
    """Where the lab's qcow2 templates of ``version`` live: ``<cache>/templates/<version>/qcow2``
    (raw ones next to it in ``raw``)."""
    return cache / "templates" / version / "qcow2"


def build_templates(
    images: Iterable[tuple[str, str]], cache: Path, version: str = LAB_TEMPLATE_VERSION
) -> Path:
    """Build ``(image file name, business)`` pairs as qcow2 templates; returns their folder
    (the controller's ``image_dir``: besides them it holds only hidden stamp files)."""
    folder = template_dir(cache, version)
    for image, business in images:
        built = build_qcow2_template(business, version, folder)
        if built.name != image:  # a policy naming its image otherwise gets a copy of that name
            named = folder / image
            if not _cached(named, _stamp(business, version)):
                shutil.copyfile(built, named)
                _mark(named, _stamp(business, version))
    return folder


def build_lab_templates(businesses: Path, cache: Path, version: str = LAB_TEMPLATE_VERSION) -> Path:
    """The template of every business policy in ``businesses``, with that business's content,
    under the file name its policy names; returns the folder (the lab's ``image_dir``)."""
    policies = load_policy_dir(businesses)
    return build_templates(
        sorted({(p.template.image, p.business) for p in policies.values()}), cache, version
    )
