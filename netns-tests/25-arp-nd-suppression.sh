#!/usr/bin/env bash
# 25-arp-nd-suppression.sh - ARP/ND suppression from bindings snooped off the tunnel.
#
#   netns h1 192.0.2.1 ─┐                       overlay (vni 42, full mesh, arp_suppress = true):
#   netns h2 192.0.2.2 ─┼─ bridge in netns sw    tap 198.51.100.i/24 and 2001:db8:42::i/64 on hi
#   netns h3 192.0.2.3 ─┘  (the L3 underlay)
#
# Proves:
#   - after a first ARP exchange h1 <-> h2 across the tunnel, h1's daemon holds h2's binding;
#     once h1 forgets h2 (`ip neigh flush`), its new broadcast ARP request is answered on h1's
#     TAP by h1's daemon (an ARP reply from h2's MAC), ZERO broadcast frames reach any underlay
#     leg, and pings h1 -> h2 pass;
#   - the same for IPv6: after a first neighbour solicitation/advertisement h1 <-> h2, a new
#     solicitation for h2 is answered locally, ZERO solicitations reach the underlay, ping6 passes;
#   - arp_suppress is reloaded in place (SIGHUP: updated, not restarted): off, the next ARP for
#     h2 floods to the underlay; on again, the next exchange binds h2 again;
#   - a stale binding is not used: once h2's daemon is stopped and h1's daemon declared that
#     peer down, an ARP request for h2 floods again (seen on the underlay) and counts as a miss;
#   - overlayd_neigh_suppressed_total{family,result} and overlayd_neigh_bindings say so, and
#     `overlayd fdb` lists the binding with the peer it came from.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

SW=$PREFIX-sw
TAP=${PREFIX}tap
U=(- 192.0.2.1 192.0.2.2 192.0.2.3)          # underlay address of host i
O=(- 198.51.100.1 198.51.100.2 198.51.100.3)  # overlay address of host i
O6=(- 2001:db8:42::1 2001:db8:42::2 2001:db8:42::3)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3")  # namespace of host i
URL=http://127.0.0.1:9477/metrics

log "underlay: h1, h2, h3 on a bridge in $SW"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24"
ping_ok "${H[1]}" "${U[2]}" 2
ping_ok "${H[1]}" "${U[3]}" 2

log "overlay: three daemons, vni 42, full mesh, arp_suppress = true"
for i in 1 2 3; do
  peers=$(mesh_peers "$i" "${U[@]:1}")
  write_config "$WORK/h$i.toml" "${U[i]}"
  set_metrics_listen "$WORK/h$i.toml" 127.0.0.1:9477
  add_network "$WORK/h$i.toml" blue 42 "$TAP" "${O[i]}/24" "$peers" arp_suppress=true
  start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"
done
for i in 1 2 3; do wait_ready "d$i"; done
# IPv6 on the TAPs only (the underlay legs stay IPv4-only), without DAD delays
for i in 1 2 3; do
  ns_exec "${H[i]}" sysctl -qw "net.ipv6.conf.$TAP.accept_dad=0" "net.ipv6.conf.$TAP.disable_ipv6=0"
  ip -n "${H[i]}" addr add "${O6[i]}/64" dev "$TAP" nodad
done
MAC2=$(link_mac "${H[2]}" "$TAP")

m1() { metric "$(scrape "${H[1]}" "$URL")" "$1"; }
hits4='overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="hit"}'
miss4='overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="miss"}'
hits6='overlayd_neigh_suppressed_total{family="ipv6",network="blue",result="hit"}'
bindings='overlayd_neigh_bindings{network="blue"}'

# VXLAN packets (on any underlay leg) whose inner frame is a broadcast (inner destination MAC
# at UDP payload bytes 16..21), or an IPv6 neighbour solicitation (inner ethertype 0x86dd at
# bytes 28..29, next header 58 at byte 36, ICMPv6 type 135 at byte 70)
inner_bcast=(udp port 4789 and 'udp[16:4] = 0xffffffff' and 'udp[20:2] = 0xffff')
inner_ns=(udp port 4789 and 'udp[28:2] = 0x86dd' and 'udp[36] = 58' and 'udp[70] = 135')

log "first exchange across the tunnel: h1 <-> h2 (ARP floods once, h2's reply is snooped)"
wait_ping "${H[1]}" "${O[2]}"
has_binding() { (($(m1 "$bindings") >= 1)); }
wait_until -t 5 has_binding || die "h1's daemon learned no binding from h2's ARP reply"
info "bindings on h1 after the first exchange: $(m1 "$bindings")"
"$OVERLAYD_BIN" fdb --admin "$WORK/h1.sock" --network blue --json >"$WORK/fdb.json"
assert_eq "overlayd fdb --json: ${O[2]} is bound to" "$MAC2 snooped ${U[2]}" \
  "$(jq -r --arg ip "${O[2]}" '.[0].neighbours[] | select(.ip == $ip) | "\(.mac) \(.source) \(.peer)"' "$WORK/fdb.json")"

