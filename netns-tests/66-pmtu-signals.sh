#!/usr/bin/env bash
# 66-pmtu-signals.sh - a frame over the network MTU from a VM port is answered with ICMP.
#
#   netns h1: overlayd, network blue (vni 42, MTU 1450 = 1500 - 50) with only a vm_socket
#   netns h2: overlayd, network blue with a TAP 198.51.100.2/24
#   A client on h1's socket (netns-tests/qemu_stream.py pmtu, QEMU's stream framing) plays a
#   VM left at MTU 1500.
#
# Proves (bytes checked by the client):
#   - a 1450-byte IPv4 packet (the MTU) passes and is not answered;
#   - a 1500-byte IPv4 packet with DF comes back as ICMP type 3 code 4, next-hop MTU 1450,
#     quoting the IP header and 8 bytes, IP and ICMP checksums right, sent from the MAC the
#     VM addressed to the VM's MAC; the network has no address, so it comes from the packet's
#     destination address;
#   - a 1500-byte IPv4 packet without DF gets no answer;
#   - a 1500-byte IPv6 packet comes back as ICMPv6 packet too big, MTU 1450, 1280 bytes;
#   - a burst of 300 oversized frames gets a rate-limited number of answers;
#   - a client on the datagram socket (-netdev dgram) gets the same ICMP answer;
#   - /metrics counts them: overlayd_pmtu_signals_total{family}, the rate-limited ones, and
#     every oversized frame as drops_total{reason="mtu_exceeded"}.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
CLIENT=$LIB_DIR/qemu_stream.py
SOCK=$WORK/blue.sock DSOCK=$WORK/blue-dgram.sock
URL=http://127.0.0.1:9477/metrics

log "underlay: $H1 $U1 <-> $H2 $U2"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

log "h1: network blue with a vm_socket only; h2: a TAP"
write_config "$WORK/h1.toml" "$U1"
set_metrics_listen "$WORK/h1.toml" 127.0.0.1:9477
cat >>"$WORK/h1.toml" <<EOF

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
vm_socket = "$SOCK"
vm_dgram_socket = "$DSOCK"
peers = ["$U2"]
EOF
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "${PREFIX}tap" 198.51.100.2/24 "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
ns_exec "$H1" ip link set lo up

log "a VM at MTU 1500 on h1's socket"
out=$WORK/client.out
if ! /usr/bin/python3 "$CLIENT" pmtu "$SOCK" 1450 >"$out" 2>&1; then
  sed 's/^/   /' "$out"
  die "socket client scenario failed"
fi
sed -n 's/^ok: /   ok: /p; s/^info: /   /p' "$out"
limited=$(sed -n 's/^limited: //p' "$out")
answered=$((300 - limited))

log "a VM at MTU 1500 on h1's datagram socket"
if ! /usr/bin/python3 "$CLIENT" pmtu-dgram "$DSOCK" 1450 "$WORK/vm-dgram.sock" >"$out" 2>&1; then
  sed 's/^/   /' "$out"
  die "datagram client scenario failed"
fi
ok "1500-byte IPv4 DF packet on the datagram port: ICMP 3/4 with MTU 1450, bytes checked"

log "metrics"
m=$(scrape "$H1" "$URL")
assert_eq "ICMP signals counted (1 + burst answers + 1 on the datagram port)" $((2 + answered)) "$(metric "$m" 'overlayd_pmtu_signals_total{family="ipv4",network="blue"}')"
assert_eq "ICMPv6 signals counted" 1 "$(metric "$m" 'overlayd_pmtu_signals_total{family="ipv6",network="blue"}')"
assert_eq "rate-limited signals counted" "$limited" "$(metric "$m" 'overlayd_pmtu_signals_limited_total{network="blue"}')"
assert_eq "every oversized frame is an mtu_exceeded drop (3 + 300 + 1)" 304 "$(metric "$m" 'overlayd_drops_total{network="blue",reason="mtu_exceeded"}')"

log "shutdown"
stop_daemon d1
stop_daemon d2
log "PASS: frames over the MTU are answered with ICMP / ICMPv6"
