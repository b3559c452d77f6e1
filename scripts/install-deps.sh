#!/bin/bash
# Installs what `make demo` / `make test` need on Debian 12, idempotently.
# Debian packages first (only when one is missing), then the project's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="libvirt-daemon-system libvirt-dev qemu-system-x86 qemu-utils qemu-block-extra python3-rados
  python3-rbd e2fsprogs
  iproute2 util-linux busybox-static pkg-config ceph-mon ceph-osd ceph-mgr ceph-common
  dpdk dpdk-dev librte-net-null23 openvswitch-switch prometheus prometheus-alertmanager
  prometheus-node-exporter haproxy"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $missing >/dev/null
  # Debian starts some daemons from their postinst even without systemd; the lab runs its own.
  for s in libvirtd virtlogd prometheus prometheus-node-exporter prometheus-alertmanager ovs-vswitchd ovsdb-server haproxy; do
    pkill -x "$s" 2>/dev/null || true
  done
fi
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.deps-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "install-deps: installing the project into .venv (log: .venv/pip.log)"
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[dev]'; } > .venv/pip.log 2>&1; then
    cat .venv/pip.log; exit 1
  fi
  rm -f .venv/.deps-*; touch "$stamp"
fi
# python3-rados and python3-rbd are built for CPython 3.11 only and have no PyPI wheel: expose
# just those modules.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-rados
for f in /usr/lib/python3/dist-packages/{rados,rbd}.cpython-311-x86_64-linux-gnu.so; do
  [ -e "$f" ] && ln -sf "$f" .venv/debian-rados/
done
echo "$(pwd)/.venv/debian-rados" > "$site/debian_rados.pth"
