#!/usr/bin/env bash
# 76-malformed-tunnel.sh - malformed and foreign GRE and VXLAN packets sent at the daemon are
# dropped, each counted under its own reason, while good traffic keeps flowing.
#
#   netns h1                                       netns h2
#   <P>u1 192.0.2.1/24 <===== veth underlay =====> <P>u2 192.0.2.2/24
#   overlayd: blue  GRE key 42  tap <P>tb 198.51.100.1/24   overlayd: the same networks
#             red   VXLAN 43    tap <P>tr 203.0.113.1/24    (.2 addresses); scapy sends the
#             green GRE keyless tap <P>tg (phase 2 only)    bad packets from h2 (192.0.2.2,
#                                                           a configured peer) unless noted
#
# Phase 1 sends, 3 times each, while h1 pings h2 over blue and red:
#   GRE version 1 -> gre_version; routing bit -> gre_routing; protocol 0x0800 -> gre_protocol;
#   keyless GRE (no keyless network) -> gre_key_missing (charged to blue, the sender's GRE
#   network); a wrong GRE checksum -> gre_checksum (blue); a 2-byte GRE header -> malformed;
#   VXLAN without the I flag -> bad_flags; a 4-byte VXLAN header -> malformed; VXLAN VNI 999
#   -> unknown_vni; VXLAN VNI 43 from 192.0.2.99 (not a peer) -> unknown_peer (red).
# Phase 2 (h1 restarted with a keyless GRE network green added): GRE with key 99 ->
#   gre_key_unexpected (green).
# Proves each count exactly (overlayd_drops_total from h1's /metrics, and the same counts in
# the "drop totals" log line on SIGUSR1), and that no ping was lost meanwhile.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
METRICS=http://127.0.0.1:9477/metrics

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 2

# config FILE UNDERLAY PEER N [green] - blue (GRE key 42), red (VXLAN 43), optionally green
config() {
  write_config "$1" "$2"
  add_network "$1" blue 42 "${PREFIX}tb" "198.51.100.$4/24" "$3" encap='"gre"'
  add_network "$1" red 43 "${PREFIX}tr" "203.0.113.$4/24" "$3"
  [[ ${5:-} != green ]] || add_network "$1" green 7 "${PREFIX}tg" - "$3" encap='"gre"' key=false
}
config "$WORK/h1.toml" "$U1" "$U2" 1
config "$WORK/h2.toml" "$U2" "$U1" 2
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
wait_ping "$H1" 198.51.100.2
wait_ping "$H1" 203.0.113.2

# scapy_send PYTHON_EXPR - send the packets of a scapy expression (a list) at layer 3 from h2
scapy_send() {
  ns_exec "$H2" /usr/bin/python3 -c "
import logging, sys
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import *
from scapy.layers.l2 import GRE
pkts = $1
send(pkts, verbose=False)" || die "scapy could not send: $1"
}

# drops NETWORK REASON - overlayd_drops_total of h1's daemon
drops() { metric "$(scrape "$H1" "$METRICS")" "overlayd_drops_total{network=\"$1\",reason=\"$2\"}"; }

# network:reason:count (malformed: the short GRE and the short VXLAN header)
REASONS=("-:gre_version:3" "-:gre_routing:3" "-:gre_protocol:3" "blue:gre_key_missing:3" "blue:gre_checksum:3"
  "-:malformed:6" "-:bad_flags:3" "-:unknown_vni:3" "red:unknown_peer:3")
declare -A before
for nrc in "${REASONS[@]}"; do IFS=: read -r net reason _ <<<"$nrc"; before[$net:$reason]=$(drops "$net" "$reason"); done

