#!/usr/bin/env bash
# 10-two-hosts-vxlan.sh - two overlayd daemons carry one L2 network over VXLAN.
#
#   netns h1                                             netns h2
#   <P>u1 192.0.2.1/24  <======= veth underlay =======>  <P>u2 192.0.2.2/24
#   overlayd: vni 42, tap <P>tap 198.51.100.1/24  ....  overlayd: vni 42, tap <P>tap 198.51.100.2/24
#
# Proves:
#   - `overlayd check` accepts the configs; both daemons get ready (TAP up, sockets bound);
#   - the TAP MTU is the underlay MTU minus the VXLAN overhead (1500 - 50 = 1450);
#   - ping both ways over the overlay, every request answered;
#   - a DF ping that exactly fills the TAP MTU (payload MTU-28) passes both ways, a 1400-byte DF
#     ping too, and one byte more than the MTU is refused locally (the MTU is the real limit);
#   - no outer packet was fragmented on the underlay while doing so;
#   - a 20 MB TCP transfer (random data) arrives byte-identical (sha256) both ways;
#   - prints the transfer rate over the overlay and over the plain underlay (never asserted);
#   - both daemons stop cleanly on SIGTERM and remove their TAPs.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 2
ping_ok "$H2" "$U1" 2

log "overlay: one daemon per host, vni 42"
write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$U2"
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$TAP" "$O2/24" "$U1"
assert_ok "overlayd check accepts h1.toml" "$OVERLAYD_BIN" check --config "$WORK/h1.toml"
assert_ok "overlayd check accepts h2.toml" "$OVERLAYD_BIN" check --config "$WORK/h2.toml"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

mtu=$(link_mtu "$H1" "$TAP")
assert_eq "TAP MTU in h1 (underlay 1500 - 50)" 1450 "$mtu"
assert_eq "TAP MTU in h2" "$mtu" "$(link_mtu "$H2" "$TAP")"

log "ping over the overlay"
wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 5
ping_ok "$H2" "$O1" 5

log "MTU: DF pings (TAP MTU $mtu)"
frag0_h1=$(snmp_counter "$H1" Ip FragCreates)
frag0_h2=$(snmp_counter "$H2" Ip FragCreates)
ping_ok "$H1" "$O2" 3 -M "do" -s $((mtu - 28))
ping_ok "$H2" "$O1" 3 -M "do" -s $((mtu - 28))
ping_ok "$H1" "$O2" 3 -M "do" -s 1400
ping_ok "$H2" "$O1" 3 -M "do" -s 1400
assert_fails "DF ping of MTU+1 bytes is refused in h1" ns_exec "$H1" ping -n -c 1 -W 1 -M "do" -s $((mtu - 27)) "$O2"
assert_eq "underlay fragments created in h1 by the DF pings" 0 $(($(snmp_counter "$H1" Ip FragCreates) - frag0_h1))
assert_eq "underlay fragments created in h2 by the DF pings" 0 $(($(snmp_counter "$H2" Ip FragCreates) - frag0_h2))

log "20 MB TCP transfer (random data), byte for byte"
make_random_file "$WORK/payload" 20
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlay h1->h2"
rate_overlay=$TRANSFER_MBIT
tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/payload" "overlay h2->h1"
tcp_transfer "$H1" "$H2" "$U2" 5003 "$WORK/payload" "underlay h1->h2"
rate_underlay=$TRANSFER_MBIT
info "rate h1->h2 over the overlay:        $rate_overlay Mbit/s (20 MB, socat; not asserted)"
info "rate h1->h2 over the plain underlay: $rate_underlay Mbit/s"

log "shutdown"
stop_daemon d1
stop_daemon d2
link_exists "$H1" "$TAP" && die "TAP $TAP still exists in $H1 after the daemon stopped"
link_exists "$H2" "$TAP" && die "TAP $TAP still exists in $H2 after the daemon stopped"
ok "TAPs removed on shutdown"
log "PASS: two hosts over VXLAN"
