#!/bin/busybox sh
# /init of the lab's tiny guest: the load agent.
#
# Two virtio-serial ports:
#   org.lab.load   host -> guest: "duty N" (0-100: busy share of each period on every online vCPU)
#                  guest -> host: "ACK vm=.. duty=N" (the load balancer's health check)
#                  host -> guest: "hold N" (keep N MiB in use: a file in a tmpfs, which the
#                  kernel can neither reclaim nor count as available; at most what is available
#                  less 24 MiB, so the guest never runs out; "hold 0" frees it)
#                  guest -> host: "HELD vm=.. mib=N" (what is held now)
#                  host -> guest: "fill N" (write N MiB of random data to the disk, in
#                  /data/vms/$VM/fill, replacing what an earlier fill wrote unless that was
#                  N MiB already; at most 512 and what the filesystem has free less 8 MiB;
#                  "fill 0" removes it)
#                  guest -> host: "FILLED vm=.. mib=N" (what the fill file holds now, synced)
#   org.kvm-autoscaler.agent  host -> guest: "ping";  guest -> host:
#                  "STATE seq=.. ready=1 vm=.. business=.. cpus=0-1 ncpus=2 mem_kib=.. duty=..
#                   held_mib=.. disk=vda mounted=1 content=<16 hex> data_mib=N boots=N
#                   addr=<IPv4 or none> config=<version or none>"
# The disk (vda: the business's template, an ext4 filesystem with its content in content/) is
# mounted at /data before the guest says ready; the guest keeps its own data in /data/vms/$VM
# (a line per boot in "boots", and the fill file). content= is the first 16 hex digits of
# sha256 of `sha256sum` over the sorted content files (lab/images.py computes the same on the
# host), computed at boot and after a fill only (forks are dear under TCG). Without a disk, or
# when it does not mount: disk=none or mounted=0 content=none, and the reason on the console.
# A STATE line goes out within ~50 ms of a change (online CPUs, MemTotal, duty, readiness) and
# every 5 s as a heartbeat. Hot-added CPUs are onlined here (no udev); DIMMs are onlined by the
# kernel (memhp_default_state=online). An ACPI power-button press powers the guest off. The
# virtio balloon driver is loaded so the host can read the guest's memory statistics (it is
# never inflated: memory is only ever added).
#
# The network: with `as.net=dhcp` on the kernel command line, eth0 (virtio_net) asks for an
# address with udhcpc before the guest says ready (3 tries 1 s apart at most, so a guest
# without a DHCP server is still ready within ~3 s; udhcpc then keeps renewing, or asking, in
# the background), and STATE says addr=. busybox httpd serves /www on port 80: index.html (VM
# and business), health (for a load balancer's health check) and cgi-bin/work, which burns a
# fixed amount of CPU per request (`as.work=N` iterations of a shell loop, ~20-50 ms of guest
# CPU under TCG at the default) and answers "vm=<name> work=<N>". The business's disk may
# bring its own web root (content/www/ or content/index.html): see web_root.
#
# The config drive: a template version's configuration and code (vdb, an ISO 9660 image made
# by actuators/config_drive.py) is mounted read-only at /config before the web root is chosen;
# its www/ is the web root, and config= in STATE is its VERSION file (none without a drive).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /run /etc/acpi/PWRF
for m in @MODS@; do insmod /lib/modules/$m.ko; done

VM=unknown; BUSINESS=unknown; PERIOD=100; NET=none; WORK=2000
for a in $(cat /proc/cmdline); do
  case $a in
    as.vm=*) VM=${a#*=};; as.business=*) BUSINESS=${a#*=};; loadperiod=*) PERIOD=${a#*=};;
    as.net=*) NET=${a#*=};; as.work=*) WORK=${a#*=};;
  esac
done
case $WORK in ''|*[!0-9]*) WORK=2000;; esac
echo "GUEST-UP vm=$VM business=$BUSINESS uptime=$(cut -d' ' -f1 /proc/uptime)"

# ACPI power button -> clean power-off (busybox acpid runs /etc/acpi/PWRF/00000080).
printf '#!/bin/sh\necho ACPI-POWEROFF\nsync\numount /data 2>/dev/null\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /run/acpid.log

