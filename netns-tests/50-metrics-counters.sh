#!/usr/bin/env bash
# 50-metrics-counters.sh - /metrics is valid Prometheus text and its counters are exact.
#
#   netns h1                                                 netns h2
#   <P>u1 192.0.2.1/25   <========= veth underlay =========>  <P>u2 192.0.2.2/25 (+ .3, .4)
#   blue: vni 42, mtu 1400, peers .2 and .4                   blue: vni 42, peer .1
#   red:  vni 43, peer 192.0.2.200 (unreachable: no route)    socat sink on 192.0.2.4:4789
#         bum_pps_limit 5, mac_move_limit 1
#
# Proves:
#   - `promtool check metrics` accepts the live /metrics of both daemons (default listen
#     127.0.0.1:9477 inside each namespace);
#   - 40 broadcast frames written into h1's TAP give exactly +40 frames and +40 x size bytes on
#     every counter on their way: h1 tap rx, flood, tunnel tx to each peer (bytes include the
#     8-byte VXLAN header); h2 tunnel rx from h1, flood, tap tx; one MAC learned on each side;
#   - each drop reason a lab can provoke is provoked exactly once and counted once, under its
#     own label: unknown_vni, bad_flags, malformed (network "-"); unknown_peer, mtu_exceeded,
#     bad_source_mac, hairpin, split_horizon (blue); mac_pinned (red: a MAC moving between
#     the TAP and the peer twice); tap_write_failed (h2, TAP down); no other drop is counted
#     meanwhile;
#   - a burst of 20 broadcasts into red, whose only peer has no route, is counted frame by
#     frame: each one either over the storm limit (storm_limit) or flooded and failed to send
#     (send_failed), both seen, their sum exactly 20; the MAC pin is an fdb event too.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v promtool >/dev/null || die "promtool not installed (package prometheus)"
command -v curl >/dev/null || die "curl not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2 U3=192.0.2.3 U4=192.0.2.4 UNREACHABLE=192.0.2.200
TAP=${PREFIX}tap RED=${PREFIX}red
URL=http://127.0.0.1:9477/metrics

log "underlay: $H1 $U1/25 <-> $H2 $U2/25 (+ $U3, $U4)"
add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/25" "$H2" "${PREFIX}u2" "$U2/25"
ip -n "$H2" addr add "$U3/25" dev "${PREFIX}u2"
ip -n "$H2" addr add "$U4/25" dev "${PREFIX}u2"
ping_ok "$H1" "$U2" 1
ping_ok "$H1" "$U4" 1
# the peer at U4 exists only as an address: absorb what h1 tunnels to it (no ICMP errors)
start_bg "$H2" "$WORK/sink.log" socat -u "UDP4-RECV:4789,bind=$U4,reuseaddr" /dev/null

write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$TAP" - "$U2 $U4" mtu=1400
add_network "$WORK/h1.toml" red 43 "$RED" - "$UNREACHABLE" bum_pps_limit=5 mac_move_limit=1
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$TAP" - "$U1" mtu=1400
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

log "promtool check metrics on the live endpoints"
for nsn in "$H1" "$H2"; do
  scrape "$nsn" "$URL" >"$WORK/metrics.txt"
  out=$(promtool check metrics <"$WORK/metrics.txt" 2>&1) || die "promtool check metrics in $nsn:"$'\n'"$out"
  [[ -z $out ]] || die "promtool check metrics in $nsn reports problems:"$'\n'"$out"
  ok "promtool check metrics: no problem in $nsn ($(grep -c '^overlayd_' "$WORK/metrics.txt") overlayd_ series)"
done

# ---------------------------------------------------------------------------- exact counts
N=40 SIZE=114   # 14-byte Ethernet header + 100 bytes
log "$N broadcast frames of $SIZE bytes into h1's TAP"
a1=$(scrape "$H1" "$URL") a2=$(scrape "$H2" "$URL")
ns_exec "$H1" /usr/bin/python3 -c "
import logging, sys
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import Ether, Raw, sendp
sendp(Ether(dst='ff:ff:ff:ff:ff:ff', src='02:00:00:00:00:0a', type=0x88b5) / Raw(b'x' * 100),
      iface=sys.argv[1], count=int(sys.argv[2]), verbose=False)" "$TAP" "$N" || die "scapy could not send on $TAP"
