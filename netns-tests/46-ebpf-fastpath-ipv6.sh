#!/usr/bin/env bash
# 46-ebpf-fastpath-ipv6.sh - two overlayd over an IPv6 underlay: known unicast takes the eBPF
# fast path both ways, 64 KB super-frames kept whole, and the counters are exact.
#
#   netns h1                                                netns h2
#   <P>u1 2001:db8::1/64 <======= veth underlay =======>    <P>u2 2001:db8::2/64
#   overlayd (datapath "ebpf"): vni 42, tap 198.51.100.1 .... same, tap 198.51.100.2
#
# Proves (whatever OVERLAYD_DATAPATH says: this lab sets node.datapath = "ebpf" itself):
#   - both daemons start with the fast path on the IPv6 underlay (overlayd_datapath_info
#     {datapath="ebpf"} 1, the programs on the TAP's TC egress and the underlay's TC ingress);
#   - a 100 MB TCP transfer arrives sha256-identical (the inner TCP checksums, left partial by
#     the sender and carried in super-frames, are right when the receiver's stack sees them), and
#     the fast path carries it: h1's overlayd_fastpath_frames_total{direction="tap_rx"} rises by
#     at least 90% of its TAP rx frames, h2's tunnel_rx by at least 90% of its tunnel rx packets;
#   - the counters are exact: what h1 counts as sent to h2 (overlayd_tunnel_packets_total and
#     _bytes_total, tx) is what h2 counts as received from h1 (rx), give or take the keepalives
#     that crossed between the two scrapes, and the bytes are the 100 MB plus headers;
#   - the daemons' own CPU time stays under a quarter of the transfer's duration;
#   - a super-frame goes with a zero outer UDP checksum only to a peer that says it takes one:
#     every VXLAN/IPv6 packet longer than the underlay MTU that h1 sends (captured on the underlay,
#     where a veth carries super-packets whole) has UDP checksum 0 and goes to h2, which sends
#     keepalives of version 2; all the others have a real one.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v tshark >/dev/null || die "tshark not installed (see .ci/run)"
unset OVERLAYD__NODE__DATAPATH

H1=$PREFIX-h1 H2=$PREFIX-h2
V1=2001:db8::1 V2=2001:db8::2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap

log "underlay: $H1 ${PREFIX}u1 $V1/64 <-> $H2 ${PREFIX}u2 $V2/64, default offloads"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$V1/64" "$H2" "${PREFIX}u2" "$V2/64"
ping_ok "$H1" "$V2" 2

ebpf_config() { # FILE UNDERLAY OVERLAY PEER
  write_config "$1" "$2" datapath='"ebpf"'
  add_network "$1" blue 42 "$TAP" "$3/24" "$4"
}
ebpf_config "$WORK/h1.toml" "$V1" "$O1" "$V2"
ebpf_config "$WORK/h2.toml" "$V2" "$O2" "$V1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
assert_eq "h1 TAP MTU (1500 - 70)" 1430 "$(link_mtu "$H1" "$TAP")"

