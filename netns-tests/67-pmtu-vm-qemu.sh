#!/usr/bin/env bash
# 67-pmtu-vm-qemu.sh - a QEMU guest left at MTU 1500 uploads over TCP across a 1450 network.
#
#   netns h1: overlayd, network blue: TAP <P>tap1 198.51.100.1/24 + vm_socket
#             VM vm1 (QEMU -netdev stream), eth0 MTU 1500 (no host_mtu)  198.51.100.11
#   netns h2: overlayd, network blue: taps = [<P>tap2 198.51.100.2/24, <P>vm2]; tap2's MTU
#             raised to 1500 after start (so h2's SYN-ACK offers MSS 1460 too)
#             VM vm2 (QEMU -netdev tap,ifname=<P>vm2,vnet_hdr=off: a packet-socket port),
#             eth0 MTU 1500                                             198.51.100.12
#   underlay: veth 192.0.2.1 <-> 192.0.2.2 (MTU 1500), VXLAN vni 42: the network carries 1450
#
# Proves:
#   - the guest's full-size segments (1500-byte packets) are answered with ICMP fragmentation
#     needed from the network's address (198.51.100.1); the Linux guest takes them in (its
#     Icmp InDestUnreachs), lowers its path MTU to 1450 and retransmits;
#   - a 4 MB upload from the guest to h2 arrives complete (sha256 of both ends);
#   - VM to VM, both at 1500: a 4 MB upload from vm2 (on h2's packet-socket port, where
#     oversized frames are read cut short) to vm1 arrives complete (sha256 in both guests);
#   - /metrics of h1 counts the signals and the mtu_exceeded drops.
# Without the signals (overlayd before path-MTU signals) the upload stalls after the handshake.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=vm-lib.sh
. "$LIB_DIR/vm-lib.sh"
need_daemon
build_guest

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
NS1=198.51.100.1 NS2=198.51.100.2 VM1=198.51.100.11 VM2=198.51.100.12
VMTAP=${PREFIX}vm2
SOCK=$WORK/blue.sock
URL=http://127.0.0.1:9477/metrics
MB=4

log "underlay: $H1 $U1 <-> $H2 $U2"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

log "h2: the VM's TAP (QEMU opens it), then vm2 at MTU 1500"
VM_MTU=1500 start_vm_on_tap vm2 "$H2" "$VM2/24" 52:54:00:00:00:12 "$VMTAP"

log "daemons: h1 with a TAP and a vm_socket, h2 with a TAP and the VM's TAP"
vm_lab_configs "$NS1/24" "$NS2/24" "$SOCK" "$VMTAP" 127.0.0.1:9477
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
ns_exec "$H1" ip link set lo up
assert_eq "network MTU (h1's TAP)" 1450 "$(link_mtu "$H1" "${PREFIX}tap1")"
ns_exec "$H2" ip link set "${PREFIX}tap2" mtu 1500
assert_eq "h2's TAP raised to" 1500 "$(link_mtu "$H2" "${PREFIX}tap2")"

log "h1: vm1 at MTU 1500 on the socket port"
VM_MTU=1500 start_vm vm1 "$H1" "$VM1/24" 52:54:00:00:00:11 "stream,id=n0,server=off,addr.type=unix,addr.path=$SOCK"
wait_vm vm1 120
vm_cmd vm1 10 "cat /sys/class/net/eth0/mtu" || die "vm1: $VM_OUT"
assert_eq "vm1's eth0 MTU" 1500 "$(tr -dc 0-9 <<<"$VM_OUT")"
vm_cmd vm1 40 "n=0; until ping -c 1 -W 1 $NS2 >/dev/null; do n=\$((n+1)); [ \$n -lt 20 ] || exit 1; done" ||
  die "vm1 never reached $NS2: $VM_OUT"
ok "vm1 reaches h2 ($NS2)"

