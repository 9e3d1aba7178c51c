#!/usr/bin/env bash
# 91-offload-integrity.sh - with offloads on (the default), every byte arrives intact.
#
#   netns h1                                        netns h2
#   <P>u1 192.0.2.1/24 <====== veth underlay =====> <P>u2 192.0.2.2/24   (veth offloads on)
#   overlayd, tap <P>t 198.51.100.1/24              overlayd, tap <P>t 198.51.100.2/24
#     + 2001:db8:42::1/64 (h2: ::2) for an inner IPv6 flow
#
# Proves, with TSO super-frames read from the TAP, UDP GSO sends, UDP GRO receives and
# coalesced TAP writes in play:
#   - the TAPs negotiated TSO (ethtool shows tcp-segmentation-offload on);
#   - a 200 MB TCP transfer (random data) over IPv4 arrives byte-identical (sha256);
#   - 50 MB over an inner IPv6 TCP flow, too (VLAN-tagged inner frames are covered by the
#     unit tests of src/core/offload.rs: this kernel has no 8021q module for a VLAN device);
#   - UDP datagrams of mixed sizes (1 to 4000 bytes: some are IP-fragmented inside the
#     overlay) each arrive with exactly the bytes that were sent;
#   - GRE (key, GRE checksums) with offloads: the TAPs offer TSO, super-frames cross (the
#     average frame each daemon reads from and writes to its TAP is larger than the MTU
#     allows an ordinary frame), and 50 MB each way arrive byte-identical with no GRE checksum
#     or other drop counted;
#   - a peer with every offload off (kernel vxlan on a veth with TSO/GSO/GRO/tx checksum off)
#     still exchanges 20 MB each way with an offloading overlayd, byte-identical.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v ethtool >/dev/null || die "ethtool not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
TAP=${PREFIX}t

log "underlay $U1 <-> $U2 (veth, offloads left on)"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 2

log "overlayd on both hosts, offload on (the default)"
for i in 1 2; do
  j=$((3 - i))
  write_config "$WORK/h$i.toml" "192.0.2.$i"
  add_network "$WORK/h$i.toml" blue 42 "$TAP" "198.51.100.$i/24" "192.0.2.$j"
  start_daemon "$PREFIX-h$i" "d$i" "$WORK/h$i.toml"
done
wait_ready d1
wait_ready d2
for i in 1 2; do
  nsn=$PREFIX-h$i
  ns_exec "$nsn" ethtool -k "$TAP" | grep -q '^tcp-segmentation-offload: on' ||
    die "TAP $TAP in $nsn does not offer TSO: $(ns_exec "$nsn" ethtool -k "$TAP" | grep segmentation)"
  ip -n "$nsn" addr add "2001:db8:42::$i/64" dev "$TAP" nodad
done
ok "both TAPs offer TSO to the host stack"
wait_ping "$H1" 198.51.100.2
wait_until -t 10 ns_exec "$H1" ping -6 -n -c 1 -W 1 2001:db8:42::2 || die "no IPv6 ping over the overlay"

log "200 MB TCP over IPv4, 50 MB over inner IPv6"
make_random_file "$WORK/big" 200
tcp_transfer "$H1" "$H2" 198.51.100.2 5001 "$WORK/big" "IPv4 TCP 200 MB h1->h2"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
head -c 50000000 "$WORK/big" >"$WORK/mid"
tcp_transfer "$H2" "$H1" 198.51.100.1 5002 "$WORK/mid" "IPv4 TCP 50 MB h2->h1"
# (tcp_transfer listens on IPv4 only: the IPv6 transfer spelled out)
start_bg "$H2" "$WORK/socat6.log" socat -u -b 131072 "TCP6-LISTEN:5003,bind=[2001:db8:42::2],reuseaddr" "CREATE:$WORK/recv6"
srv=$BG_PID
wait_until -t 10 _tcp_listening "$H2" 5003 || die "IPv6 socat server did not start"
timeout 120 ip netns exec "$H1" socat -u -b 131072 "OPEN:$WORK/mid" "TCP6:[2001:db8:42::2]:5003,connect-timeout=5" ||
  die "inner IPv6 TCP transfer failed"
