#!/usr/bin/env bash
# examples/vms.sh - QEMU VMs on two hosts in one Ethernet segment, joined by overlayd.
#
#   sudo examples/vms.sh          (root: namespaces, TAP devices; needs qemu-system-x86,
#                                  busybox-static and linux-image-amd64, see .ci/run)
#
#   host h1 (netns)                                   host h2 (netns)
#   overlayd: network blue, vm_socket                 overlayd: network blue, taps = [tap, vm2]
#     vm1 198.51.100.11  -netdev stream  --+          vm2 198.51.100.12  -netdev tap (QEMU's TAP)
#     vm3 198.51.100.13  -netdev dgram   --+          namespace 198.51.100.2 on the daemon's TAP
#     namespace 198.51.100.1 on the daemon's TAP
#              192.0.2.1 ======== veth underlay, VXLAN vni 42 ======== 192.0.2.2
#
# vm1 and vm3 are switched locally by h1's daemon; vm2 is reached through the tunnel. The
# guests are the host's Debian kernel with a tiny busybox initramfs (built once, cached in
# target/vm-guest), run under TCG. Prints every step, pings and transfer rates, and removes
# everything on exit. HOLD=1 keeps the lab up until you press Enter.
user_bin=${OVERLAYD_BIN:-}
# what the demo needs from Debian, installed quietly if missing (see scripts/deps.sh)
bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/deps.sh" vm || exit 1
# shellcheck source-path=SCRIPTDIR source=../netns-tests/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../netns-tests/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../netns-tests/vm-lib.sh
. "$LIB_DIR/vm-lib.sh"

show() { sed 's/^/     | /' "$@"; }