tx2() { metric "$(scrape "$H2" "$URL")" 'overlayd_tap_frames_total{direction="tx",network="blue"}'; }
base_tx2=$(metric "$a2" 'overlayd_tap_frames_total{direction="tx",network="blue"}')
all_written() { (($(tx2) >= base_tx2 + N)); }
wait_until -t 10 all_written || die "h2 wrote only $(($(tx2) - base_tx2)) of $N frames to its TAP"
sleep 0.5
b1=$(scrape "$H1" "$URL") b2=$(scrape "$H2" "$URL")
delta() { echo $(($(metric "$3" "$4") - $(metric "$2" "$4"))); }   # delta WHAT BEFORE AFTER SERIES
check() { assert_eq "$1" "$2" "$(delta "$1" "$3" "$4" "$5")"; }    # check WHAT WANT BEFORE AFTER SERIES
check "h1 tap rx frames" $N "$a1" "$b1" 'overlayd_tap_frames_total{direction="rx",network="blue"}'
check "h1 tap rx bytes" $((N * SIZE)) "$a1" "$b1" 'overlayd_tap_bytes_total{direction="rx",network="blue"}'
check "h1 flooded frames" $N "$a1" "$b1" 'overlayd_flooded_frames_total{network="blue"}'
check "h1 tunnel tx packets to $U2" $N "$a1" "$b1" "overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"$U2\"}"
check "h1 tunnel tx bytes to $U2" $((N * (SIZE + 8))) "$a1" "$b1" "overlayd_tunnel_bytes_total{direction=\"tx\",network=\"blue\",peer=\"$U2\"}"
check "h1 tunnel tx packets to $U4" $N "$a1" "$b1" "overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"$U4\"}"
check "h1 MACs learned" 1 "$a1" "$b1" 'overlayd_fdb_events_total{event="learned",network="blue"}'
assert_eq "h1 fdb entries" 1 "$(metric "$b1" 'overlayd_fdb_entries{network="blue"}')"
check "h2 tunnel rx packets from $U1" $N "$a2" "$b2" "overlayd_tunnel_packets_total{direction=\"rx\",network=\"blue\",peer=\"$U1\"}"
check "h2 tunnel rx bytes from $U1" $((N * (SIZE + 8))) "$a2" "$b2" "overlayd_tunnel_bytes_total{direction=\"rx\",network=\"blue\",peer=\"$U1\"}"
check "h2 flooded frames" $N "$a2" "$b2" 'overlayd_flooded_frames_total{network="blue"}'
check "h2 tap tx frames" $N "$a2" "$b2" 'overlayd_tap_frames_total{direction="tx",network="blue"}'
check "h2 tap tx bytes" $((N * SIZE)) "$a2" "$b2" 'overlayd_tap_bytes_total{direction="tx",network="blue"}'
check "h2 MACs learned" 1 "$a2" "$b2" 'overlayd_fdb_events_total{event="learned",network="blue"}'
seen=$(metric "$b2" "overlayd_peer_last_seen_seconds{network=\"blue\",peer=\"$U1\"}")
now=$(date +%s)
awk -v s="$seen" -v n="$now" 'BEGIN { exit !(s > n - 60 && s <= n + 1) }' ||
  die "h2: last seen time of $U1 is $seen, not within the last minute (now $now)"
ok "h2: $U1 last seen $(awk -v s="$seen" -v n="$now" 'BEGIN { printf "%.1f", n - s }') s ago"

# ---------------------------------------------------------------------------- drop reasons
sum_drops() { awk -v p="overlayd_drops_total{network=\"$2\"," 'index($1, p) == 1 { s += $2 } END { print s + 0 }' <<<"$1"; }
log "provoke each drop reason once"
a1=$(scrape "$H1" "$URL") a2=$(scrape "$H2" "$URL")
# from h2, in this order: X is learned behind U2 before the hairpin and split-horizon packets
ns_exec "$H2" /usr/bin/python3 - "$U1" "$U2" "$U3" "$U4" <<'PY' || die "scapy could not send the tunnel packets"
import logging, sys, time
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import IP, UDP, Ether, Raw, send
from scapy.layers.vxlan import VXLAN
U1, U2, U3, U4 = sys.argv[1:5]
X, Y, Z, BC = '02:00:00:00:00:bb', '02:00:00:00:00:cc', '02:00:00:00:00:dd', 'ff:ff:ff:ff:ff:ff'
def eth(dst, src, n=46):
    return Ether(dst=dst, src=src, type=0x88b5) / Raw(b'\0' * n)
def vx(src, inner, vni=42, flags=0x08):
    return IP(src=src, dst=U1) / UDP(sport=40000, dport=4789) / VXLAN(flags=flags, vni=vni) / inner
for p in [
    vx(U2, eth(BC, Y), vni=99),                           # unknown_vni
    vx(U2, eth(BC, Y), flags=0),                          # bad_flags
    IP(src=U2, dst=U1) / UDP(sport=40000, dport=4789) / Raw(b'\x08\0\0'),  # malformed
    vx(U3, eth(BC, Y)),                                   # unknown_peer
    vx(U2, eth(BC, Y, 1401)),                             # mtu_exceeded (network mtu 1400)
    vx(U2, eth(BC, '01:00:5e:00:00:01')),                 # bad_source_mac
    vx(U2, eth(BC, X)),                                   # (learn X behind U2)
    vx(U2, eth(X, Y)),                                    # hairpin: X lives behind U2 itself
    vx(U4, eth(X, Z)),                                    # split_horizon: X lives behind U2
]:
    send(p, verbose=False)
    time.sleep(0.05)