echo 0 > /run/duty; echo 0 > /run/held; echo 0 > /run/hold_req
mkdir -p /hold; mount -t tmpfs -o size=4g,mode=0700 hold /hold
LOAD=/dev/virtio-ports/org.lab.load; AGENT=/dev/virtio-ports/org.kvm-autoscaler.agent
while [ ! -e $LOAD ] || [ ! -e $AGENT ]; do   # no udev: name the ports ourselves
  for p in /sys/class/virtio-ports/vport*; do
    [ -r "$p/name" ] || continue; mkdir -p /dev/virtio-ports
    read n < "$p/name"; [ -n "$n" ] && ln -sf ../${p##*/} /dev/virtio-ports/$n
  done
  [ -e $LOAD ] && [ -e $AGENT ] || usleep 100000
done
exec 3<>$LOAD   # a port allows a single open: keep one per port, shared by our processes
exec 4<>$AGENT

# Loops must not fork (a fork + exec costs many milliseconds of TCG time): wait with `read -t`
# on a FIFO nobody writes to instead of `sleep`, and wake the writer through a second FIFO.
# The monitor sleeps until something changes: busybox `uevent` runs a tiny handler on every
# kernel uevent (a CPU or DIMM hot-added), and the load reader pokes it on a new duty.
mkfifo /run/never /run/notify /run/wake
exec 5<>/run/never 6<>/run/notify 7<>/run/wake
nap() { read -t "$1" _ <&5; }
printf '#!/bin/sh\necho > /run/wake\n' > /bin/on-uevent; chmod +x /bin/on-uevent
uevent /bin/on-uevent &

# The links, set up now so that the NIC's link is up by the time DHCP starts (net_up, below).
ip link set lo up
[ "$NET" = dhcp ] && [ -e /sys/class/net/eth0 ] && ip link set eth0 up

# The disk, once, before the agent says ready (forks are fine here: this runs once).
DISK=none; MOUNTED=0; BOOTS=0; OWN=/data/vms/$VM
echo none > /run/content; echo 0 > /run/data_mib
content_sum() {   # what the content checksum is now, into /run/content
  c=none
  if [ -d /data/content ]; then
    list=$(cd /data/content && find . -type f | sort)
    [ -n "$list" ] && c=$(cd /data/content && sha256sum $list | sha256sum) && c=${c:0:16}
  fi
  echo "$c" > /run/content
}
data_size() {   # MiB in the fill file now, into /run/data_mib
  b=0; [ -f $OWN/fill ] && b=$(stat -c %s $OWN/fill)
  echo $((b / 1048576)) > /run/data_mib
}
mount_disk() {
  i=0   # the driver names the disk as it probes; give devtmpfs a moment if it is not there yet
  while [ ! -b /dev/vda ] && [ -e /sys/block/vda ] && [ $i -lt 20 ]; do nap 0.05; i=$((i + 1)); done
  if [ ! -b /dev/vda ]; then echo "DISK none: no /dev/vda"; return; fi
  DISK=vda; mkdir -p /data
  if ! err=$(mount -t ext4 -o noatime /dev/vda /data 2>&1); then
    echo "DISK vda not mounted: ${err:-mount failed}"; return
  fi
  MOUNTED=1; mkdir -p $OWN
  BOOTS=1; [ -f $OWN/boots ] && while read -r _; do BOOTS=$((BOOTS + 1)); done < $OWN/boots
  read up _ < /proc/uptime
  echo "boot=$BOOTS vm=$VM uptime=$up" >> $OWN/boots; sync
  content_sum; data_size
  read c < /run/content; read d < /run/data_mib
  echo "DISK vda mounted on /data: content=$c data_mib=$d boots=$BOOTS"
}
mount_disk

# The config drive, once (forks are fine here): bounded wait for the device like vda's.
CONFIG=none
mount_config() {
  i=0
  while [ ! -b /dev/vdb ] && [ -e /sys/block/vdb ] && [ $i -lt 20 ]; do nap 0.05; i=$((i + 1)); done
  [ -b /dev/vdb ] || return
  mkdir -p /config
  if ! err=$(mount -t iso9660 -o ro /dev/vdb /config 2>&1); then
    echo "CONFIG vdb not mounted: ${err:-mount failed}"; return
  fi
  [ -f /config/VERSION ] && read -r CONFIG < /config/VERSION
  case $CONFIG in ''|*[!A-Za-z0-9._-]*) CONFIG=unreadable;; esac
  echo "CONFIG vdb mounted on /config: version=$CONFIG"
}
mount_config

