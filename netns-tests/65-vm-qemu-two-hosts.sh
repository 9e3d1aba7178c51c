#!/usr/bin/env bash
# 65-vm-qemu-two-hosts.sh - QEMU VMs on two hosts in one L2 segment, one on a socket port, one
# on a TAP port.
#
#   netns h1: overlayd, network blue: TAP <P>tap1 198.51.100.1/24 + vm_socket
#             VM vm1 (QEMU -netdev stream on the socket)          198.51.100.11
#   netns h2: overlayd, network blue: taps = [<P>tap2 198.51.100.2/24, <P>vm2]
#             VM vm2 (QEMU -netdev tap,ifname=<P>vm2,vnet_hdr=off) 198.51.100.12
#   underlay: veth 192.0.2.1 <-> 192.0.2.2, VXLAN vni 42
#
# The guests are the host's Debian kernel with a busybox initramfs (netns-tests/vm-lib.sh),
# booted under TCG. Proves:
#   - the daemon attaches a TAP that QEMU holds (listed in `taps`) as a port;
#   - a VM on a socket port and a VM on a TAP port ping each other across the hosts;
#   - each VM pings the namespace on the other host, and vm1 its own host's namespace;
#   - a 10 MB TCP transfer (busybox nc) from vm1 to vm2 arrives complete (byte count);
#   - prints the RTTs and the transfer rate (never asserted);
#   - the daemons stop cleanly, and QEMU's TAP survives the daemon.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=vm-lib.sh
. "$LIB_DIR/vm-lib.sh"
need_daemon
build_guest

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
NS1=198.51.100.1 NS2=198.51.100.2 VM1=198.51.100.11 VM2=198.51.100.12
SOCK=$WORK/blue.sock
VMTAP=${PREFIX}vm2

log "underlay: $H1 $U1 <-> $H2 $U2"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

log "h2: the VM's TAP (persistent; QEMU opens it), then vm2"
start_vm_on_tap vm2 "$H2" "$VM2/24" 52:54:00:00:00:12 "$VMTAP"

log "daemons: h1 with a TAP and a vm_socket, h2 with its TAP and the VM's TAP"
vm_lab_configs "$NS1/24" "$NS2/24" "$SOCK" "$VMTAP"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
grep -q "interface attached as a port with a packet socket.*interface=\"$VMTAP\"" "$WORK/d2.log" ||
  die "d2 did not attach $VMTAP as a packet-socket port"$'\n'"$(cat "$WORK/d2.log")"
ok "d2 attached QEMU's TAP $VMTAP as a port"

log "h1: vm1 on the socket port"
start_vm vm1 "$H1" "$VM1/24" 52:54:00:00:00:11 "stream,id=n0,server=off,addr.type=unix,addr.path=$SOCK"
wait_vm vm2 120
wait_vm vm1 120
wait_until -t 10 grep -q 'vm connected' "$WORK/d1.log" || die "d1 logged no VM connection"
ok "d1: vm1 connected to the socket"

log "pings"
vm_cmd vm1 40 "n=0; until ping -c 1 -W 1 $VM2 >/dev/null; do n=\$((n+1)); [ \$n -lt 20 ] || exit 1; done" ||
  die "vm1 never reached vm2: $VM_OUT"
vm_ping vm1 "$VM2" 5; rtt_vm_vm=$VM_RTT
vm_ping vm2 "$VM1" 5
vm_ping vm1 "$NS2" 5; rtt_vm_ns_remote=$VM_RTT
vm_ping vm2 "$NS1" 5
vm_ping vm1 "$NS1" 5; rtt_vm_ns_local=$VM_RTT
ping_ok "$H2" "$VM1" 3
ping_ok "$H1" "$VM2" 3

log "10 MB TCP vm1 -> vm2 (busybox nc)"
# the listener is up once vm2's /proc/net/tcp or tcp6 (busybox nc may listen on ::) lists port
# 5001 (0x1389) in state LISTEN (0A)
# shellcheck disable=SC2016 # expanded in the guest
listening='cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '\''$2 ~ /:1389$/ && $4 == "0A" { f = 1 } END { exit !f }'\'
vm_cmd vm2 40 "rm -f /tmp/rx; (sleep 300 | nc -l -p 5001 | wc -c > /tmp/rx) </dev/null >/dev/null 2>&1 & n=0; until $listening; do n=\$((n+1)); [ \$n -lt 200 ] || exit 1; sleep 0.1; done" ||
  die "vm2: nc is not listening on port 5001 after 20 s: $VM_OUT"
ok "vm2: nc listens on port 5001"
vm_cmd vm1 180 "a=\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=64k count=160 2>/dev/null | nc $VM2 5001; b=\$(cut -d' ' -f1 /proc/uptime); echo \"t \$a \$b\"" ||
  die "vm1: transfer failed: $VM_OUT"
sender_out=$VM_OUT
times=$(sed -n 's/^t \([0-9.]*\) \([0-9.]*\).*/\1 \2/p' <<<"$VM_OUT")
vm_cmd vm2 40 "n=0; while [ ! -s /tmp/rx ] && [ \$n -lt 100 ]; do sleep 0.2; n=\$((n+1)); done; cat /tmp/rx" || die "vm2: no byte count: $VM_OUT"
received=$(tr -dc 0-9 <<<"$VM_OUT")
[[ -n $received ]] ||
  die "vm2 counted no bytes within 20 s of the transfer's end (its nc never saw the connection end); vm1's side: $sender_out"
assert_eq "bytes received by vm2" 10485760 "$received"
rate=$(awk -v t="$times" 'BEGIN { split(t, a, " "); d = a[2] - a[1]; if (d <= 0) d = 0.01; printf "%.0f", 10485760 * 8 / d / 1e6 }')

info "rtt vm1 -> vm2 (socket port -> tunnel -> TAP port): $rtt_vm_vm ms (min/avg/max)"
info "rtt vm1 -> namespace on the other host: $rtt_vm_ns_remote ms"
info "rtt vm1 -> namespace on its own host:   $rtt_vm_ns_local ms"
info "TCP vm1 -> vm2: $rate Mbit/s (10 MB, timed in the guest; TCG guests: the CPU emulation is the limit)"
for h in "$H1" "$H2"; do
  metrics=$(ns_exec "$h" curl -sf --max-time 5 http://127.0.0.1:9477/metrics) || die "no /metrics from the daemon in $h"
  grep -q '^overlayd_drops_total{' <<<"$metrics" || die "no overlayd_drops_total in the metrics of $h"
  drops=$(awk '/^overlayd_drops_total\{/ && $2 != "0" { printf "%s%s", sep, $0; sep = ", " }' <<<"$metrics")
  info "drops in ${h#"$PREFIX-"}: ${drops:-none (every overlayd_drops_total is 0)}"
done

log "shutdown"
stop_daemon d1
stop_daemon d2
link_exists "$H2" "$VMTAP" || die "QEMU's TAP $VMTAP vanished with the daemon"
ok "QEMU's TAP $VMTAP is still there (the daemon only attached to it)"
log "PASS: VMs on two hosts share one segment"