log "h1 forgets h2 (ip neigh flush) and asks again: answered on h1's TAP, nothing on the underlay"
ns_exec "${H[1]}" ip neigh flush dev "$TAP"
h0=$(m1 "$hits4")
for i in 1 2 3; do capture_start "u$i" "${H[i]}" "${PREFIX}u$i" "${inner_bcast[@]}"; done
capture_start tap1 "${H[1]}" "$TAP" arp
ping_ok "${H[1]}" "${O[2]}" 3
capture_stop u1 u2 u3 tap1
for i in 1 2 3; do
  n=$(capture_count "u$i")
  ((n == 0)) || capture_show "u$i"
  assert_eq "VXLAN packets carrying a broadcast frame on h$i's underlay leg" 0 "$n"
done
# the answer: an ARP reply "198.51.100.2 is-at <h2's TAP MAC>" on h1's TAP
n=$(capture_count tap1 "arp[6:2] = 2 and ether src $MAC2")
((n >= 1)) || capture_show tap1
assert_ge "ARP replies from h2's MAC on h1's TAP" 1 "$n"
h1=$(m1 "$hits4")
assert_ge "overlayd_neigh_suppressed_total ipv4 hit on h1 (was $h0)" $((h0 + 1)) "$h1"

log "IPv6: first exchange h1 <-> h2, then h1 forgets h2 and solicits again"
wait_ping "${H[1]}" "${O6[2]}"
ns_exec "${H[1]}" ip -6 neigh flush dev "$TAP"
h0=$(m1 "$hits6")
for i in 1 2 3; do capture_start "v$i" "${H[i]}" "${PREFIX}u$i" "${inner_ns[@]}"; done
capture_start tap6 "${H[1]}" "$TAP" icmp6
ping_ok "${H[1]}" "${O6[2]}" 3
capture_stop v1 v2 v3 tap6
for i in 1 2 3; do
  n=$(capture_count "v$i")
  ((n == 0)) || capture_show "v$i"
  assert_eq "VXLAN packets carrying a neighbour solicitation on h$i's underlay leg" 0 "$n"
done
# a neighbour advertisement (type 136) from h2's MAC, solicited (flags byte 4: S = 0x40)
n=$(capture_count tap6 "ether src $MAC2 and icmp6 and ip6[40] = 136 and ip6[44] & 0x40 != 0")
((n >= 1)) || capture_show tap6
assert_ge "solicited neighbour advertisements from h2's MAC on h1's TAP" 1 "$n"
h1=$(m1 "$hits6")
assert_ge "overlayd_neigh_suppressed_total ipv6 hit on h1 (was $h0)" $((h0 + 1)) "$h1"

log "reload in place: arp_suppress off on h1 (SIGHUP), the next ARP for h2 floods; on again"
applied_at_least() { (($(grep -c "reload applied" "${_DAEMON_LOG[d1]}" || true) >= $1)); }
reload_h1() { # N SETTING - rewrite arp_suppress in h1's config, SIGHUP, wait for the Nth applied line
  sed -i "s/^arp_suppress = .*/arp_suppress = $2/" "$WORK/h1.toml"
  kill -HUP "${_DAEMON_PID[d1]}" || die "cannot signal d1"
  wait_until -t 10 applied_at_least "$1" || die "reload $1 of h1 was not applied"
  local line
  line=$(grep "reload applied" "${_DAEMON_LOG[d1]}" | sed -n "${1}p")
  [[ $line == *'updated=["blue"]'* && $line == *'restarted=[]'* ]] || die "arp_suppress = $2 was not applied in place: $line"
  ok "arp_suppress = $2 applied in place: ${line#*INFO }"
}
reload_h1 1 false
assert_eq "bindings on h1 with arp_suppress off" 0 "$(m1 "$bindings")"
ns_exec "${H[1]}" ip neigh flush dev "$TAP"
capture_start r1 "${H[1]}" "${PREFIX}u1" "${inner_bcast[@]}"
ping_ok "${H[1]}" "${O[2]}" 2
capture_stop r1
assert_ge "VXLAN packets carrying a broadcast frame on h1's underlay leg, suppression off" 1 "$(capture_count r1)"
reload_h1 2 true
# the next exchange binds h2 again
ns_exec "${H[1]}" ip neigh flush dev "$TAP"
wait_ping "${H[1]}" "${O[2]}"
wait_until -t 5 has_binding || die "h1's daemon learned no binding after arp_suppress was turned on again"
ok "h2 bound again on h1 after arp_suppress came back on"

log "stale: h2's daemon stops; once h1's daemon declares it down, ARP for h2 floods again"
stop_daemon d2
peer_down() { [[ $(m1 "overlayd_peer_up{network=\"blue\",peer=\"${U[2]}\"}") == 0 ]]; }
wait_until -t 15 peer_down || die "h1's daemon did not declare peer ${U[2]} down"
ok "peer ${U[2]} down on h1"
ns_exec "${H[1]}" ip neigh flush dev "$TAP"
m0=$(m1 "$miss4") h0=$(m1 "$hits4")
capture_start s1 "${H[1]}" "${PREFIX}u1" "${inner_bcast[@]}"
ns_exec "${H[1]}" ping -n -c 1 -W 2 "${O[2]}" >/dev/null 2>&1 || true
capture_stop s1
n=$(capture_count s1)
assert_ge "VXLAN packets carrying h1's broadcast ARP request on h1's underlay leg" 1 "$n"
assert_ge "ipv4 suppression misses on h1" $((m0 + 1)) "$(m1 "$miss4")"
assert_eq "ipv4 suppression hits on h1 while the binding is stale" "$h0" "$(m1 "$hits4")"
log "PASS: ARP and ND answered locally from snooped bindings, none flooded; stale ones unused"
