#!/bin/bash
# Builds the lab's tiny guest once: Debian cloud kernel + busybox initramfs with the load agent.
# Usage: build.sh CACHE_DIR   (writes CACHE_DIR/vmlinuz and CACHE_DIR/initrd.gz; idempotent)
# Downloads two .debs with apt-get download; installs nothing.
set -euo pipefail
mkdir -p "$1"; CACHE=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$CACHE/debs"
STAMP=$(sha256sum "$HERE/init.sh" "$HERE/build.sh" | sha256sum | cut -c1-16)
if [ -f "$CACHE/vmlinuz" ] && [ -f "$CACHE/initrd.gz" ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$STAMP" ]; then
  exit 0
fi
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
cd "$CACHE/debs"
if ! ls "${KPKG}"_*.deb >/dev/null 2>&1 || ! ls busybox-static_*.deb >/dev/null 2>&1; then
  apt-get download -q "$KPKG" busybox-static 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
fi
X=$CACHE/extract; rm -rf "$X"; mkdir -p "$X"
for f in "${KPKG}"_*.deb busybox-static_*.deb; do dpkg-deb -x "$f" "$X"; done
KVER=${KPKG#linux-image-}
R=$CACHE/initramfs; rm -rf "$R"; mkdir -p "$R"/{bin,proc,sys,dev,run,etc,lib/modules}
cp "$X/bin/busybox" "$R/bin/"
# In dependency order (the deb has no modules.dep: `modinfo -F depends` on each .ko). The disk
# needs only virtio_blk (depends: virtio, virtio_ring): ext4, jbd2, mbcache, crc16 and crc32c
# are built into the cloud kernel (CONFIG_EXT4_FS=y, CONFIG_JBD2=y, CONFIG_FS_MBCACHE=y,
# CONFIG_CRC16=y, CONFIG_CRYPTO_CRC32C=y). The NIC needs virtio_net (depends: virtio_ring,
# virtio, net_failover; net_failover depends: failover); AF_PACKET, which udhcpc uses, is
# built in (CONFIG_PACKET=y). The config drive (an ISO 9660 image on vdb) needs isofs (depends:
# cdrom).
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console virtio_balloon failover net_failover virtio_net cdrom isofs button evdev"
for m in $MODS; do cp "$(find "$X/lib/modules/$KVER" -name "$m.ko")" "$R/lib/modules/"; done
sed "s/@MODS@/$MODS/" "$HERE/init.sh" > "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | "$X/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 > "$CACHE/initrd.gz.new")
cp "$X/boot/vmlinuz-$KVER" "$CACHE/vmlinuz.new"
mv "$CACHE/vmlinuz.new" "$CACHE/vmlinuz"; mv "$CACHE/initrd.gz.new" "$CACHE/initrd.gz"
rm -rf "$X" "$R"
echo "$STAMP" > "$CACHE/stamp"
