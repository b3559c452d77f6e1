#!/bin/bash
# Starts one lab libvirt "host": virtlogd + libvirtd in their own network namespace (created by
# the caller), mount + UTS + cgroup namespaces, with /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt bind-mounted from BASE.
#
# Usage: host.sh HOSTNAME NETNS BASE IP MIGMIN MIGMAX CGNAME
# Writes BASE/cgroups (the cgroup folders it creates, one per line) before creating them, so
# teardown can remove them even if this script dies midway.
set -euo pipefail
H=$1; NETNS=$2; BASE=$3; IP=$4; PMIN=$5; PMAX=$6; CGNAME=$7
# libvirt refuses to migrate between daemons that report the same host UUID.
HOST_UUID=$(printf %s "$BASE" | md5sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
mkdir -p "$BASE"/{etc,run,lib/images,log/qemu,cache,lock}
if [ ! -f "$BASE/etc/.seeded" ]; then
  cp -a /etc/libvirt/. "$BASE/etc/"
  rm -f "$BASE"/etc/qemu/networks/autostart/*      # no default NAT network, no dnsmasq
  touch "$BASE/etc/.seeded"
fi
cat > "$BASE/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "$IP"
tcp_port = "16509"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0770"
host_uuid = "$HOST_UUID"
keepalive_interval = 2
keepalive_count = 3
log_filters = "1:qemu.qemu_migration 3:remote 4:event 3:util.json 3:rpc 4:util.object"
log_outputs = "2:file:/var/log/libvirt/libvirtd.log"
CONF
cat > "$BASE/etc/qemu.conf" <<CONF
user = "root"
group = "root"
security_driver = "none"
namespaces = [ ]
stdio_handler = "logd"
migration_address = "$IP"
migration_host = "$IP"
migration_port_min = $PMIN
migration_port_max = $PMAX
CONF
echo 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"' > "$BASE/etc/virtlogd.conf"

# A cgroup of our own under the current one in every hierarchy; libvirt puts its /machine
# partition inside it, so two hosts never share machine/qemu-N-name.
CTRLS="cpu cpuacct cpuset memory devices freezer blkio pids"
: > "$BASE/cgroups"
DIRS=""
for c in $CTRLS systemd unified; do
  [ -d "/sys/fs/cgroup/$c" ] || continue
  case $c in systemd) key=name=systemd;; unified) key="";; *) key=$c;; esac
  rel=$(awk -F: -v k="$key" '$2==k {print $3}' /proc/self/cgroup)
  d=/sys/fs/cgroup/$c${rel%/}/$CGNAME
  echo "$d" >> "$BASE/cgroups"
  DIRS="$DIRS $d"
done
for d in $DIRS; do
  mkdir -p "$d"
  case $d in /sys/fs/cgroup/cpuset/*)
    cat "$(dirname "$d")/cpuset.cpus" > "$d/cpuset.cpus"; cat "$(dirname "$d")/cpuset.mems" > "$d/cpuset.mems";;
  esac
done
for d in $DIRS; do echo $$ > "$d/cgroup.procs"; done   # the daemons inherit this

# nsenter --net, not "ip netns exec" (which remounts /sys and hides the cgroups).
unshare --mount --uts --cgroup --propagation private nsenter --net="/run/netns/$NETNS" \
  /bin/bash -s -- "$H" "$BASE" "$CTRLS" <<'INNER'
set -e
H=$1; BASE=$2; CTRLS=$3
hostname "$H"
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in $CTRLS; do mkdir /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done
mkdir /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mount --bind "$BASE/etc" /etc/libvirt
mkdir -p /run/libvirt && mount --bind "$BASE/run" /run/libvirt
mount --bind "$BASE/lib" /var/lib/libvirt
mount --bind "$BASE/log" /var/log/libvirt
mount --bind "$BASE/cache" /var/cache/libvirt
# libvirt locks character devices (guest channels) in /run/lock by path: two hosts would
# collide on domain-1-web-1, so each host gets its own.
mkdir -p /run/lock && mount --bind "$BASE/lock" /run/lock
# A restarted libvirtd (after a fault) keeps the virtlogd that still serves its guests' logs.
if ! { [ -f /run/libvirt/virtlogd.pid ] && kill -0 "$(cat /run/libvirt/virtlogd.pid)" 2>/dev/null; }; then
  /usr/sbin/virtlogd -d -f /etc/libvirt/virtlogd.conf -p /run/libvirt/virtlogd.pid
fi
exec /usr/sbin/libvirtd -d --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
INNER
for _ in $(seq 1 100); do [ -S "$BASE/run/libvirt-sock" ] && break; sleep 0.05; done
[ -S "$BASE/run/libvirt-sock" ] || { echo "libvirtd of $H did not start" >&2; exit 1; }