wait_exit "$srv" 60 || die "IPv6 receiver did not finish"
want=$(sha256sum <"$WORK/mid" | cut -d' ' -f1) got=$(sha256sum <"$WORK/recv6" | cut -d' ' -f1)
assert_eq "inner IPv6 TCP 50 MB arrived byte-identical (sha256)" "$want" "$got"
rm -f "$WORK/big"

log "UDP datagrams of mixed sizes, each checked byte for byte"
cat >"$WORK/udp.py" <<'PYEOF'
import hashlib, socket, sys, time
role, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def body(i):
    size = 1 + (i * 977) % 4000
    seed = hashlib.sha256(i.to_bytes(4, "big")).digest()
    return i.to_bytes(4, "big") + (seed * (size // 32 + 1))[:size]
if role == "recv":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, port)); s.settimeout(5)
    good = bad = 0
    seen = set()
    try:
        while len(seen) < n:
            d, _ = s.recvfrom(65535)
            i = int.from_bytes(d[:4], "big")
            if i < n and d == body(i):
                good += 1; seen.add(i)
            else:
                bad += 1
    except socket.timeout:
        pass
    print(f"received {len(seen)} intact, {bad} corrupt, of {n}")
    with open(sys.argv[5], "w") as f:
        f.write(f"{len(seen)} {bad}\n")
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        s.sendto(body(i), (addr, port))
        if i % 20 == 19:
            time.sleep(0.002)
