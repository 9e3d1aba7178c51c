#!/usr/bin/env bash
# 89-loop.sh - four daemons in a full mesh, and a Linux bridge outside overlayd joining two of
# their TAPs: a layer-2 loop. It must not turn into a storm, and the daemons must say so.
#
#   h1..h4 on an underlay bridge (192.0.2.1-4); overlay vni 42 full mesh; h3, h4 have
#   198.51.100.3/.4 on their TAPs. h1's TAP and h2's TAP are each put in a Linux bridge, and
#   the two bridges are joined by a veth pair: whatever h1 writes to its TAP comes back out of
#   h2's TAP as a local frame, and vice versa (no STP).
#
# Every daemon runs with bum_pps_limit = 100. Two phases, one mechanism each:
#   A. move damping off (mac_move_limit = 0) at the two daemons at the loop: storm control
#      alone must bound the loop, which otherwise runs at line rate (tens of thousands of
#      packets a second); in practice the looping frame is soon dropped and the loop dies out;
#   B. a reload turns damping on there (mac_move_limit = 1, applied in place), and a second
#      broadcast moves the looping MAC again: it is pinned, logged, and its frames from the
#      other ports are dropped.
#
# Proves:
#   - A: one ARP broadcast from h3 enters the loop, and the tunnel packets h3 receives over a
#     measured window of ~4 s stay under what the storm limit allows (2 looping peers x 100/s,
#     plus slack): fewer than 300/s; the excess is counted as storm_limit at the loop, and no
#     MAC is pinned;
#   - the daemons at the loop log it (MACs moving at a loop rate, or a MAC pinned);
#   - B: the reload is applied in place (updated=["blue"]); after the second broadcast the
#     looping MAC is pinned (fdb event "pinned", logged "MAC moved too often"), mac_pinned
#     drops are counted, and the rate at h3 stays bounded;
#   - all four daemons are still running and stop cleanly.
# Prints the tunnel packets and MAC moves seen (not asserted beyond the above).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v jq >/dev/null || die "jq not installed"

SW=$PREFIX-sw
TAP=${PREFIX}tap
U=(- 192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.4)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3" "$PREFIX-h4")

bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24" "${H[4]}" "${U[4]}/24"
ping_ok "${H[1]}" "${U[4]}" 1

for i in 1 2 3 4; do
  peers=$(mesh_peers "$i" "${U[@]:1}")
  addr=-
  ((i >= 3)) && addr=198.51.100.$i/24
  write_config "$WORK/h$i.toml" "${U[i]}"
  add_network "$WORK/h$i.toml" blue 42 "$TAP" "$addr" "$peers" bum_pps_limit=100 mac_move_limit=0
  start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"
done
for i in 1 2 3 4; do wait_ready "d$i"; done
wait_ping "${H[3]}" 198.51.100.4
ping_ok "${H[3]}" 198.51.100.4 2

log "close the loop: bridge h1's TAP and h2's TAP together"
add_veth "${H[1]}" "${PREFIX}l1" - "${H[2]}" "${PREFIX}l2" -
add_bridge "${H[1]}" "${PREFIX}lb" "$TAP" "${PREFIX}l1"
add_bridge "${H[2]}" "${PREFIX}lb" "$TAP" "${PREFIX}l2"

