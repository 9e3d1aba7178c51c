#!/usr/bin/env bash
# 41-kernel-vxlan-default-offloads.sh - TCP both ways between overlayd and a kernel vxlan peer
# over a veth underlay left as it comes (checksum offload, TSO, GSO all on).
#
#   netns h1                                         netns h2
#   <P>u1 192.0.2.1/24 <====== veth underlay ======> <P>u2 192.0.2.2/24   (default offloads)
#   overlayd: vni 42, port 4789,                     kernel: <P>vx (vxlan id 42 dstport 4789
#     tap <P>tap 198.51.100.1/24                       remote 192.0.2.1)
#
# Phases, each with a fresh kernel vxlan device:
#   plain:       198.51.100.2/24 on the vxlan device itself
#   bridge:      the vxlan device in bridge <P>br, 198.51.100.2/24 on the bridge
#   offload-off: the same, with overlayd restarted with [node] offload = false
# Each phase proves:
#   - a 20 MB TCP transfer (random data) arrives byte-identical (sha256) in each direction;
#   - iperf3 moves data for 3 s in each direction (rates printed, never asserted);
#   - overlayd completed the kernel's partial checksums / whole TSO bursts
#     (overlayd_partial_checksums_total grew) and dropped nothing;
#   - `overlayd peers` shows the kernel peer as not speaking overlayd, but getting UDP GSO: it
#     sent offloaded packets itself, so its kernel takes ours.
#
# Why this needs its own lab: on such a link the kernel hands overlayd inner TCP segments with
# unfinished checksums and 64 KiB tunnel GSO packets, and a packet socket reader on the other
# side would see overlayd's unfinished UDP checksums and GSO super-datagrams. Turning offloads
# off hides all of it; users do not.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
for _t in iperf3 jq curl; do command -v "$_t" >/dev/null || die "missing tool: $_t (see .ci/run)"; done

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap VX=${PREFIX}vx BR=${PREFIX}br
URL=http://127.0.0.1:9477/metrics

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24, offloads as they come"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
for d in "$H1 ${PREFIX}u1" "$H2 ${PREFIX}u2"; do
  # shellcheck disable=SC2086 # "NS DEV"
  info "$d: $(ns_exec ${d% *} ethtool -k ${d#* } | grep -E '^(tx-checksumming|tcp-segmentation-offload|generic-segmentation-offload):' | tr -s ' \n' ' ')"
done
ping_ok "$H1" "$U2" 2

log "h1: overlayd (vni 42, port 4789, tap $TAP $O1/24)"
write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$U2" vxlan_port=4789
start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1
make_random_file "$WORK/payload" 20

PARTIAL=0   # overlayd_partial_checksums_total after the last phase (a restarted daemon: 0)
partial_total() { metric "$(scrape "$H1" "$URL")" 'overlayd_partial_checksums_total{network="blue"}'; }

# iperf_run FROM_NS TO_NS TO_ADDR PORT LABEL - 3 s of iperf3; fail unless the receiver got bytes
iperf_run() {
  local from=$1 to=$2 addr=$3 port=$4 label=$5 out got
  start_bg "$to" "$WORK/iperf3-srv-$port.log" iperf3 -s -1 -B "$addr" -p "$port"
  wait_until -t 10 _tcp_listening "$to" "$port" || die "$label: iperf3 server did not start"
  out=$(ns_exec "$from" timeout 30 iperf3 -c "$addr" -p "$port" -t 3 --connect-timeout 5000 -J) ||
    die "$label: iperf3 failed: $(jq -r '.error // empty' <<<"$out" 2>/dev/null)"
  got=$(jq -r '.end.sum_received.bytes' <<<"$out")
  ((got > 0)) || die "$label: iperf3 moved no bytes"
  ok "$label: iperf3 moved $got bytes in 3 s"
  info "rate $label: $(jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | floor / 100' <<<"$out") Gbit/s, retransmits $(jq -r '.end.sum_sent.retransmits' <<<"$out") (not asserted)"
}

# phase NAME - the kernel side is set up; prove TCP both ways
phase() {
  local name=$1 before=$PARTIAL after
  wait_ping "$H1" "$O2" 20
  ping_ok "$H1" "$O2" 3
  ping_ok "$H2" "$O1" 3
  tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "$name: overlayd->kernel, 20 MB"
  tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/payload" "$name: kernel->overlayd, 20 MB"
  iperf_run "$H1" "$H2" "$O2" 5201 "$name: overlayd->kernel"
  iperf_run "$H2" "$H1" "$O1" 5202 "$name: kernel->overlayd"
  after=$(partial_total)
  PARTIAL=$after
  ((after > before)) || die "$name: overlayd_partial_checksums_total did not grow ($before -> $after): the kernel's offloads were not exercised"
  ok "$name: overlayd completed $((after - before)) partial checksums / TSO bursts from the kernel"
}

log "plain: kernel vxlan $VX with $O2/24 on the device itself"
add_native_vxlan "$H2" "$VX" 42 "$U2" "$U1" "${PREFIX}u2" 4789
ip -n "$H2" addr add "$O2/24" dev "$VX"
ip -n "$H2" link set "$VX" up
phase plain

log "bridge: kernel vxlan $VX in bridge $BR with $O2/24 on the bridge"
ip -n "$H2" link del "$VX"
add_native_vxlan "$H2" "$VX" 42 "$U2" "$U1" "${PREFIX}u2" 4789
add_bridge "$H2" "$BR" "$VX"
ip -n "$H2" addr add "$O2/24" dev "$BR"
# $O2 now answers from the bridge's MAC: forget the plain phase's neighbour entry
ip -n "$H1" neigh flush dev "$TAP"
phase bridge

log "overlayd's view of the kernel peer, and its drops"
peer=$(ns_exec "$H1" "$OVERLAYD_BIN" peers --config "$WORK/h1.toml" --json | jq -c '.[0].peers[0] | [.speaks_overlayd, .gets_gso]')
assert_eq "the kernel peer: speaks overlayd, gets UDP GSO (it sent offloaded packets itself)" '[false,true]' "$peer"
# drops charged to no network ("-") include datagrams truncated at receive
drop_totals d1
for scope in blue -; do
  for r in mtu_exceeded malformed bad_offload; do
    assert_eq "overlayd drops ($scope, $r)" 0 "$(drop_count d1 "$scope" "$r")"
  done
done
stop_daemon d1

log "overlayd with [node] offload = false (plain TAP, no GRO): the kernel's bursts still arrive"
sed -i 's/^underlay = .*/&\noffload = false/' "$WORK/h1.toml"
start_daemon "$H1" d2 "$WORK/h1.toml"
wait_ready d2
PARTIAL=0
ip -n "$H1" neigh flush dev "$TAP"
phase offload-off
drop_totals d2
for scope in blue -; do
  assert_eq "overlayd drops ($scope, mtu_exceeded)" 0 "$(drop_count d2 "$scope" mtu_exceeded)"
done
log "PASS: TCP both ways with a kernel vxlan peer on an underlay with default offloads"
