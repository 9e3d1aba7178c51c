# shellcheck shell=bash
# netns-tests/vm-lib.sh - QEMU guests for the labs. Source it after lib.sh.
#
# The guest is the host's Debian kernel (/boot/vmlinuz-*, package linux-image-amd64) with a
# tiny initramfs built here from busybox-static and the virtio modules (virtio_pci, virtio_net
# and their dependencies, .ko or .ko.xz, as `modprobe --show-depends` lists them). It is cached
# under target/vm-guest/ and rebuilt when this file, the kernel or busybox change.
#
# The guest's init loads the modules, configures eth0 from the kernel command line
# (ovl.ip=ADDR/PLEN ovl.mtu=N), prints "OVERLAYD-GUEST READY" on its console (ttyS0, a log file
# on the host) and then runs commands it reads from its second serial port (ttyS1, a UNIX
# socket on the host): one shell command per line, answered by its output and a line
# "@@rc=STATUS". vm_cmd drives that.
#
# /dev/kvm here cannot boot a stock kernel, so guests run under TCG (-accel tcg, ~6 s boot).
#
# Functions: build_guest; start_vm NAME NS IP NETDEV_ARGS...; wait_vm NAME [TIMEOUT];
#            vm_cmd NAME TIMEOUT COMMAND (output in $VM_OUT); vm_ping_rtt NAME DST COUNT

GUEST_DIR=${GUEST_DIR:-$REPO_DIR/target/vm-guest}
GUEST_MEM=${GUEST_MEM:-192}
declare -A _VM_PID=()

_guest_init() {
  cat <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp
while read -r m; do insmod "$m" || echo "insmod $m failed"; done </modules.list
ip=""; mtu=1500
for a in $(cat /proc/cmdline); do
  case $a in
    ovl.ip=*) ip=${a#ovl.ip=} ;;
    ovl.mtu=*) mtu=${a#ovl.mtu=} ;;
  esac
done
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
ip link set eth0 mtu "$mtu" up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
echo "OVERLAYD-GUEST READY ip=$ip mtu=$mtu mac=$(cat /sys/class/net/eth0/address)"
stty -F /dev/ttyS1 raw -echo 115200
while true; do
  while IFS= read -r line; do
    sh -c "$line" 2>&1
    echo "@@rc=$?"
  done </dev/ttyS1 >/dev/ttyS1
  sleep 0.1
done
EOF
}

# build_guest - make (or reuse) the kernel + initramfs; sets GUEST_KERNEL and GUEST_INITRD
build_guest() {
  local kver key dir
  GUEST_KERNEL=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
  [[ -n $GUEST_KERNEL ]] || die "no kernel in /boot (install linux-image-amd64)"
  kver=${GUEST_KERNEL#/boot/vmlinuz-}
  [[ -d /lib/modules/$kver ]] || die "no /lib/modules/$kver for the guest kernel $GUEST_KERNEL"
  # (no `busybox --list | grep -q`: under pipefail, grep quitting early fails the pipe)
  [[ -x /bin/busybox && $(/bin/busybox --list 2>/dev/null) == *insmod* ]] || die "no static busybox (install busybox-static)"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed (qemu-system-x86)"
  key=$( { _guest_init; echo "$kver"; sha256sum /bin/busybox; } | sha256sum | cut -c1-12)
  GUEST_INITRD=$GUEST_DIR/initramfs-$key.cpio.gz
  [[ -s $GUEST_INITRD ]] && return 0
  info "building the guest initramfs (kernel $kver, busybox) in $GUEST_DIR"
  dir=$WORK/guest-root
  mkdir -p "$dir"/{bin,proc,sys,dev,tmp,lib/modules} "$GUEST_DIR"
  cp /bin/busybox "$dir/bin/busybox"
  ln -s busybox "$dir/bin/sh"
  _guest_init >"$dir/init"
  chmod 755 "$dir/init"
  : >"$dir/modules.list"
  local line path base
  while read -r line; do
    [[ $line == insmod* ]] || continue
    path=$(awk '{print $2}' <<<"$line")
    base=$(basename "$path")
    case $path in
      *.ko.xz) xz -dc "$path" >"$dir/lib/modules/${base%.xz}"; base=${base%.xz} ;;
      *.ko.zst) zstd -qdc "$path" >"$dir/lib/modules/${base%.zst}"; base=${base%.zst} ;;
      *.ko) cp "$path" "$dir/lib/modules/$base" ;;
      *) die "unexpected module file $path" ;;
    esac
    grep -qx "/lib/modules/$base" "$dir/modules.list" || echo "/lib/modules/$base" >>"$dir/modules.list"
  done < <(for m in virtio_pci virtio_net; do modprobe -S "$kver" --show-depends "$m" 2>/dev/null; done)
  grep -q virtio_net "$dir/modules.list" || die "virtio_net module not found for kernel $kver"
  (cd "$dir" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$GUEST_INITRD.tmp"
  mv "$GUEST_INITRD.tmp" "$GUEST_INITRD"
  rm -rf "$dir"
}

