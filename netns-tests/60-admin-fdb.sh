#!/usr/bin/env bash
# 60-admin-fdb.sh - the admin socket: `overlayd fdb | peers | stats | fdb flush`.
#
#   netns h1 <P>u1 192.0.2.1/24  <== veth ==>  netns h2 <P>u2 192.0.2.2/24
#   blue: vni 42, fdb_ageing_secs = 10 on both; admin sockets in $WORK
#
# Proves:
#   - with no daemon, `overlayd fdb` fails with one clear line on stderr;
#   - the socket is created mode 0600;
#   - after a ping, `overlayd fdb` (table and --json) shows h2's TAP MAC against peer 192.0.2.2
#     and h1's own TAP MAC on its TAP, and the entry ages out after fdb_ageing_secs (and the
#     expiry is counted in /metrics);
#   - `overlayd peers` shows the peer, up, when it was last seen, and the packets each way;
#   - `overlayd stats --json` gives the same counter values as /metrics;
#   - `overlayd fdb flush` empties the table; an unknown --network is a one-line error;
#   - a socket left by a killed daemon is reported as "not answering" and replaced on restart;
#     a cleanly stopped daemon removes its socket.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v jq >/dev/null || die "jq not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2 O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap
BIN=$OVERLAYD_BIN

add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$U2" fdb_ageing_secs=10
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$TAP" "$O2/24" "$U1" fdb_ageing_secs=10
SOCK=$WORK/h1.sock

# one_line_error WHAT PATTERN CMD... - CMD fails with exactly one stderr line matching PATTERN
one_line_error() {
  local what=$1 pat=$2 rc=0; shift 2
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  ((rc != 0)) || die "$what: expected a failure, got status 0"
  [[ $(wc -l <"$WORK/err") == 1 ]] || die "$what: expected one line on stderr, got:"$'\n'"$(cat "$WORK/err")"
  grep -q -- "$pat" "$WORK/err" || die "$what: stderr does not match '$pat': $(cat "$WORK/err")"
  ok "$what: $(cat "$WORK/err")"
}

log "no daemon yet"
one_line_error "overlayd fdb without a daemon" "is overlayd running" "$BIN" fdb --config "$WORK/h1.toml"

log "start both daemons"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
assert_eq "admin socket mode" 600 "$(stat -c %a "$SOCK")"
mac1=$(link_mac "$H1" "$TAP") mac2=$(link_mac "$H2" "$TAP")

log "learn over a ping, show the table"
wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3
"$BIN" fdb --config "$WORK/h1.toml" >"$WORK/fdb.txt"
sed 's/^/     /' "$WORK/fdb.txt"
grep -Eq "^blue +$mac2 +peer $U2 +learned +[0-9.]+s$" "$WORK/fdb.txt" || die "fdb table has no row: blue $mac2 peer $U2 learned"
ok "fdb table: $mac2 behind peer $U2"
grep -Eq "^blue +$mac1 +$TAP +learned " "$WORK/fdb.txt" || die "fdb table has no row: blue $mac1 $TAP"
ok "fdb table: $mac1 on $TAP"
"$BIN" fdb --admin "$SOCK" --network blue --json >"$WORK/fdb.json"
assert_eq "fdb --json: $mac2 is behind" "peer $U2" \
  "$(jq -r --arg m "$mac2" '.[0].entries[] | select(.mac == $m) | "\(.kind) \(.port)"' "$WORK/fdb.json")"
assert_eq "fdb --json: ageing time" 10 "$(jq -r '.[0].ageing_secs' "$WORK/fdb.json")"

