#!/usr/bin/env bash
# 68-pmtu-namespaces-mss-clamp.sh - namespace clients at MTU 1500 on a 1450 network: path-MTU
# signals over IPv6 and IPv4, and mss_clamp for clients that do not act on them.
#
#   netns h1: overlayd, network blue: TAP <P>tap1 198.51.100.1/24 + 2001:db8:100::1/64
#   netns h2: overlayd, network blue: TAP <P>tap2 198.51.100.2/24 + 2001:db8:100::2/64
#   underlay: veth 192.0.2.1 <-> 192.0.2.2 (MTU 1500), VXLAN vni 42: the network carries 1450.
#   Both TAPs are raised to MTU 1500 after start: each namespace's link towards the network
#   is at 1500, as a VM's would be. The TAPs keep their offloads (TSO super-frames, partial
#   checksums).
#
# Proves:
#   - IPv6: an 8 MB upload h1 -> h2 arrives whole (sha256); h1's kernel took the daemon's
#     ICMPv6 packet too big (from the packet's destination: the network has no IPv6 address)
#     and caches path MTU 1450 (`ip -6 route get`);
#   - IPv4 the same with ICMP fragmentation needed: the sender is the host whose address is
#     the network's, so the reply comes from the packet's destination, which Linux accepts;
#   - a client that does not act on path-MTU signals (an IPv4 route with `mtu lock 1500`: no
#     DF, so its full-size packets are dropped without a signal) stalls: its upload does not
#     arrive within 20 s;
#   - with mss_clamp = true applied by a SIGHUP reload (in place), that client's IPv4 upload
#     arrives whole, an IPv6 upload (path MTU forgotten) arrives whole without a single packet
#     too big (one without mss_clamp needed at least one), and overlayd_mss_clamped_total
#     counts the SYNs (d1) and SYN-ACKs (d2).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v socat >/dev/null || die "socat not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
A1=198.51.100.1 A2=198.51.100.2
V1=2001:db8:100::1 V2=2001:db8:100::2
T1=${PREFIX}tap1 T2=${PREFIX}tap2
URL=http://127.0.0.1:9477/metrics
FILE=$WORK/file

log "underlay: $H1 $U1 <-> $H2 $U2"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

log "daemons, TAPs raised to MTU 1500"
write_config "$WORK/h1.toml" "$U1"
set_metrics_listen "$WORK/h1.toml" 127.0.0.1:9477
add_network "$WORK/h1.toml" blue 42 "$T1" "$A1/24" "$U2"
write_config "$WORK/h2.toml" "$U2"
set_metrics_listen "$WORK/h2.toml" 127.0.0.1:9477
add_network "$WORK/h2.toml" blue 42 "$T2" "$A2/24" "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
for x in "$H1 $T1 $V1" "$H2 $T2 $V2"; do
  read -r nsn tap v6 <<<"$x"
  ns_exec "$nsn" ip link set lo up
  ns_exec "$nsn" ip link set "$tap" mtu 1500
  ns_exec "$nsn" ip -6 addr add "$v6/64" dev "$tap" nodad
  assert_eq "$tap MTU" 1500 "$(link_mtu "$nsn" "$tap")"
done
ping_ok "$H1" "$A2" 3
wait_until -t 10 ns_exec "$H1" ping -6 -c 1 -W 1 "$V2" >/dev/null || die "no IPv6 between the namespaces"
make_random_file "$FILE" 8

log "IPv6: upload from a client at MTU 1500"
tcp_transfer "$H1" "$H2" "$V2" 5001 "$FILE" "8 MB over IPv6, h1 -> h2"
info "rate: $TRANSFER_MBIT Mbit/s (never asserted)"
route=$(ns_exec "$H1" ip -6 route get "$V2")
info "h1: ip -6 route get $V2: $route"
grep -q "mtu 1450" <<<"$route" || die "h1 caches no path MTU 1450 towards $V2: $route"
ok "h1 lowered its IPv6 path MTU towards $V2 to 1450"

log "IPv4: upload from a client at MTU 1500 (the host owning the network's address)"
tcp_transfer "$H1" "$H2" "$A2" 5002 "$FILE" "8 MB over IPv4, h1 -> h2"
info "rate: $TRANSFER_MBIT Mbit/s (never asserted)"
route=$(ns_exec "$H1" ip route get "$A2")
info "h1: ip route get $A2: $(tr '\n' ' ' <<<"$route")"
grep -q "mtu 1450" <<<"$route" || die "h1 caches no path MTU 1450 towards $A2: $route"
ok "h1 lowered its IPv4 path MTU towards $A2 to 1450"
m=$(scrape "$H1" "$URL")
assert_ge "ICMPv6 packet too big sent by d1" 1 "$(metric "$m" 'overlayd_pmtu_signals_total{family="ipv6",network="blue"}')"
assert_ge "ICMP fragmentation needed sent by d1" 1 "$(metric "$m" 'overlayd_pmtu_signals_total{family="ipv4",network="blue"}')"