# start_vm NAME NS IP MAC NETDEV - boot a guest in NS with one virtio NIC on -netdev NETDEV
# (e.g. "stream,id=n0,server=off,addr.type=unix,addr.path=/x.sock"; the id must be n0).
# Console in $WORK/NAME.console, command socket $WORK/NAME.ctl.
start_vm() {
  local name=$1 nsn=$2 ip=$3 mac=$4 netdev=$5
  start_bg "$nsn" "$WORK/$name.qemu.log" qemu-system-x86_64 -accel tcg -m "$GUEST_MEM" -smp 1 \
    -nographic -nodefaults -no-reboot \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 ${VM_APPEND:-quiet} panic=-1 ovl.ip=$ip ovl.mtu=${VM_MTU:-1450}" \
    -serial "file:$WORK/$name.console" \
    -serial "unix:$WORK/$name.ctl,server=on,wait=off" \
    -netdev "$netdev" -device "virtio-net-pci,netdev=n0,mac=$mac,romfile="
  _VM_PID[$name]=$BG_PID
  info "started VM $name (qemu pid $BG_PID) in $nsn: $ip, $mac"
}

# start_vm_on_tap NAME NS IP MAC TAP - create TAP in NS (persistent, up), boot NAME on it (QEMU
# opens the TAP, vnet_hdr off) and wait until QEMU holds it (carrier): only then may a daemon
# start, since it attaches to a TAP another process holds but would open a free one as its own
start_vm_on_tap() {
  local name=$1 nsn=$2 ip=$3 mac=$4 tap=$5
  ip -n "$nsn" tuntap add dev "$tap" mode tap || die "cannot create TAP $tap in $nsn"
  ip -n "$nsn" link set dev "$tap" up
  start_vm "$name" "$nsn" "$ip" "$mac" "tap,id=n0,ifname=$tap,script=no,downscript=no,vnet_hdr=off"
  wait_until -t 60 ns_exec "$nsn" grep -qx 1 "/sys/class/net/$tap/carrier" ||
    die "QEMU did not take TAP $tap within 60 s"$'\n'"$(cat "$WORK/$name.qemu.log")"
  ok "QEMU holds $tap (carrier up)"
}

# vm_lab_configs H1_ADDR H2_ADDR SOCK VMTAP [METRICS] - the two hosts of the VM labs, network blue
# (VXLAN 42): $WORK/h1.toml with TAP ${PREFIX}tap1 (H1_ADDR) and a vm_socket SOCK, $WORK/h2.toml
# with TAP ${PREFIX}tap2 (H2_ADDR) and the VM's TAP VMTAP; underlays $U1 and $U2; METRICS, if
# given, is both daemons' metrics_listen
vm_lab_configs() {
  local a1=$1 a2=$2 sock=$3 vmtap=$4 metrics=${5:-}
  write_config "$WORK/h1.toml" "$U1"
  write_config "$WORK/h2.toml" "$U2"
  if [[ -n $metrics ]]; then
    set_metrics_listen "$WORK/h1.toml" "$metrics"
    set_metrics_listen "$WORK/h2.toml" "$metrics"
  fi
  add_network "$WORK/h1.toml" blue 42 "${PREFIX}tap1" "$a1" "$U2" "vm_socket=\"$sock\""
  cat >>"$WORK/h2.toml" <<EOT

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
taps = ["${PREFIX}tap2", "$vmtap"]
address = "$a2"
peers = ["$U1"]
EOT
}