log "peers and stats"
"$BIN" peers --admin "$SOCK" | sed 's/^/     /'
"$BIN" peers --admin "$SOCK" --json >"$WORK/peers.json"
assert_eq "peers: the peer of blue" "$U2" "$(jq -r '.[0].peers[0].peer' "$WORK/peers.json")"
# up/down is the control path's decision, taken once a second
peer_up() { [[ $("$BIN" peers --admin "$SOCK" --json | jq -r '.[0].peers[0].up') == true ]]; }
wait_until -t 10 peer_up || die "peers: $U2 not up 10 s after traffic from it"
ok "peers: $U2 is up"
assert_ge "peers: packets from $U2" 3 "$(jq -r '.[0].peers[0].rx_packets' "$WORK/peers.json")"
assert_ge "peers: packets to $U2" 3 "$(jq -r '.[0].peers[0].tx_packets' "$WORK/peers.json")"
jq -e '.[0].peers[0].last_seen_ago_secs < 30' "$WORK/peers.json" >/dev/null || die "peers: $U2 not seen recently"
ok "peers: $U2 last seen $(jq -r '.[0].peers[0].last_seen_ago_secs' "$WORK/peers.json") s ago"
"$BIN" stats --admin "$SOCK" | sed 's/^/     /'
# stats, scrape, stats again until both stats agree (ARP probes and keepalives may land between
# two reads): the scrape in between must then show the same values
stats_keys() { jq -r '"\(.networks[0].tap_rx_frames) \(.networks[0].peers[0].rx_packets)"' <<<"$1"; }
for ((try = 1; ; try++)); do
  stats=$("$BIN" stats --admin "$SOCK" --json)
  text=$(scrape "$H1" http://127.0.0.1:9477/metrics)
  again=$("$BIN" stats --admin "$SOCK" --json)
  [[ $(stats_keys "$stats") == "$(stats_keys "$again")" ]] && break
  ((try < 20)) || die "stats --json never read the same twice in a row (20 tries)"
  sleep 0.2
done
assert_eq "stats tap rx frames = /metrics" "$(metric "$text" 'overlayd_tap_frames_total{direction="rx",network="blue"}')" \
  "$(jq -r '.networks[0].tap_rx_frames' <<<"$stats")"
assert_eq "stats tunnel rx packets = /metrics" \
  "$(metric "$text" "overlayd_tunnel_packets_total{direction=\"rx\",network=\"blue\",peer=\"$U2\"}")" \
  "$(jq -r '.networks[0].peers[0].rx_packets' <<<"$stats")"

log "ageing (fdb_ageing_secs = 10)"
entries_with_mac2() { "$BIN" fdb --admin "$SOCK" --json | jq --arg m "$mac2" '[.[].entries[] | select(.mac == $m)] | length'; }
mac2_gone() { [[ $(entries_with_mac2) == 0 ]]; }
t0=$SECONDS
wait_until -t 30 mac2_gone ||
  die "$mac2 still in the table 30 s after the traffic stopped"
ok "$mac2 aged out of the table (after ~$((SECONDS - t0)) s more)"
expired() { metric "$(scrape "$H1" http://127.0.0.1:9477/metrics)" 'overlayd_fdb_events_total{event="expired",network="blue"}'; }
# the table hides an aged entry at once; the sweep (every second) removes and counts it
expired_counted() { (($(expired) >= 1)); }
wait_until -t 5 expired_counted || die "no fdb expiry counted in /metrics"
ok "fdb expiries in /metrics: $(expired)"

log "flush"
ping_ok "$H1" "$O2" 2
out=$("$BIN" fdb flush --admin "$SOCK" --network blue)
grep -Eq '^blue: [1-9][0-9]* entries flushed$' <<<"$out" || die "fdb flush said: $out"
ok "fdb flush: $out"
assert_eq "entries of blue after the flush" 0 "$("$BIN" fdb --admin "$SOCK" --json | jq '.[0].entries | length')"
one_line_error "fdb of an unknown network" 'no network named "green" (networks: blue)' "$BIN" fdb --admin "$SOCK" --network green

log "a killed daemon's socket"
kill -KILL "${_DAEMON_PID[d1]}"
wait_exit "${_DAEMON_PID[d1]}" 10 || die "d1 did not die on SIGKILL"
[[ -S $SOCK ]] || die "expected the killed daemon's socket to remain"
one_line_error "overlayd stats against a dead socket" "no overlayd is answering" "$BIN" stats --admin "$SOCK"
start_daemon "$H1" d1again "$WORK/h1.toml"   # a new name: a new log, no stale "ready" line
wait_ready d1again
assert_ok "overlayd stats after the restart" "$BIN" stats --admin "$SOCK"

log "shutdown"
stop_daemon d1again
[[ ! -e $SOCK ]] || die "admin socket $SOCK left behind after a clean stop"
ok "admin socket removed on stop"
one_line_error "overlayd peers after stop" "no overlayd admin socket" "$BIN" peers --admin "$SOCK"
stop_daemon d2
log "PASS: admin socket"
