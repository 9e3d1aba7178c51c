#!/usr/bin/env bash
# 30-two-networks-isolated.sh - two networks in one daemon never leak into each other.
#
#   netns h1 <P>u1 192.0.2.1/24 <==== veth underlay ====> netns h2 <P>u2 192.0.2.2/24
#   each daemon: network A (vni 42, tap <P>ta) and network B (vni 43, tap <P>tb)
#
# Phase 1, distinct addresses on the TAPs (put there by the daemon):
#   A = 198.51.100.1/.2, B = 203.0.113.1/.2. Ping works in each network, both ways; captured on
#   all four TAPs for the whole phase: not one frame of network A (A's TAP MACs, 198.51.100.0/24)
#   on a B TAP, not one frame of B on an A TAP (and the B TAPs did carry B's pings).
# Phase 2, the SAME addresses in both networks: daemons restarted without TAP addresses; on each
#   host each TAP is bridged to a veth into an endpoint namespace (as a VM would be attached):
#     h1a 198.51.100.1 (02:0a:00:00:00:01) -- A -- h2a 198.51.100.2 (02:0a:00:00:00:02)
#     h1b 198.51.100.1 (02:0b:00:00:00:01) -- B -- h2b 198.51.100.2 (02:0b:00:00:00:02)
#   Ping works in each network both ways; each endpoint resolved its peer to the MAC of its own
#   network; no frame with an A endpoint MAC on a B TAP and none with a B MAC on an A TAP.
# Also: SIGTERM stops the daemons cleanly and removes both TAPs (between the phases).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
TA=${PREFIX}ta TB=${PREFIX}tb

log "underlay: $H1 $U1/24 <-> $H2 $U2/24"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 2
ping_ok "$H2" "$U1" 2

# start_pair ADDR_A1 ADDR_A2 ADDR_B1 ADDR_B2 - write configs (networks A and B) and start both
# daemons; ADDR is a CIDR for the TAP or "-"
start_pair() {
  write_config "$WORK/h1.toml" "$U1"
  add_network "$WORK/h1.toml" A 42 "$TA" "$1" "$U2"
  add_network "$WORK/h1.toml" B 43 "$TB" "$3" "$U2"
  write_config "$WORK/h2.toml" "$U2"
  add_network "$WORK/h2.toml" A 42 "$TA" "$2" "$U1"
  add_network "$WORK/h2.toml" B 43 "$TB" "$4" "$U1"
  start_daemon "$H1" d1 "$WORK/h1.toml"
  start_daemon "$H2" d2 "$WORK/h2.toml"
  wait_ready d1
  wait_ready d2
}

# capture_taps PHASE - capture on the four TAPs: PHASE-{a,b}{1,2}
capture_taps() {
  capture_start "$1-a1" "$H1" "$TA"
  capture_start "$1-a2" "$H2" "$TA"
  capture_start "$1-b1" "$H1" "$TB"
  capture_start "$1-b2" "$H2" "$TB"
}

# assert_no_leak CAPTURE WHAT FILTER... - no frame of CAPTURE matches FILTER
assert_no_leak() {
  local cap=$1 what=$2 n; shift 2
  n=$(capture_count "$cap" "$@")
  ((n == 0)) || capture_show "$cap" "$@"
  assert_eq "$what" 0 "$n"
}

# ----------------------------------------------------------------------------- phase 1
log "phase 1: A = 198.51.100.0/24 on tap $TA, B = 203.0.113.0/24 on tap $TB"
start_pair 198.51.100.1/24 198.51.100.2/24 203.0.113.1/24 203.0.113.2/24
capture_taps p1
wait_ping "$H1" 198.51.100.2
ping_ok "$H1" 198.51.100.2 5
ping_ok "$H2" 198.51.100.1 5
wait_ping "$H1" 203.0.113.2
ping_ok "$H1" 203.0.113.2 5
ping_ok "$H2" 203.0.113.1 5
capture_stop p1-a1 p1-a2 p1-b1 p1-b2

MA1=$(link_mac "$H1" "$TA") MA2=$(link_mac "$H2" "$TA")
MB1=$(link_mac "$H1" "$TB") MB2=$(link_mac "$H2" "$TB")
for i in 1 2; do
  assert_ge "ICMP frames on h$i's A TAP (the capture works)" 10 "$(capture_count "p1-a$i" icmp)"
  assert_ge "ICMP frames on h$i's B TAP (the capture works)" 10 "$(capture_count "p1-b$i" icmp)"
  assert_no_leak "p1-b$i" "frames of network A on h$i's B TAP" \
    ether host "$MA1" or ether host "$MA2" or net 198.51.100.0/24
  assert_no_leak "p1-a$i" "frames of network B on h$i's A TAP" \
    ether host "$MB1" or ether host "$MB2" or net 203.0.113.0/24
done

log "restart the daemons for phase 2"
stop_daemon d1
stop_daemon d2
for t in "$TA" "$TB"; do
  link_exists "$H1" "$t" && die "TAP $t still exists in $H1 after the daemon stopped"
  link_exists "$H2" "$t" && die "TAP $t still exists in $H2 after the daemon stopped"
done
ok "TAPs removed on shutdown"

# ----------------------------------------------------------------------------- phase 2
log "phase 2: identical addresses 198.51.100.1/.2 in both networks, endpoints behind bridges"
start_pair - - - -
mtu=$(link_mtu "$H1" "$TA")
for i in 1 2; do
  h=$PREFIX-h$i
  for net in a b; do
    tap=${PREFIX}t$net ep=$PREFIX-h$i$net
    add_ns "$ep"
    add_veth "$h" "${PREFIX}p$net$i" - "$ep" "${PREFIX}e$net$i" "198.51.100.$i/24" "$mtu"
    ip -n "$ep" link set dev "${PREFIX}e$net$i" address "02:0$net:00:00:00:0$i"
    add_bridge "$h" "${PREFIX}br$net" "$tap" "${PREFIX}p$net$i"
  done
done
capture_taps p2
for net in a b; do
  wait_ping "$PREFIX-h1$net" 198.51.100.2
  ping_ok "$PREFIX-h1$net" 198.51.100.2 5
  ping_ok "$PREFIX-h2$net" 198.51.100.1 5
done
capture_stop p2-a1 p2-a2 p2-b1 p2-b2

for net in a b; do
  for i in 1 2; do
    j=$((3 - i))
    seen=$(ip -n "$PREFIX-h$i$net" neigh show 198.51.100.$j | awk '{ for (k = 1; k < NF; k++) if ($k == "lladdr") print $(k + 1) }')
    assert_eq "MAC of 198.51.100.$j as resolved in network ${net^^} on h$i" "02:0$net:00:00:00:0$j" "$seen"
  done
done
for i in 1 2; do
  assert_ge "ICMP frames on h$i's A TAP (the capture works)" 10 "$(capture_count "p2-a$i" icmp)"
  assert_ge "ICMP frames on h$i's B TAP (the capture works)" 10 "$(capture_count "p2-b$i" icmp)"
  assert_no_leak "p2-b$i" "frames of network A's endpoints on h$i's B TAP" \
    ether host 02:0a:00:00:00:01 or ether host 02:0a:00:00:00:02
  assert_no_leak "p2-a$i" "frames of network B's endpoints on h$i's A TAP" \
    ether host 02:0b:00:00:00:01 or ether host 02:0b:00:00:00:02
done
log "PASS: two networks, same addresses, no frame crosses"