log "phase 1: bad packets at h1 while it pings h2 over blue (GRE) and red (VXLAN)"
ping_start blue "$H1" 198.51.100.2 60 -i 0.05
ping_start red "$H1" 203.0.113.2 60 -i 0.05
INNER="Ether(src='02:00:00:00:00:99', dst='ff:ff:ff:ff:ff:ff')/ARP(psrc='198.51.100.99', pdst='198.51.100.1')"
OUT="IP(src='$U2', dst='$U1')"
RAWGRE="IP(src='$U2', dst='$U1', proto=47)"   # hand-made GRE headers: scapy cannot build them
scapy_send "[
  $RAWGRE/Raw(bytes.fromhex('20016558 0000002a'))/$INNER,
  $RAWGRE/Raw(bytes.fromhex('60006558 0000002a'))/$INNER,
  $OUT/GRE(key_present=1, key=42, proto=0x0800)/IP(dst='198.51.100.1')/ICMP(),
  $OUT/GRE(proto=0x6558)/$INNER,
  $OUT/GRE(chksum_present=1, chksum=0x1234, key_present=1, key=42, proto=0x6558)/$INNER,
  $RAWGRE/Raw(b'\x20\x00'),
  $OUT/UDP(sport=40000, dport=4789)/Raw(bytes.fromhex('00000000 00002b00'))/$INNER,
  $OUT/UDP(sport=40000, dport=4789)/Raw(bytes.fromhex('08000000')),
  $OUT/UDP(sport=40000, dport=4789)/Raw(bytes.fromhex('08000000 0003e700'))/$INNER,
  IP(src='192.0.2.99', dst='$U1')/UDP(sport=40000, dport=4789)/Raw(bytes.fromhex('08000000 00002b00'))/$INNER,
] * 3"
# every one of requests 1..60 over blue (GRE) and red (VXLAN) answered during the bad packets
ping_finish blue
ping_finish red

# every reason reaches its count before SIGUSR1, so the logged totals are final when compared
# with /metrics (a reason that never gets there fails below, naming itself)
all_counted() {
  local text nrc net reason count n
  text=$(scrape "$H1" "$METRICS")
  for nrc in "${REASONS[@]}"; do
    IFS=: read -r net reason count <<<"$nrc"
    n=$(metric "$text" "overlayd_drops_total{network=\"$net\",reason=\"$reason\"}")
    ((n - ${before[$net:$reason]} >= count)) || return 1
  done
}
wait_until -t 10 all_counted || info "(not every reason reached its count within 10 s)"
drop_totals d1
for nrc in "${REASONS[@]}"; do
  IFS=: read -r net reason count <<<"$nrc"
  assert_eq "overlayd_drops_total{network=\"$net\",reason=\"$reason\"} grew by" "$count" $(($(drops "$net" "$reason") - before[$net:$reason]))
  assert_eq "drop totals log line, scope $net: $reason" "$(drops "$net" "$reason")" "$(drop_count d1 "$net" "$reason")"
done
stop_daemon d1

log "phase 2: h1 with a keyless GRE network too; GRE with a key no network uses"
config "$WORK/h1g.toml" "$U1" "$U2" 1 green
start_daemon "$H1" d1g "$WORK/h1g.toml"
wait_ready d1g
wait_ping "$H1" 198.51.100.2
scapy_send "[$OUT/GRE(key_present=1, key=99, proto=0x6558)/$INNER] * 3"
key_unexpected_counted() { (($(drops green gre_key_unexpected) >= 3)); }
wait_until -t 10 key_unexpected_counted || info "(gre_key_unexpected on green did not reach 3 within 10 s)"
assert_eq "overlayd_drops_total{network=\"green\",reason=\"gre_key_unexpected\"}" 3 "$(drops green gre_key_unexpected)"
assert_eq "and no other GRE drop on green" 0 $(($(drops green gre_key_missing) + $(drops green gre_checksum) + $(drops green unknown_peer)))
ping_ok "$H1" 198.51.100.2 3
ping_ok "$H1" 203.0.113.2 3
stop_daemon d1g
stop_daemon d2
log "PASS: every bad tunnel packet dropped under its own reason, good traffic unharmed"