log "1. the overlayd binary and the guest image"
if [[ -z $user_bin ]]; then
  if command -v cargo >/dev/null; then
    (cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
  elif [[ ! -x $OVERLAYD_BIN ]]; then
    die "no cargo in root's PATH and no $OVERLAYD_BIN: run 'cargo build --release' first"
  fi
fi
need_daemon
build_guest
info "$OVERLAYD_BIN"
info "guest: $GUEST_KERNEL + $GUEST_INITRD"

H1=$PREFIX-h1 H2=$PREFIX-h2
SOCK=$WORK/run/blue.sock
VMTAP=${PREFIX}vm2
log "2. two hosts ($H1, $H2) and a veth underlay"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" 192.0.2.1/24 "$H2" "${PREFIX}u2" 192.0.2.2/24
ping_ok "$H1" 192.0.2.2 1

log "3. h2: a TAP for vm2, opened by QEMU (vnet_hdr=off: overlayd reads plain frames)"
ip -n "$H2" tuntap add dev "$VMTAP" mode tap
ip -n "$H2" link set dev "$VMTAP" up
start_vm vm2 "$H2" 198.51.100.12/24 52:54:00:00:00:12 "tap,id=n0,ifname=$VMTAP,script=no,downscript=no,vnet_hdr=off"
wait_until -t 60 ns_exec "$H2" grep -qx 1 "/sys/class/net/$VMTAP/carrier" || die "QEMU did not open $VMTAP"

log "4. the configs: h1 offers a socket to its VMs, h2 lists the VM's TAP among its taps"
mkdir -p "$WORK/run"
chmod 0711 "$WORK"
write_config "$WORK/h1.toml" 192.0.2.1
cat >>"$WORK/h1.toml" <<EOF

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
tap = "${PREFIX}tap"
address = "198.51.100.1/24"
vm_socket = "$SOCK"           # QEMU: -netdev stream,server=off,addr.type=unix,addr.path=...
vm_dgram_socket = "$WORK/run/blue-dgram.sock"   # QEMU: -netdev dgram,...,remote.path=...
vm_socket_group = "kvm"       # who may connect: root and the kvm group
vm_socket_mode = "0660"
peers = ["192.0.2.2"]
EOF
getent group kvm >/dev/null || sed -i 's/^vm_socket_group = "kvm".*/vm_socket_group = "root"/' "$WORK/h1.toml"
write_config "$WORK/h2.toml" 192.0.2.2
cat >>"$WORK/h2.toml" <<EOF

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
taps = ["${PREFIX}tap", "$VMTAP"]   # the daemon's own TAP, and vm2's (attached, since QEMU holds it)
address = "198.51.100.2/24"
peers = ["192.0.2.1"]
EOF
for h in h1 h2; do
  info "$WORK/$h.toml:"
  show "$WORK/$h.toml"
done

log "5. start the daemons"
start_daemon "$H1" overlayd-h1 "$WORK/h1.toml"
start_daemon "$H2" overlayd-h2 "$WORK/h2.toml"
wait_ready overlayd-h1
wait_ready overlayd-h2
info "socket: $(stat -c '%A %U:%G %n' "$SOCK")"

log "6. h1: vm1 connects to the stream socket, vm3 sends to the datagram socket"
info "qemu-system-x86_64 -accel tcg ... -netdev stream,id=n0,server=off,addr.type=unix,addr.path=$SOCK -device virtio-net-pci,netdev=n0"
start_vm vm1 "$H1" 198.51.100.11/24 52:54:00:00:00:11 "stream,id=n0,server=off,addr.type=unix,addr.path=$SOCK"
start_vm vm3 "$H1" 198.51.100.13/24 52:54:00:00:00:13 \
  "dgram,id=n0,local.type=unix,local.path=$WORK/run/vm3.sock,remote.type=unix,remote.path=$WORK/run/blue-dgram.sock"
for v in vm1 vm2 vm3; do wait_vm "$v" 180; done

log "7. pings from the VMs"
vm_cmd vm1 40 "n=0; until ping -c 1 -W 1 198.51.100.12 >/dev/null; do n=\$((n+1)); [ \$n -lt 20 ] || exit 1; done" || die "vm1 cannot reach vm2"
vm_ping vm1 198.51.100.12 10; rtt_cross=$VM_RTT
vm_ping vm1 198.51.100.13 10; rtt_local=$VM_RTT
vm_ping vm2 198.51.100.1 5
vm_ping vm3 198.51.100.2 5

log "8. TCP 10 MB with busybox nc, timed in the sending guest"
transfer() { # FROM TO_NAME TO_IP
  local from=$1 to=$2 ip=$3 t
  vm_cmd "$to" 10 "rm -f /tmp/rx; (sleep 300 | nc -l -p 5001 | wc -c > /tmp/rx) </dev/null >/dev/null 2>&1 &"
  sleep 0.5
  vm_cmd "$from" 180 "a=\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=64k count=160 2>/dev/null | nc $ip 5001; b=\$(cut -d' ' -f1 /proc/uptime); echo \"t \$a \$b\"" || die "$from -> $to failed"
  t=$(sed -n 's/^t \([0-9.]*\) \([0-9.]*\).*/\1 \2/p' <<<"$VM_OUT")
  vm_cmd "$to" 20 "n=0; while [ ! -s /tmp/rx ] && [ \$n -lt 50 ]; do sleep 0.2; n=\$((n+1)); done; cat /tmp/rx"
  [[ $(tr -dc 0-9 <<<"$VM_OUT") == 10485760 ]] || die "$to received $(tr -dc 0-9 <<<"$VM_OUT") bytes, not 10485760"
  awk -v t="$t" 'BEGIN { split(t, a, " "); d = a[2] - a[1]; if (d <= 0) d = 0.01; printf "%.0f", 10485760 * 8 / d / 1e6 }'
}
rate_cross=$(transfer vm1 vm2 198.51.100.12)
rate_local=$(transfer vm1 vm3 198.51.100.13)
info "vm1 -> vm2 (across the hosts):     rtt $rtt_cross ms, TCP $rate_cross Mbit/s"
info "vm1 -> vm3 (same host, stream port -> dgram port, switched locally): rtt $rtt_local ms, TCP $rate_local Mbit/s"
info "(TCG guests: the emulated CPU, not the overlay, sets these numbers)"

log "9. what h1's daemon logged"
show "$WORK/overlayd-h1.log"

if [[ ${HOLD:-0} == 1 ]]; then
  log "lab is up. Talk to a guest's shell:  socat - UNIX-CONNECT:$WORK/vm1.ctl   (type: ping -c 3 198.51.100.12)"
  log "           console logs:            $WORK/vm1.console, vm2.console, vm3.console"
  log "           the underlay:            ip netns exec $H1 tcpdump -ni ${PREFIX}u1 udp port 4789"
  read -r -p "== press Enter to tear it down " _
fi
log "10. stop the daemons and the VMs"
stop_daemon overlayd-h1
stop_daemon overlayd-h2
log "done: VMs, namespaces and $WORK are removed on exit"
