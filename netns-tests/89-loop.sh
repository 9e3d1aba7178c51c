#!/usr/bin/env bash
# 89-loop.sh - four daemons in a full mesh, and a Linux bridge outside overlayd joining two of
# their TAPs: a layer-2 loop. It must not turn into a storm, and the daemons must say so.
#
#   h1..h4 on an underlay bridge (192.0.2.1-4); overlay vni 42 full mesh; h3, h4 have
#   198.51.100.3/.4 on their TAPs. h1's TAP and h2's TAP are each put in a Linux bridge, and
#   the two bridges are joined by a veth pair: whatever h1 writes to its TAP comes back out of
#   h2's TAP as a local frame, and vice versa (no STP).
#
# Every daemon runs with bum_pps_limit = 100. Without it the loop storms at line rate: once
# the looping MAC has settled on the loop's ports (h2: on its TAP, h1: behind peer h2) no
# daemon sees it move any more, so damping alone cannot break a loop; storm control bounds it.
# The two daemons at the loop run with mac_move_limit = 1, so the looping MAC's first moves
# pin it whichever mechanism cuts the loop first.
#
# Proves:
#   - one ARP broadcast from h3 enters the loop, and the tunnel packets h3 receives in a ~4 s
#     window after that stay under what the storm limit allows (2 looping peers x 100/s, plus
#     slack): fewer than 300/s, where the unlimited loop gives tens of thousands;
#   - the excess is dropped and counted at the loop: as storm_limit (over the limit), or as
#     mac_pinned (the looping MAC pinned by move damping);
#   - the daemons at the loop log it (MAC pinned for moving too often, or MACs moving at a loop
#     rate) and count the pins (fdb event "pinned");
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
  peers=""
  for j in 1 2 3 4; do ((i == j)) || peers+=" ${U[j]}"; done
  addr=-
  ((i >= 3)) && addr=198.51.100.$i/24
  write_config "$WORK/h$i.toml" "${U[i]}"
  damping=()
  ((i <= 2)) && damping=(mac_move_limit=1)
  add_network "$WORK/h$i.toml" blue 42 "$TAP" "$addr" "$peers" bum_pps_limit=100 "${damping[@]}"
  start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"
done
for i in 1 2 3 4; do wait_ready "d$i"; done
wait_ping "${H[3]}" 198.51.100.4
ping_ok "${H[3]}" 198.51.100.4 2

log "close the loop: bridge h1's TAP and h2's TAP together"
add_veth "${H[1]}" "${PREFIX}l1" - "${H[2]}" "${PREFIX}l2" -
add_bridge "${H[1]}" "${PREFIX}lb" "$TAP" "${PREFIX}l1"
add_bridge "${H[2]}" "${PREFIX}lb" "$TAP" "${PREFIX}l2"

rx_total() { "$OVERLAYD_BIN" stats --config "$WORK/h$1.toml" --json | jq '[.. | objects | select(has("rx_packets") and has("peer")) | .rx_packets] | add // 0'; }
event() { "$OVERLAYD_BIN" stats --config "$WORK/h$1.toml" --json | jq --arg e "$2" '[.. | objects | select(has("fdb_events")) | .fdb_events[$e]] | add // 0'; }

log "one broadcast into the loop: h3 asks for an address nobody owns"
ns_exec "${H[3]}" ip neigh flush dev "$TAP"
ns_exec "${H[3]}" arping -c 1 -w 1 -I "$TAP" 198.51.100.99 >/dev/null 2>&1 || true
sleep 4
# the window runs from before the first read to after the second: a slow `overlayd stats` can
# only make the rate look lower, and a storm is two orders of magnitude above the bound
t0=$(date +%s%N)
r0=$(rx_total 3)
sleep 4
r1=$(rx_total 3)
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000)) n=$((r1 - r0))
rate=$((n * 1000 / ms))
info "tunnel packets received by h3 in the $ms ms window after the loop settled: $n ($rate/s)"
((rate < 300)) || die "the loop is storming: h3 received $n tunnel packets in $ms ms ($rate/s)"
ok "no storm: $rate tunnel packets/s at h3 (storm limit 100/s per port, 2 looping peers)"
cut=0
for i in 1 2; do
  for reason in storm_limit mac_pinned; do
    d=$("$OVERLAYD_BIN" stats --config "$WORK/h$i.toml" --json | jq --arg r "$reason" '[.. | objects | select(has($r)) | .[$r]] | add // 0')
    info "h$i: $reason drops $d"
    cut=$((cut + d))
  done
done
assert_ge "storm_limit + mac_pinned drops at the loop" 1 "$cut"
moved=0 pinned=0
for i in 1 2 3 4; do
  m=$(event "$i" moved) p=$(event "$i" pinned)
  info "h$i: MAC moves $m, MACs pinned $p"
  moved=$((moved + m)) pinned=$((pinned + p))
done
assert_ge "MACs pinned across the mesh" 1 "$pinned"
logged=0
for i in 1 2; do
  if grep -Eq "MAC moved too often|probably a loop" "${_DAEMON_LOG[d$i]}"; then
    logged=1
    info "h$i log: $(grep -E "MAC moved too often|probably a loop" "${_DAEMON_LOG[d$i]}" | head -1 | sed 's/^.*WARN //')"
  fi
done
((logged)) || die "neither daemon at the loop logged it"
ok "the loop is logged"
for i in 1 2 3 4; do stop_daemon "d$i"; done
log "PASS: loop"