PY
# red: M learned on the TAP, moved to the peer (move 1), back to the TAP (move 2 > limit 1):
# pinned, that frame dropped; the first TAP frame is flooded to the peer without a route
M=02:00:00:00:00:0e
send_frame "$H1" "$RED" "Ether(dst='ff:ff:ff:ff:ff:ff', src='$M', type=0x88b5) / Raw(b'r' * 46)"
ns_exec "$H2" /usr/bin/python3 - "$U1" "$UNREACHABLE" "$M" <<'PY' || die "scapy could not send the red tunnel packet"
import logging, sys
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import IP, UDP, Ether, Raw, send
from scapy.layers.vxlan import VXLAN
U1, PEER, M = sys.argv[1:4]
send(IP(src=PEER, dst=U1) / UDP(sport=40000, dport=4789) / VXLAN(flags=0x08, vni=43)
     / Ether(dst='ff:ff:ff:ff:ff:ff', src=M, type=0x88b5) / Raw(b'p' * 46), verbose=False)
PY
red_moved() { (($(metric "$(scrape "$H1" "$URL")" 'overlayd_fdb_events_total{event="moved",network="red"}') >= 1)); }
wait_until -t 10 red_moved || die "h1 did not see $M move to red's peer"
send_frame "$H1" "$RED" "Ether(dst='ff:ff:ff:ff:ff:ff', src='$M', type=0x88b5) / Raw(b'r' * 46)"
# then a burst of 20 broadcasts from another MAC: storm limit 5/s with one second of burst
ns_exec "$H1" /usr/bin/python3 -c "
import logging, sys
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import Ether, Raw, sendp
sendp(Ether(dst='ff:ff:ff:ff:ff:ff', src='02:00:00:00:00:0f', type=0x88b5) / Raw(b's' * 46),
      iface=sys.argv[1], count=20, verbose=False)" "$RED" || die "scapy could not send on $RED"
# h2: a frame for h2's TAP while that TAP is down
ip -n "$H2" link set "$TAP" down
send_frame "$H1" "$TAP" "Ether(dst='ff:ff:ff:ff:ff:ff', src='02:00:00:00:00:0a', type=0x88b5) / Raw(b'd' * 46)"
# every provoked drop is counted before the counters are read (then a grace for extra ones)
all_counted() {
  local m1 m2
  m1=$(scrape "$H1" "$URL") m2=$(scrape "$H2" "$URL")
  (($(sum_drops "$m1" -) >= $(sum_drops "$a1" -) + 3 &&
    $(sum_drops "$m1" blue) >= $(sum_drops "$a1" blue) + 5 &&
    $(sum_drops "$m1" red) >= $(sum_drops "$a1" red) + 22 &&
    $(sum_drops "$m2" blue) >= $(sum_drops "$a2" blue) + 1))
}
wait_until -t 15 all_counted || info "not every provoked drop was counted within 15 s (see the checks below)"
sleep 0.5
b1=$(scrape "$H1" "$URL") b2=$(scrape "$H2" "$URL")
for r in unknown_vni bad_flags malformed; do
  check "h1 drops{network=\"-\",reason=\"$r\"}" 1 "$a1" "$b1" "overlayd_drops_total{network=\"-\",reason=\"$r\"}"
done
for r in unknown_peer mtu_exceeded bad_source_mac hairpin split_horizon; do
  check "h1 drops{network=\"blue\",reason=\"$r\"}" 1 "$a1" "$b1" "overlayd_drops_total{network=\"blue\",reason=\"$r\"}"
done
check "h1 drops{network=\"red\",reason=\"mac_pinned\"}" 1 "$a1" "$b1" 'overlayd_drops_total{network="red",reason="mac_pinned"}'
check "h1 fdb pins in red" 1 "$a1" "$b1" 'overlayd_fdb_events_total{event="pinned",network="red"}'
storm=$(delta x "$a1" "$b1" 'overlayd_drops_total{network="red",reason="storm_limit"}')
failed=$(delta x "$a1" "$b1" 'overlayd_drops_total{network="red",reason="send_failed"}')
assert_ge "h1 drops{network=\"red\",reason=\"storm_limit\"}" 1 "$storm"
assert_ge "h1 drops{network=\"red\",reason=\"send_failed\"} (the first M frame, and the burst's conforming frames)" 2 "$failed"
assert_eq "red: storm_limit + send_failed of the burst (20 frames) and the first M frame" 21 $((storm + failed))
check "h2 drops{network=\"blue\",reason=\"tap_write_failed\"}" 1 "$a2" "$b2" 'overlayd_drops_total{network="blue",reason="tap_write_failed"}'
assert_eq "h1 drops of network \"-\", all reasons" 3 $(($(sum_drops "$b1" -) - $(sum_drops "$a1" -)))
assert_eq "h1 drops of blue, all reasons" 5 $(($(sum_drops "$b1" blue) - $(sum_drops "$a1" blue)))
assert_eq "h1 drops of red, all reasons" 22 $(($(sum_drops "$b1" red) - $(sum_drops "$a1" red)))
assert_eq "h2 drops of blue, all reasons" 1 $(($(sum_drops "$b2" blue) - $(sum_drops "$a2" blue)))

log "shutdown"
stop_daemon d1
stop_daemon d2
log "PASS: metrics are valid and exact"