log "a client that does not act on path-MTU signals: an IPv4 route with mtu lock 1500"
# Linux then sends without DF (and ignores fragmentation needed); overlayd drops those
# packets silently (no signal for a packet that allows fragmentation). IPv6 has no such mode
# (Linux honours packet too big even on a locked route), so for IPv6 the proof is that a
# clamped connection never sends a packet over the MTU: no signal during its upload.
ns_exec "$H1" ip route add "$A2/32" dev "$T1" src "$A1" mtu lock 1500
info "h1: $(ns_exec "$H1" ip route get "$A2" | tr '\n' ' ')"
# stalls ADDR PORT - an upload h1 -> ADDR does not arrive whole within 20 s (the sender's
# full-size segments are dropped and it never lowers its segment size)
stalls() {
  local addr=$1 port=$2 srv snd got
  start_bg "$H2" "$WORK/stall-$port.log" socat -u "TCP-LISTEN:$port,bind=$addr,reuseaddr" "CREATE:$WORK/stall-$port"
  srv=$BG_PID
  wait_until -t 10 _tcp_listening "$H2" "$port" || die "socat on $addr:$port did not start"
  start_bg "$H1" "$WORK/stall-send-$port.log" socat -u "OPEN:$FILE" "TCP:$addr:$port,connect-timeout=5"
  snd=$BG_PID
  if wait_exit "$srv" 20; then
    got=$(stat -c %s "$WORK/stall-$port" 2>/dev/null || echo 0)
    ((got != $(stat -c %s "$FILE"))) || return 1
  fi
  got=$(stat -c %s "$WORK/stall-$port" 2>/dev/null || echo 0)
  kill "$srv" "$snd" 2>/dev/null || true
  info "upload to $addr: after 20 s, $got of $(stat -c %s "$FILE") bytes arrived"
}
stalls "$A2" 5003 || die "the IPv4 upload with a locked MTU completed without mss_clamp (nothing to prove)"
ok "IPv4 upload without DF stalls without mss_clamp"
v6sig() { metric "$(scrape "$H1" "$URL")" 'overlayd_pmtu_signals_total{family="ipv6",network="blue"}'; }
ns_exec "$H1" ip -6 route flush cache
before=$(v6sig)
tcp_transfer "$H1" "$H2" "$V2" 5004 "$FILE" "8 MB over IPv6 without mss_clamp, path MTU forgotten"
assert_ge "ICMPv6 packet too big it took (without mss_clamp)" 1 $(($(v6sig) - before))

log "mss_clamp = true on both daemons, by reload"
for d in h1 h2; do
  printf 'mss_clamp = true\n' >>"$WORK/$d.toml"
  assert_ok "overlayd check accepts mss_clamp ($d)" "$OVERLAYD_BIN" check --config "$WORK/$d.toml"
done
for d in d1 d2; do
  kill -HUP "${_DAEMON_PID[$d]}"
  wait_until -t 10 grep -q 'reload: network updated in place' "$WORK/$d.log" || die "$d: no in-place update logged after SIGHUP"
  # applied on both data paths only once the whole reload is (the fast path leaves the network)
  wait_until -t 10 grep -q 'reload applied' "$WORK/$d.log" || die "$d: no 'reload applied' after SIGHUP"
done
ok "mss_clamp applied in place on both daemons"
tcp_transfer "$H1" "$H2" "$A2" 5005 "$FILE" "8 MB over IPv4 with mss_clamp, no DF"
ns_exec "$H1" ip -6 route flush cache
before=$(v6sig)
tcp_transfer "$H1" "$H2" "$V2" 5006 "$FILE" "8 MB over IPv6 with mss_clamp, path MTU forgotten"
assert_eq "ICMPv6 packet too big needed (with mss_clamp)" 0 $(($(v6sig) - before))
route=$(ns_exec "$H1" ip -6 route get "$V2")
if grep -q "mtu 1450" <<<"$route"; then die "h1 learned a path MTU with mss_clamp on: $route"; fi
ok "h1 never learned a smaller IPv6 path MTU: $route"
m=$(scrape "$H1" "$URL")
assert_ge "SYNs clamped by d1" 2 "$(metric "$m" 'overlayd_mss_clamped_total{network="blue"}')"
m=$(scrape "$H2" "$URL")
assert_ge "SYN-ACKs clamped by d2" 2 "$(metric "$m" 'overlayd_mss_clamped_total{network="blue"}')"

log "shutdown"
stop_daemon d1
stop_daemon d2
log "PASS: namespace clients at MTU 1500 get through, with path-MTU signals or MSS clamping"