# The web root, decided in this one place: the config drive's www/ when there is one (the
# template version's code); else ours (index, health, the work CGI), with the business's own
# files from its disk on top (content/www/ as a whole, or content/index.html).
WWW=/www; CONTENT=/data/content
web_root() {
  if [ -d /config/www ]; then WWW=/config/www; return; fi
  mkdir -p $WWW/cgi-bin
  echo "<html><body><h1>$VM</h1><p>business $BUSINESS</p></body></html>" > $WWW/index.html
  echo ok > $WWW/health
  # No fork in the loop: a fixed count of shell arithmetic is a fixed amount of guest CPU.
  printf '#!/bin/sh\ni=0\nwhile [ $i -lt %s ]; do i=$((i + 1)); done\nprintf "Content-Type: text/plain\\r\\n\\r\\nvm=%s work=%s\\n"\n' \
    "$WORK" "$VM" "$WORK" > $WWW/cgi-bin/work
  chmod +x $WWW/cgi-bin/work
  if [ -d $CONTENT/www ]; then cp -r $CONTENT/www/. $WWW/
  elif [ -f $CONTENT/index.html ]; then cp $CONTENT/index.html $WWW/index.html
  fi
}
web_root
# A CGI inherits httpd's environment: the config drive's CGI learns who it runs on from it.
export AS_VM=$VM AS_BUSINESS=$BUSINESS AS_WORK=$WORK AS_VERSION=$CONFIG
httpd -p 80 -h $WWW   # daemonizes; a request forks (and a CGI execs), not our loops

# The network, once, before the agent says ready. udhcpc runs /bin/on-dhcp on each event: it
# sets the address and default route, records the address and wakes the monitor.
echo none > /run/addr
cat > /bin/on-dhcp <<'EOS'
#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; echo none > /run/addr;;
  bound|renew)
    read old < /run/addr
    if [ "$old" != "$ip" ]; then
      ip -4 addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
    fi
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip" > /run/addr;;
  *) exit 0;;