log "$MB MB TCP upload vm1 -> h2 (busybox nc -> socat)"
vm_cmd vm1 60 "dd if=/dev/urandom of=/tmp/up bs=64k count=$((MB * 16)) 2>/dev/null && sha256sum /tmp/up" || die "vm1: $VM_OUT"
want=$(awk '{print $1; exit}' <<<"$VM_OUT")
[[ $want =~ ^[0-9a-f]{64}$ ]] || die "vm1: no sha256 of its file: $VM_OUT"
out=$WORK/recv
start_bg "$H2" "$WORK/socat.log" socat -u -b 131072 "TCP-LISTEN:5001,bind=$NS2,reuseaddr" "CREATE:$out"
srv=$BG_PID
wait_until -t 10 _tcp_listening "$H2" 5001 || die "socat on $NS2:5001 did not start"
vm_cmd vm1 150 "nc $NS2 5001 </tmp/up; echo nc=\$?" || die "vm1: upload failed or timed out: $VM_OUT"
wait_exit "$srv" 30 || die "the receiver did not see the upload end within 30 s of the sender's (received $(stat -c %s "$out" 2>/dev/null || echo 0) bytes)"
got=$(sha256sum <"$out" | cut -d' ' -f1)
assert_eq "bytes received by h2" $((MB << 20)) "$(stat -c %s "$out")"
assert_eq "sha256 of the upload at h2" "$want" "$got"
# the guest's own count of ICMP destination-unreachable messages it took in (busybox's
# `ip route get` does not show the cached path MTU)
# shellcheck disable=SC2016 # expanded in the guest
vm_cmd vm1 10 'awk '\''/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["InDestUnreachs"] }'\'' /proc/net/snmp' ||
  die "vm1: cannot read /proc/net/snmp: $VM_OUT"
assert_ge "ICMP destination-unreachable messages vm1's kernel received" 1 "$(tr -dc 0-9 <<<"$VM_OUT")"

log "$MB MB TCP upload vm2 -> vm1, both guests at MTU 1500"
wait_vm vm2 120
# (nc's stdin stays open: busybox nc closes the connection when its stdin ends)
# shellcheck disable=SC2016 # expanded in the guest
listening='cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '\''$2 ~ /:138A$/ && $4 == "0A" { f = 1 } END { exit !f }'\'
vm_cmd vm1 40 "rm -f /tmp/rx; (sleep 300 | nc -l -p 5002 > /tmp/rx) </dev/null >/dev/null 2>&1 & n=0; until $listening; do n=\$((n+1)); [ \$n -lt 200 ] || exit 1; sleep 0.1; done" ||
  die "vm1: nc is not listening on port 5002: $VM_OUT"
vm_cmd vm2 60 "dd if=/dev/urandom of=/tmp/up bs=64k count=$((MB * 16)) 2>/dev/null && sha256sum /tmp/up" || die "vm2: $VM_OUT"
want2=$(awk '{print $1; exit}' <<<"$VM_OUT")
vm_cmd vm2 150 "nc $VM1 5002 </tmp/up; echo nc=\$?" || die "vm2: upload to vm1 failed or timed out: $VM_OUT"
# shellcheck disable=SC2016 # expanded in the guest
vm_cmd vm1 40 'n=0; while [ "$(wc -c </tmp/rx)" -lt '$((MB << 20))' ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n+1)); done; wc -c </tmp/rx; sha256sum /tmp/rx' ||
  die "vm1: $VM_OUT"
assert_eq "bytes vm1 received from vm2" $((MB << 20)) "$(head -n 1 <<<"$VM_OUT" | tr -dc 0-9)"
assert_eq "sha256 of the upload at vm1" "$want2" "$(awk 'NR == 2 {print $1}' <<<"$VM_OUT")"
m=$(scrape "$H2" "$URL")
assert_ge "ICMP signals d2 sent to vm2 (packet-socket port)" 1 "$(metric "$m" 'overlayd_pmtu_signals_total{family="ipv4",network="blue"}')"

log "metrics"
m=$(scrape "$H1" "$URL")
sig=$(metric "$m" 'overlayd_pmtu_signals_total{family="ipv4",network="blue"}')
drops=$(metric "$m" 'overlayd_drops_total{network="blue",reason="mtu_exceeded"}')
assert_ge "ICMP signals sent to vm1" 1 "$sig"
assert_ge "mtu_exceeded drops (at least one per signal)" "$sig" "$drops"
info "signals $sig, mtu_exceeded drops $drops, rate-limited $(metric "$m" 'overlayd_pmtu_signals_limited_total{network="blue"}')"

log "shutdown"
stop_daemon d1
stop_daemon d2
log "PASS: a guest at MTU 1500 learns the network's MTU and its upload arrives whole"