stats() { "$OVERLAYD_BIN" stats --config "$WORK/h$1.toml" --json; }
rx_total() { stats "$1" | jq '[.. | objects | select(has("rx_packets") and has("peer")) | .rx_packets] | add // 0'; }
event() { stats "$1" | jq --arg e "$2" '[.. | objects | select(has("fdb_events")) | .fdb_events[$e]] | add // 0'; }
drops() { stats "$1" | jq --arg r "$2" '[.. | objects | select(has($r)) | .[$r]] | add // 0'; }
# at_loop REASON - drops for REASON at the two daemons at the loop
at_loop() { echo $(($(drops 1 "$1") + $(drops 2 "$1"))); }
# bounded_rate PHASE - the tunnel packets h3 receives over ~4 s stay under 300/s. The window
# runs from before the first read to after the second: a slow `overlayd stats` can only make
# the rate look lower, and a storm is two orders of magnitude above the bound.
bounded_rate() {
  local t0 t1 r0 r1 ms n rate
  t0=$(date +%s%N) r0=$(rx_total 3)
  sleep 4
  r1=$(rx_total 3) t1=$(date +%s%N)
  ms=$(((t1 - t0) / 1000000)) n=$((r1 - r0))
  rate=$((n * 1000 / ms))
  info "$1: tunnel packets received by h3 in a $ms ms window: $n ($rate/s)"
  ((rate < 300)) || die "$1: the loop is storming: h3 received $n tunnel packets in $ms ms ($rate/s)"
  ok "$1: no storm: $rate tunnel packets/s at h3 (storm limit 100/s per port, 2 looping peers)"
}
# broadcast - h3 asks for an address nobody owns: one ARP broadcast into the loop
broadcast() {
  ns_exec "${H[3]}" ip neigh flush dev "$TAP"
  ns_exec "${H[3]}" arping -c 1 -w 1 -I "$TAP" 198.51.100.99 >/dev/null 2>&1 || true
}

log "A: storm control alone (no move damping at the loop)"
broadcast
sleep 2
bounded_rate A
storm_cut() { (($(at_loop storm_limit) >= 1)); }
wait_until -t 10 storm_cut || die "A: no storm_limit drop at the loop"
ok "A: storm_limit drops at the loop: $(at_loop storm_limit)"
assert_eq "A: MACs pinned at the loop (damping off)" 0 "$(($(event 1 pinned) + $(event 2 pinned)))"
logged=0
for i in 1 2; do
  if line=$(grep -E "probably a loop" "${_DAEMON_LOG[d$i]}" | head -1); [[ -n $line ]]; then
    logged=1
    info "h$i log: ${line#*WARN }"
  fi
done
((logged)) || die "neither daemon at the loop logged MACs moving at a loop rate"
ok "A: the loop is logged"

log "B: a reload turns move damping on at the loop; a second broadcast"
for i in 1 2; do
  sed 's/^mac_move_limit = 0$/mac_move_limit = 1/' "$WORK/h$i.toml" >"$WORK/h$i.toml.new"
  mv "$WORK/h$i.toml.new" "$WORK/h$i.toml"
  kill -HUP "${_DAEMON_PID[d$i]}"
done
for i in 1 2; do
  wait_until -t 10 grep -q 'reload applied.*updated=\["blue"\]' "${_DAEMON_LOG[d$i]}" || die "d$i did not apply the reload in place"
done
ok "B: both reloads applied in place"
broadcast
pinned_at_loop() { (($(event 1 pinned) + $(event 2 pinned) >= 1)); }
wait_until -t 10 pinned_at_loop || die "B: no MAC pinned at the loop after the second broadcast"
ok "B: the looping MAC is pinned ($(($(event 1 pinned) + $(event 2 pinned))) pins at the loop)"
wait_until -t 10 grep -q "MAC moved too often" "${_DAEMON_LOG[d1]}" "${_DAEMON_LOG[d2]}" || die "B: no pin logged"
info "$(grep -h "MAC moved too often" "${_DAEMON_LOG[d1]}" "${_DAEMON_LOG[d2]}" | head -1 | sed 's/^.*WARN //')"
mac_pinned_drops() { (($(at_loop mac_pinned) >= 1)); }
wait_until -t 10 mac_pinned_drops || die "B: no mac_pinned drop at the loop"
ok "B: mac_pinned drops at the loop: $(at_loop mac_pinned)"
bounded_rate B
for i in 1 2 3 4; do info "h$i: MAC moves $(event "$i" moved), pinned $(event "$i" pinned); storm_limit $(drops "$i" storm_limit), mac_pinned $(drops "$i" mac_pinned)"; done
for i in 1 2 3 4; do stop_daemon "d$i"; done
log "PASS: loop"
