#!/usr/bin/env bash
# 85-mac-flood.sh - a port that sends from a million random source MACs cannot exhaust the
# daemon or evict everyone else's MACs.
#
#   netns h1                                                  netns h2
#   <P>u1 192.0.2.1/24  <========= veth underlay =========>   <P>u2 192.0.2.2/24
#   blue: vni 42, taps <P>t (198.51.100.1/24) and <P>fl       blue: vni 42, tap <P>t 198.51.100.2/24
#         fdb_max_entries = 8192 (the default cap)
#
# A flooder in h1 writes MAC_FLOOD_COUNT (default 1,000,000) 60-byte frames into <P>fl, each
# from a different random source MAC, to the MAC of <P>t (known unicast: they stay local).
# Meanwhile h1 pings h2 over the overlay.
#
# Proves:
#   - the daemon learned (and evicted) MACs by the hundred thousand, yet its MAC table holds
#     exactly its cap afterwards and its resident memory grew by less than 64 MiB;
#   - eviction is fair: <P>t's MAC (on its TAP) and h2's MAC (behind the peer) survive the
#     flood in the table; the flooding port holds the rest;
#   - forwarding for others keeps working: at least 90 % of the pings sent during the flood
#     are answered, and every ping after it;
#   - prints VmRSS before/after, MACs learned and evicted, the flooder's rate (not asserted).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v jq >/dev/null || die "jq not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
T=${PREFIX}t FL=${PREFIX}fl
COUNT=${MAC_FLOOD_COUNT:-1000000}
CAP=8192
BIN=$OVERLAYD_BIN

add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

write_config "$WORK/h1.toml" "$U1"
cat >>"$WORK/h1.toml" <<EOF

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
taps = ["$T", "$FL"]
address = "$O1/24"
peers = ["$U2"]
fdb_max_entries = $CAP
EOF
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$T" "$O2/24" "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
PID1=${_DAEMON_PID[d1]}
ip -n "$H1" link set "$FL" up

wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3
MAC_T=$(link_mac "$H1" "$T")
MAC_H2=$(link_mac "$H2" "$T")

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }   # kB
fdb_json() { "$BIN" fdb --config "$WORK/h1.toml" --network blue --json; }
events() { "$BIN" stats --config "$WORK/h1.toml" --json | jq -r --arg e "$1" '[.. | objects | select(has("fdb_events")) | .fdb_events[$e]] | add // 0'; }

rss0=$(rss "$PID1")
learned0=$(events learned)
info "daemon VmRSS before the flood: $rss0 kB; MAC table $(fdb_json | jq '.[0].entries | length') entries"

log "flood: $COUNT random source MACs into $FL, pinging $O2 meanwhile"
start_bg "$H1" "$WORK/ping.log" ping -n -i 0.2 -W 2 "$O2"
PING=$BG_PID
ns_exec "$H1" /usr/bin/python3 "$LIB_DIR/mac_flood.py" "$FL" "$COUNT" "$MAC_T" | tee "$WORK/flood.log" | sed 's/^/   flooder: /'
# Judge only the requests sent more than 2 s before ping stops (a request still in flight at
# SIGINT is not a loss): ping sends at most one request per 0.2 s, so all but the last 11 are
# that old. Stopping 2.5 s after the flood puts every request sent during the flood among them.
sleep 2.5
kill -INT "$PING"
wait_exit "$PING" 10 || die "ping did not stop"
tx=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$WORK/ping.log")
judged=$((${tx:-0} - 11))
((judged >= 3)) || die "ping sent only ${tx:-0} requests during and after the flood"
read -r rx _ < <(ping_answered 1 "$judged" <"$WORK/ping.log")
info "pings during the flood: $rx of requests 1..$judged answered ($tx sent in all)"
((rx * 10 >= judged * 9)) || die "forwarding for others suffered: only $rx of $judged pings answered during the flood"
ok "forwarding for others kept working: $rx/$judged pings answered during the flood"

learned=$(($(events learned) - learned0))
evicted=$(events evicted)
rss1=$(rss "$PID1")
info "MACs learned during the flood: $learned, evicted: $evicted"
info "daemon VmRSS after the flood: $rss1 kB (before: $rss0 kB, growth $((rss1 - rss0)) kB)"
assert_ge "MACs learned from the flood" $((CAP * 4)) "$learned"
fdb_json >"$WORK/fdb.json"
assert_eq "MAC table size after the flood (its cap)" "$CAP" "$(jq '.[0].entries | length' "$WORK/fdb.json")"
(((rss1 - rss0) < 65536)) || die "resident memory grew by $((rss1 - rss0)) kB during the flood"
ok "resident memory bounded: +$((rss1 - rss0)) kB"

log "eviction is fair: the other ports' MACs survived"
port_of() { jq -r --arg m "$1" '.[0].entries[] | select(.mac == $m) | "\(.kind) \(.port)"' "$WORK/fdb.json"; }
got=$(port_of "$MAC_T")
[[ $got == *"$T" ]] || die "$T's MAC $MAC_T was evicted by the flood (row: '${got:-none}')"
ok "$T's MAC $MAC_T still on its TAP ($got)"
assert_eq "h2's MAC $MAC_H2 still behind the peer" "peer $U2" "$(port_of "$MAC_H2")"
on_fl=$(jq --arg p "$FL" '[.[0].entries[] | select(.port == $p)] | length' "$WORK/fdb.json")
info "entries on the flooding port $FL: $on_fl of $CAP"

ping_ok "$H1" "$O2" 5
stop_daemon d1
stop_daemon d2
log "PASS: MAC flood"