esac
echo > /run/wake
EOS
chmod +x /bin/on-dhcp
net_up() {
  [ "$NET" = dhcp ] || return
  if [ ! -e /sys/class/net/eth0 ]; then echo "NET none: no eth0"; return; fi
  # The link is reported up ~1 s after it was set up (the kernel's linkwatch; it was set up
  # before the disk was mounted, to overlap that): udhcpc starts once it is, so its first
  # discover is not sent on a link that is not up yet (which would cost a 1 s retry).
  i=0; while [ $i -lt 40 ]; do
    read o < /sys/class/net/eth0/operstate; [ "$o" = up ] && break; nap 0.05; i=$((i + 1))
  done
  # Returns once bound, or after 3 unanswered discovers; either way udhcpc stays in the
  # background (renewing, or asking again every 5 s).
  read from _ < /proc/uptime
  udhcpc -i eth0 -s /bin/on-dhcp -t 3 -T 1 -A 5 -b -p /run/udhcpc.pid > /run/udhcpc.log 2>&1
  read a < /run/addr
  read up _ < /proc/uptime
  echo "NET eth0 addr=$a from=$from uptime=$up"
}
net_up
fill_disk() {   # rare: forks (stat, dd, sync) are fine here
  case "$1" in [0-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]) ;; *) return;; esac
  [ "$MOUNTED" = 1 ] || { echo "FILL refused: no disk mounted"; return; }
  read have < /run/data_mib; [ "$1" = "$have" ] && return   # there already (say, since a reboot)
  rm -f $OWN/fill; want=$1; [ $want -gt 512 ] && want=512
  set -- $(stat -f -c "%a %S" /data); free=$(($1 * $2 / 1048576))   # free blocks * block size
  [ $want -gt $((free - 8)) ] && want=$((free - 8))
  [ $want -gt 0 ] || want=0
  # Random, not zeros: neither the filesystem, qcow2 nor a block copy may skip it.
  [ $want -gt 0 ] && dd if=/dev/urandom of=$OWN/fill bs=1048576 count=$want iflag=fullblock 2>/dev/null
  sync; data_size; content_sum; echo >&7
}
set_duty() {
  case "$1" in [0-9]|[1-9][0-9]|100) echo "$1" > /run/duty; echo >&7;; esac
}
hold_mem() {   # rare: forks (dd) are fine here
  case "$1" in [0-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]) ;; *) return;; esac
  read req < /run/hold_req; [ "$1" = "$req" ] && return
  echo "$1" > /run/hold_req; rm -f /hold/m; want=$1; avail=0
  while read k v u; do [ "$k" = MemAvailable: ] && { avail=$((v / 1024)); break; }; done < /proc/meminfo
  [ $want -gt $((avail - 24)) ] && want=$((avail - 24))
  [ $want -gt 0 ] || want=0
  [ $want -gt 0 ] && dd if=/dev/zero of=/hold/m bs=1048576 count=$want 2>/dev/null
  echo $want > /run/held; echo >&7
}
load_reader() {   # read() gives EOF while no host is connected: retry
  while :; do
    while read -r cmd arg <&3; do
      case "$cmd" in
        duty) set_duty "$arg"; read d < /run/duty; echo "ACK vm=$VM duty=$d" >&3;;
        hold) hold_mem "$arg"; read h < /run/held; echo "HELD vm=$VM mib=$h" >&3;;
        fill) fill_disk "$arg"; read f < /run/data_mib; echo "FILLED vm=$VM mib=$f" >&3;;
      esac
    done
    nap 0.2
  done
}
agent_reader() {
  while :; do
    while read -r cmd arg <&4; do case "$cmd" in ping*) echo >&6;; esac; done
    nap 0.2
  done
}
writer() {   # writes block while no host is connected: only this process waits, at no cost
  while :; do
    read -t 5 _ <&6    # a change (or a ping), or a 5 s heartbeat
    read s < /run/state
    echo "STATE $s" >&4
  done
}
now_cs() { read up x < /proc/uptime; s=${up%.*}; f=${up#*.}; now=$((s*100 + 1$f - 100)); }
burner() {   # busy for duty% of each PERIOD (centiseconds), absolute schedule
  now_cs; start=$now
  while :; do
    read d < /run/duty; [ -n "$d" ] || d=0
    end=$((start + PERIOD*d/100)); next=$((start + PERIOD))
    now_cs; while [ $now -lt $end ]; do now_cs; done
    now_cs; rest=$((next - now)); [ $rest -gt 0 ] && nap $((rest / 100)).$((rest % 100 / 10))$((rest % 10))
    start=$next; now_cs; [ $now -gt $((next + PERIOD)) ] && start=$now
  done
}

seq=0; last=""; online=""
echo "seq=0 ready=0 vm=$VM business=$BUSINESS" > /run/state
load_reader &
agent_reader &
writer &
while :; do   # monitor: online new CPUs, keep one burner per online CPU, publish changes
  read present < /sys/devices/system/cpu/present
  read now_online < /sys/devices/system/cpu/online
  if [ "$present" != "$now_online" ]; then
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
      [ -e $c/online ] && { read o < $c/online; [ "$o" = 0 ] && echo 1 > $c/online; }
    done
    read now_online < /sys/devices/system/cpu/online
  fi
  if [ "$now_online" != "$online" ]; then
    online=$now_online; n=0
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
      i=${c##*cpu}; o=1; [ -e $c/online ] && read o < $c/online
      [ "$o" = 1 ] || continue
      n=$((n + 1))
      if ! eval "[ -n \"\$B$i\" ] && kill -0 \$B$i 2>/dev/null"; then
        burner & eval "B$i=$!"; taskset -p -c $i $! >/dev/null; renice -n 19 -p $! >/dev/null
      fi
    done
    ncpus=$n
  fi
  read k mem_kib unit < /proc/meminfo
  read duty < /run/duty; read held < /run/held; read content < /run/content; read data < /run/data_mib
  read addr < /run/addr
  cur="ready=1 vm=$VM business=$BUSINESS cpus=$online ncpus=$ncpus mem_kib=$mem_kib duty=$duty held_mib=$held"
  cur="$cur disk=$DISK mounted=$MOUNTED content=$content data_mib=$data boots=$BOOTS addr=$addr"
  cur="$cur config=$CONFIG"
  if [ "$cur" != "$last" ]; then
    last=$cur; seq=$((seq + 1))
    echo "seq=$seq $cur" > /run/state; echo >&6
    echo "STATE seq=$seq $cur"
  fi
  read -t 2 _ <&7   # until a uevent or a new duty (2 s at most, in case one was missed)
done