PYEOF
# UDP may lose datagrams on a loaded machine (a full socket buffer, a lost fragment); that is
# allowed only where a kernel or daemon counter accounts for it. A corrupt datagram never is.
losses() { # every counter a lost datagram (or one of its fragments) can land in
  local n=0 nsn c
  for nsn in "$H1" "$H2"; do
    for c in RcvbufErrors InErrors; do n=$((n + $(snmp_counter "$nsn" Udp "$c"))); done
    n=$((n + $(snmp_counter "$nsn" Ip ReasmFails)))
    n=$((n + $(ip -n "$nsn" -j -s link | jq '[.[].stats64 | .rx.dropped + .tx.dropped] | add // 0')))
    n=$((n + $(tc -n "$nsn" -j -s qdisc | jq '[.[].drops // 0] | add // 0')))
  done
  local _p dropped
  while read -r _p dropped _; do n=$((n + 16#$dropped)); done </proc/net/softnet_stat
  for i in 1 2; do
    n=$((n + $("$OVERLAYD_BIN" stats --config "$WORK/h$i.toml" --json | jq '[.. | objects | to_entries[] | select(.key == "drops" or .key == "unattributed_drops") | .value[]] | add // 0')))
  done
  printf '%s\n' "$n"
}
l0=$(losses)
start_bg "$H2" "$WORK/udp-recv.log" /usr/bin/python3 "$WORK/udp.py" recv 198.51.100.2 6000 3000 "$WORK/udp-result"
rcv=$BG_PID
wait_until -t 10 _udp_bound "$H2" 6000 || die "UDP receiver did not start"
ns_exec "$H1" /usr/bin/python3 "$WORK/udp.py" send 198.51.100.2 6000 3000 || die "UDP sender failed"
wait_exit "$rcv" 30 || die "UDP receiver did not finish"
((EXIT_STATUS == 0)) || die "UDP receiver failed: $(cat "$WORK/udp-recv.log")"
read -r intact corrupt <"$WORK/udp-result"
assert_eq "UDP datagrams corrupt" 0 "$corrupt"
counted=$(($(losses) - l0))
missing=$((3000 - intact))
info "UDP mixed sizes: $intact of 3000 intact, $missing lost, $counted drops counted by the kernel and the daemons meanwhile"
((missing <= counted)) || die "UDP: $missing datagrams lost but only $counted drops counted anywhere"
ok "UDP mixed sizes: $intact of 3000 intact, none corrupt, every loss counted"

log "GRE (key 42, GRE checksums) with offloads: TSO super-frames cut into GRE packets, segments coalesced"
stop_daemon d1
stop_daemon d2
for i in 1 2; do
  j=$((3 - i))
  write_config "$WORK/g$i.toml" "192.0.2.$i"
  add_network "$WORK/g$i.toml" blue 42 "$TAP" "198.51.100.$i/24" "192.0.2.$j" encap='"gre"' gre_checksum=true
  start_daemon "$PREFIX-h$i" "g$i" "$WORK/g$i.toml"
done
wait_ready g1
wait_ready g2
for i in 1 2; do
  ns_exec "$PREFIX-h$i" ethtool -k "$TAP" | grep -q '^tcp-segmentation-offload: on' ||
    die "GRE TAP $TAP in $PREFIX-h$i does not offer TSO: $(ns_exec "$PREFIX-h$i" ethtool -k "$TAP" | grep segmentation)"
done
ok "both GRE TAPs offer TSO to the host stack"
ip -n "$H1" neigh flush dev "$TAP"
ip -n "$H2" neigh flush dev "$TAP"
wait_ping "$H1" 198.51.100.2
# tap_stats NS DIR - "packets bytes" the TAP counted in DIR (tx: frames the daemon read, i.e.
# the host sent; rx: frames the daemon wrote)
tap_stats() { ip -n "$1" -j -s link show dev "$TAP" | jq -r ".[0].stats64.$2 | \"\(.packets) \(.bytes)\""; }
read -r rp0 rb0 < <(tap_stats "$H1" tx)
read -r wp0 wb0 < <(tap_stats "$H2" rx)
head -c 50000000 "$WORK/mid" >"$WORK/gre"
tcp_transfer "$H1" "$H2" 198.51.100.2 5007 "$WORK/gre" "GRE TCP 50 MB h1->h2"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
read -r rp1 rb1 < <(tap_stats "$H1" tx)
read -r wp1 wb1 < <(tap_stats "$H2" rx)
# an ordinary frame is at most the TAP MTU (1458) plus 14; a super-frame is up to 64 KB
read_avg=$(((rb1 - rb0) / (rp1 - rp0))) write_avg=$(((wb1 - wb0) / (wp1 - wp0)))
info "GRE h1->h2: h1's daemon read $((rp1 - rp0)) frames from its TAP, $read_avg bytes on average; h2's daemon wrote $((wp1 - wp0)), $write_avg bytes on average"
assert_ge "GRE: average frame h1's daemon read from its TAP (bytes; > 1472: TSO super-frames)" 1473 "$read_avg"
assert_ge "GRE: average frame h2's daemon wrote to its TAP (bytes; > 1472: coalesced segments)" 1473 "$write_avg"
tcp_transfer "$H2" "$H1" 198.51.100.1 5008 "$WORK/gre" "GRE TCP 50 MB h2->h1"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
for g in g1 g2; do
  drop_totals "$g"
  for reason in gre_checksum malformed bad_offload send_failed; do
    assert_eq "GRE: $g counted no $reason drops" 0 "$(drop_count "$g" blue "$reason")"
  done
done
stop_daemon g1
stop_daemon g2
rm -f "$WORK/gre"
# the kernel vxlan device below needs the VXLAN daemon in h1 again
start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1

log "a peer with every offload off: kernel vxlan in h2 instead of overlayd"
ns_exec "$H2" ethtool -K "${PREFIX}u2" tso off gso off gro off tx off >/dev/null ||
  die "cannot turn offloads off on ${PREFIX}u2"
add_native_vxlan "$H2" "${PREFIX}vx" 42 "$U2" "$U1" "${PREFIX}u2" 4789
ip -n "$H2" addr add 198.51.100.2/24 dev "${PREFIX}vx"
ip -n "$H2" link set "${PREFIX}vx" up
# the kernel device has another MAC than overlayd's TAP had: forget the old neighbour entry
ip -n "$H1" neigh flush dev "$TAP"
wait_ping "$H1" 198.51.100.2 20
head -c 20000000 "$WORK/mid" >"$WORK/small"
tcp_transfer "$H1" "$H2" 198.51.100.2 5005 "$WORK/small" "offloading overlayd -> kernel without offloads, 20 MB"
tcp_transfer "$H2" "$H1" 198.51.100.1 5006 "$WORK/small" "kernel without offloads -> offloading overlayd, 20 MB"
log "PASS: offloaded data arrives intact over IPv4, IPv6, UDP, and with a peer without offloads"