# wait_vm NAME [TIMEOUT] - wait for the guest's READY line
wait_vm() {
  local name=$1 t=${2:-90} deadline
  deadline=$((SECONDS + t))
  until grep -q 'OVERLAYD-GUEST READY' "$WORK/$name.console" 2>/dev/null; do
    if ! _is_ours "${_VM_PID[$name]}"; then
      cat "$WORK/$name.qemu.log" >&2
      tail -n 30 "$WORK/$name.console" >&2 2>/dev/null
      die "VM $name: qemu exited before the guest was ready"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$WORK/$name.console" >&2 2>/dev/null
      die "VM $name not ready after ${t}s"
    fi
    sleep 0.2
  done
  ok "VM $name booted: $(grep -o 'OVERLAYD-GUEST READY.*' "$WORK/$name.console" | head -n 1 | tr -d '\r')"
}

# vm_cmd NAME TIMEOUT COMMAND - run COMMAND in the guest; its output in $VM_OUT; returns its status
vm_cmd() {
  local name=$1 t=$2 cmd=$3 rc=0
  VM_OUT=$(/usr/bin/python3 - "$WORK/$name.ctl" "$t" "$cmd" <<'EOF'
import re, socket, sys, time
path, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(cmd.encode() + b"\n")
buf, deadline = b"", time.monotonic() + timeout
while True:
    m = re.search(rb"(?m)^@@rc=(\d+)\r?$", buf)
    if m:
        sys.stdout.write(buf[:m.start()].decode(errors="replace"))
        sys.exit(int(m.group(1)))
    left = deadline - time.monotonic()
    if left <= 0:
        sys.stdout.write(buf.decode(errors="replace") + "\n(timed out)")
        sys.exit(124)
    s.settimeout(left)
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        continue
    if not chunk:
        sys.stdout.write(buf.decode(errors="replace") + "\n(command socket closed)")
        sys.exit(125)
    buf += chunk
EOF
  ) || rc=$?
  return $rc
}

# vm_ping NAME DST COUNT - every one of COUNT pings from the guest must be answered, however
# late (until a deadline of COUNT/5 + 10 s); prints and sets VM_RTT ("min/avg/max ms").
# busybox ping -c N gives up on a reply about 1 s after its last request, and -w does not
# extend that; so the guest runs ping with -w and without -c, stops it once requests 0..N-1
# (busybox counts from 0) are answered, and the host judges the per-reply lines.
# shellcheck disable=SC2016 # the $ in cmd are expanded in the guest
vm_ping() {
  local name=$1 dst=$2 count=$3 deadline=$(($3 / 5 + 10)) cmd rx missing
  cmd='ping -i 0.2 -w @DL@ @DST@ >/tmp/ping.out 2>&1 & p=$!; '
  cmd+='while st=$(cut -d" " -f3 /proc/$p/stat 2>/dev/null) && [ "$st" != Z ] && '
  cmd+='[ "$(awk -v n=@N@ '\''/ bytes from / && match($0, /seq=[0-9]+/) { s = substr($0, RSTART + 4, RLENGTH - 4) + 0; if (s < n) g[s] = 1 } END { c = 0; for (k in g) c++; print c }'\'' /tmp/ping.out)" -lt @N@ ]; '
  cmd+='do sleep 0.1; done; kill -INT $p 2>/dev/null; wait $p; cat /tmp/ping.out'
  cmd=${cmd//@DL@/$deadline}
  cmd=${cmd//@DST@/$dst}
  cmd=${cmd//@N@/$count}
  vm_cmd "$name" $((deadline + 20)) "$cmd" || true
  read -r rx missing < <(ping_answered 0 "$count" <<<"$VM_OUT")
  ((rx == count)) ||
    die "ping $dst from VM $name: expected $count/$count replies, seen $rx/$count (unanswered seq: $missing)"$'\n'"$VM_OUT"
  VM_RTT=$(sed -n 's/.*min\/avg\/max = \([0-9./]*\) ms.*/\1/p' <<<"$VM_OUT")
  ok "ping $dst from VM $name: $rx/$count replies (rtt min/avg/max $VM_RTT ms)"
}