# tc_progs NS DEV DIRECTION - how many BPF programs the kernel has on DEV's TCX DIRECTION
tc_progs() {
  local ids
  ids=$(ns_exec "$1" python3 "$LIB_DIR/tcx_query.py" "$2" "$3") || die "cannot query the TCX programs of $2 in $1"
  grep -c . <<<"$ids" || true
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # utime + stime of PID, in ticks

log "the fast path is loaded on the IPv6 underlay"
for h in 1 2; do
  t=$(scrape "$PREFIX-h$h" http://127.0.0.1:9477/metrics)
  assert_eq "h$h overlayd_datapath_info{datapath=\"ebpf\"}" 1 "$(metric "$t" 'overlayd_datapath_info{datapath="ebpf",network="blue"}')"
  assert_eq "h$h: programs on the TAP's TC egress" 1 "$(tc_progs "$PREFIX-h$h" "$TAP" egress)"
  assert_eq "h$h: programs on the underlay's TC ingress" 1 "$(tc_progs "$PREFIX-h$h" "${PREFIX}u$h" ingress)"
done

wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3
ping_ok "$H2" "$O1" 3
sleep 1.5 # keepalives (every second) tell each side the other takes zero checksums; the MACs are mirrored

log "a 100 MB transfer over the IPv6 underlay takes the fast path"
make_random_file "$WORK/payload" 100
capture_start wire "$H1" "${PREFIX}u1" -s 200 ip6 and udp port 4789
before1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
before2=$(scrape "$H2" http://127.0.0.1:9477/metrics)
c1=$(cpu_ticks "${_DAEMON_PID[d1]}") c2=$(cpu_ticks "${_DAEMON_PID[d2]}")
t0=$(date +%s%N)
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlay h1->h2 over IPv6 (100 MB)"
t1=$(date +%s%N)
c1=$(($(cpu_ticks "${_DAEMON_PID[d1]}") - c1)) c2=$(($(cpu_ticks "${_DAEMON_PID[d2]}") - c2))
after1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
after2=$(scrape "$H2" http://127.0.0.1:9477/metrics)
capture_stop wire
d() { echo $(($(metric "$2" "$3") - $(metric "$1" "$3"))); } # d BEFORE AFTER SERIES
tap_rx=$(d "$before1" "$after1" 'overlayd_tap_frames_total{direction="rx",network="blue"}')
fast_tx=$(d "$before1" "$after1" 'overlayd_fastpath_frames_total{direction="tap_rx",network="blue"}')
tun_rx=$(d "$before2" "$after2" "overlayd_tunnel_packets_total{direction=\"rx\",network=\"blue\",peer=\"$V1\"}")
fast_rx=$(d "$before2" "$after2" 'overlayd_fastpath_frames_total{direction="tunnel_rx",network="blue"}')
info "h1: TAP rx frames +$tap_rx, of which the fast path +$fast_tx; h2: tunnel rx +$tun_rx, fast path +$fast_rx"
assert_ge "h1 TAP rx frames during the transfer" 1000 "$tap_rx"
assert_ge "h1 fast-path frames, x10 (>= 9 x TAP rx frames)" $((9 * tap_rx)) $((10 * fast_tx))
assert_ge "h2 fast-path tunnel packets, x10 (>= 9 x tunnel rx packets)" $((9 * tun_rx)) $((10 * fast_rx))

log "counters: what h1 sent to h2 is what h2 received from h1"
ms=$(((t1 - t0) / 1000000))
slack=$((ms / 1000 + 3)) # keepalives (one a second) that crossed between the two scrapes
tx_p=$(d "$before1" "$after1" "overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"$V2\"}")
tx_b=$(d "$before1" "$after1" "overlayd_tunnel_bytes_total{direction=\"tx\",network=\"blue\",peer=\"$V2\"}")
rx_b=$(d "$before2" "$after2" "overlayd_tunnel_bytes_total{direction=\"rx\",network=\"blue\",peer=\"$V1\"}")
info "h1 tx $tx_p packets $tx_b bytes; h2 rx $tun_rx packets $rx_b bytes (slack $slack keepalives)"
dp=$((tx_p - tun_rx)) db=$((tx_b - rx_b))
((dp < 0)) && dp=$((-dp))
((db < 0)) && db=$((-db))
assert_ge "keepalive slack vs |h1 tx packets - h2 rx packets|" "$dp" "$slack"
assert_ge "keepalive bytes (68 each) vs |h1 tx bytes - h2 rx bytes|" "$db" $((68 * slack))
assert_ge "h1 tunnel tx bytes (the 100 MB and headers)" $((100 * 1024 * 1024)) "$tx_b"
assert_ge "h1 tunnel tx packets (one per segment of at most 1430 bytes)" $((100 * 1024 * 1024 / 1430)) "$tx_p"

hz=$(getconf CLK_TCK)
info "transfer: $ms ms at $TRANSFER_MBIT Mbit/s; daemon CPU: h1 $((c1 * 1000 / hz)) ms, h2 $((c2 * 1000 / hz)) ms"
assert_ge "transfer time vs 4 x h1 daemon CPU time (ms)" $((4 * c1 * 1000 / hz)) "$ms"
assert_ge "transfer time vs 4 x h2 daemon CPU time (ms)" $((4 * c2 * 1000 / hz)) "$ms"

log "outer UDP checksums on the wire (h1's underlay; a veth carries super-packets whole)"
fields=$(tshark -r "$WORK/wire.pcap" -Y "ipv6.src == $V1 && vxlan" -T fields -E separator='|' \
  -e frame.len -e ipv6.dst -e udp.checksum 2>/dev/null)
big=$(awk -F'|' '$1 > 1514' <<<"$fields" | wc -l)
big_zero=$(awk -F'|' '$1 > 1514 && $2 == "'"$V2"'" && $3 ~ /^0x0000/' <<<"$fields" | wc -l)
small=$(awk -F'|' '$1 <= 1514' <<<"$fields" | wc -l)
small_zero=$(awk -F'|' '$1 <= 1514 && $3 ~ /^0x0000/' <<<"$fields" | wc -l)
info "h1 sent $big super-packets and $small packets of at most one MTU"
assert_ge "super-packets h1 sent" 100 "$big"
assert_eq "super-packets to h2 with a zero UDP checksum (of $big)" "$big" "$big_zero"
assert_ge "packets of at most one MTU h1 sent (acknowledgements are h2's; keepalives, pings)" 1 "$small"
assert_eq "packets of at most one MTU with a zero UDP checksum" 0 "$small_zero"

stop_daemon d1
stop_daemon d2
log "PASS: eBPF fast path over an IPv6 underlay"
