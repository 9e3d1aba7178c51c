#!/usr/bin/env bash
# 42-udp-gso-on-the-wire.sh - UDP GSO on the wire, and an underlay that cannot checksum: super-frames
# still leave, one datagram per segment.
#
#   netns h1                                        netns h2
#   <P>u1 192.0.2.1/24 <====== veth underlay =====> <P>u2 192.0.2.2/24
#   overlayd, tap <P>t 198.51.100.1/24              overlayd, tap <P>t 198.51.100.2/24
#
# Both daemons on the userspace data path (whatever OVERLAYD_DATAPATH says: the lab sets
# node.datapath itself), offloads on (the default). Proves:
#   - with the underlay's defaults, h1's daemon sends the segments of its TAP's TSO
#     super-frames with UDP GSO: the veth carries super-datagrams (h2's underlay receives
#     packets larger than the link MTU on average) and 20 MB arrive byte-identical;
#   - once h1's underlay cannot checksum (`ethtool -K u1 tx off`), h1's daemon keeps reading
#     super-frames from its TAP and their segments reach h2 one datagram each (h2's underlay
#     receives no packet larger than the link allows), 50 MB byte-identical, no send counted
#     as failed. Kernels before 6.11 refuse UDP GSO there (EIO): the daemon then warns once
#     and sends one datagram per segment itself; later ones take GSO and segment in software.
#     Either way the daemon warns at most once (the loopback tests of src/io/udp.rs provoke
#     a refusal on every kernel).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v ethtool >/dev/null || die "ethtool not installed"
unset OVERLAYD__NODE__DATAPATH

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
TAP=${PREFIX}t
REFUSED='the kernel refused UDP GSO'

log "underlay $U1 <-> $U2 (veth, offloads left on)"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 2

log "overlayd on both hosts, userspace data path, offload on (the default)"
for i in 1 2; do
  j=$((3 - i))
  write_config "$WORK/h$i.toml" "192.0.2.$i" datapath='"userspace"'
  add_network "$WORK/h$i.toml" blue 42 "$TAP" "198.51.100.$i/24" "192.0.2.$j"
  start_daemon "$PREFIX-h$i" "d$i" "$WORK/h$i.toml"
done
wait_ready d1
wait_ready d2
ns_exec "$H1" ethtool -k "$TAP" | grep -q '^tcp-segmentation-offload: on' ||
  die "TAP $TAP in $H1 does not offer TSO: $(ns_exec "$H1" ethtool -k "$TAP" | grep segmentation)"
wait_ping "$H1" 198.51.100.2
# GSO goes to peers known to run overlayd: wait until h1's daemon knows (keepalives)
wait_until -t 15 bash -c "'$OVERLAYD_BIN' peers --config '$WORK/h1.toml' --json | jq -e '[.. | objects | select(has(\"gets_gso\")) | .gets_gso] | any'" >/dev/null ||
  die "h1's daemon never gave its peer UDP GSO: $("$OVERLAYD_BIN" peers --config "$WORK/h1.toml" --json)"

# link_stats NS DEV DIR - "packets bytes" of DEV in direction DIR
link_stats() { ip -n "$1" -j -s link show dev "$2" | jq -r ".[0].stats64.$3 | \"\(.packets) \(.bytes)\""; }
# an ordinary frame on the underlay is at most its MTU (1500) plus the Ethernet header
MAX_FRAME=1514
make_random_file "$WORK/big" 50
head -c 20000000 "$WORK/big" >"$WORK/small"

log "20 MB h1 -> h2 with UDP GSO"
read -r up0 ub0 < <(link_stats "$H2" "${PREFIX}u2" rx)
tcp_transfer "$H1" "$H2" 198.51.100.2 5001 "$WORK/small" "20 MB h1->h2, GSO"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
read -r up1 ub1 < <(link_stats "$H2" "${PREFIX}u2" rx)
avg=$(((ub1 - ub0) / (up1 - up0)))
info "h2's underlay received $((up1 - up0)) packets, $avg bytes on average"
assert_ge "average packet on h2's underlay (bytes; > $MAX_FRAME: GSO super-datagrams)" $((MAX_FRAME + 1)) "$avg"
assert_eq "h1's daemon logged no GSO refusal" 0 "$(grep -c "$REFUSED" "$WORK/d1.log" || true)"

log "h1's underlay stops checksumming"
checksum_offload_off "$H1" "${PREFIX}u1"
read -r up0 ub0 < <(link_stats "$H2" "${PREFIX}u2" rx)
read -r tp0 tb0 < <(link_stats "$H1" "$TAP" tx)
tcp_transfer "$H1" "$H2" 198.51.100.2 5002 "$WORK/big" "50 MB h1->h2, underlay without checksum offload"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
read -r up1 ub1 < <(link_stats "$H2" "${PREFIX}u2" rx)
read -r tp1 tb1 < <(link_stats "$H1" "$TAP" tx)
avg=$(((ub1 - ub0) / (up1 - up0))) tap_avg=$(((tb1 - tb0) / (tp1 - tp0)))
info "h1's daemon read $((tp1 - tp0)) frames from its TAP, $tap_avg bytes on average; h2's underlay received $((up1 - up0)) packets, $avg bytes on average"
assert_ge "average frame h1's daemon read from its TAP (bytes; > 1464: TSO super-frames)" 1465 "$tap_avg"
((avg <= MAX_FRAME)) || die "h2's underlay received $avg bytes per packet on average: GSO super-datagrams still sent"
ok "one datagram per segment: $avg bytes per packet on h2's underlay on average (<= $MAX_FRAME)"
refusals=$(grep -c "$REFUSED" "$WORK/d1.log" || true)
((refusals <= 1)) || die "h1's daemon warned $refusals times that the kernel refused GSO (once at most)"
if ((refusals == 1)); then
  ok "the kernel refused UDP GSO ($(uname -r)): h1's daemon warned once and sent one datagram per segment itself"
else
  ok "the kernel took UDP GSO without checksum offload ($(uname -r)) and segmented in software; no warning"
fi
drop_totals d1
assert_eq "h1's daemon counted no send_failed drops" 0 "$(drop_count d1 blue send_failed)"
stop_daemon d1
stop_daemon d2
log "PASS: GSO super-datagrams on a checksumming underlay, one datagram per segment on one that cannot, every byte delivered"
