#!/usr/bin/env bash
# 95-cluster-etcd.sh - network membership through a real etcd (one member, started here).
#
#   netns e  192.0.2.10 (etcd) ─┐
#   netns h1..h4 192.0.2.1..4  ─┴─ bridge in netns sw (the L3 underlay)
#
# Every daemon's config has `peers = []` and `cluster = true`: the peers come from etcd.
# Proves:
#   - join: three daemons find each other and every pair pings (convergence time printed);
#   - a fourth host joins with only its own config: the others' config files are untouched
#     (sha256) and they do not reload; `overlayd peers` says "cluster", `overlayd cluster` and
#     the metrics show the members;
#   - etcd SIGKILLed for longer than the lease TTL during a paced, sha256-checked transfer and
#     50 pings/s, then restarted: nothing lost, no member removed, no MAC flushed, exactly one
#     re-list (reason reconnect) per daemon;
#   - SIGTERM: the leaving daemon is removed by the others at once (time printed);
#   - SIGKILL: the dead daemon goes down, then is removed once its lease expired (time printed);
#   - a daemon that starts while etcd is down forwards at once to its state file's members.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
TAP=${PREFIX}tap
TTL=5
U=(- 192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.4)
O=(- 198.51.100.1 198.51.100.2 198.51.100.3 198.51.100.4)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3" "$PREFIX-h4")
export ETCDCTL_API=3

log "underlay: h1..h4 and the etcd host on a bridge in $SW"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24" "${H[4]}" "${U[4]}/24" "$E" "$EA/24"

ETCD_PID=
start_etcd() { etcd_up "$E" "$EA"; }
kill_etcd() {
  kill -KILL "$ETCD_PID"
  wait "$ETCD_PID" 2>/dev/null || true
}
start_etcd

cfg() {
  local i=$1 f=$WORK/h$1.toml
  write_config "$f" "${U[i]}"
  set_metrics_listen "$f" "${U[i]}:9477"
  printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "h%s"\nlease_ttl_secs = %s\nstate_file = "%s"\n' \
    "$EA" "$i" "$TTL" "$WORK/h$i-state.json" >>"$f"
  add_network "$f" blue 42 "$TAP" "${O[i]}/24" "" cluster=true
}
ovl() { "$OVERLAYD_BIN" "$@"; }
# is_peer I ADDR - host I's daemon has ADDR as a peer of blue
is_peer() { ovl peers --admin "$WORK/h$1.sock" --json | jq -e --arg a "$2" '.[0].peers | any(.peer == $a)' >/dev/null; }
not_peer() { ! is_peer "$@"; }
pings() { ns_exec "${H[$1]}" ping -n -c 1 -W 1 "$2" >/dev/null; }
all_pairs() {
  local i j
  for i in "$@"; do for j in "$@"; do
    ((i == j)) || pings "$i" "${O[j]}" || return 1
  done; done
}

log "join: three daemons with peers = [] register and find each other"
t0=$(date +%s%N)
for i in 1 2 3; do cfg "$i"; start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"; done
for i in 1 2 3; do wait_ready "d$i"; done
wait_until -t 30 all_pairs 1 2 3 || die "the three daemons did not converge within 30 s"
t1=$(date +%s%N)
info "join convergence (start of 3 daemons to every pair pinging): $(((t1 - t0) / 1000000)) ms"
ok "every pair of h1, h2, h3 pings"

log "a fourth host joins with only its own config"
declare -A SUM
for i in 1 2 3; do SUM[$i]=$(sha256sum <"$WORK/h$i.toml"); done
t0=$(date +%s%N)
cfg 4; start_daemon "${H[4]}" d4 "$WORK/h4.toml"; wait_ready d4
wait_until -t 30 all_pairs 1 2 3 4 || die "h4 did not converge with the others within 30 s"
t1=$(date +%s%N)
info "h4 join (start to every pair of the four pinging): $(((t1 - t0) / 1000000)) ms"
for i in 1 2 3; do
  assert_eq "h$i config sha256 after h4 joined" "${SUM[$i]}" "$(sha256sum <"$WORK/h$i.toml")"
  if grep -q 'reload' "$WORK/d$i.log"; then die "d$i logged a reload"; fi
done
ok "the others' configs are untouched and they did not reload"
src=$(ovl peers --admin "$WORK/h1.sock" --json | jq -r '.[0].peers[] | select(.peer == "192.0.2.4") | .source')
assert_eq "source of peer 192.0.2.4 on h1" cluster "$src"
ovl peers --admin "$WORK/h1.sock"
ovl cluster --admin "$WORK/h1.sock"
n=$(ovl cluster --admin "$WORK/h1.sock" --json | jq '.networks[0].members | length')
assert_eq "members of blue in h1's 'overlayd cluster'" 3 "$n"
m=$(scrape "${H[1]}" "http://${U[1]}:9477/metrics")
assert_eq "overlayd_cluster_connected on h1" 1 "$(metric "$m" overlayd_cluster_connected)"
assert_eq "overlayd_cluster_members on h1" 3 "$(metric "$m" 'overlayd_cluster_members{network="blue"}')"
assert_eq "added events on h1" 3 "$(metric "$m" 'overlayd_cluster_events_total{event="added",network="blue"}')"

ectl() { ns_exec "$E" etcdctl --endpoints "http://$EA:2379" "$@"; }
rec() { printf '{"underlay":"%s","encap":"vxlan","vni":%s,"port":4789,"state":"active"}' "$1" "$2"; }
K=/overlayd/v1/networks/blue/members
rejected() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" 'overlayd_cluster_events_total{event="rejected",network="blue"}'; }

log "a forged record (another VNI) is rejected and counted, never applied"
r0=$(rejected 1)
ectl put "$K/evil" "$(rec 192.0.2.99 43)" >/dev/null
wait_until -t 10 eval "(( \$(rejected 1) == r0 + 1 ))" || die "h1 did not count the forged record as rejected"
not_peer 1 192.0.2.99 || die "h1 took the forged record as a peer"
grep -q 'record rejected.*node="evil"' "$WORK/d1.log" || die "h1 did not log the rejected record"
ectl del "$K/evil" >/dev/null
ok "forged record rejected (counted and logged), not a peer"

log "h2 stopped (SIGSTOP) while members change and etcd is compacted, then SIGCONT"
compacted() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" 'overlayd_cluster_resyncs_total{reason="compacted"}'; }
c0=$(compacted 2)
kill -STOP "${_DAEMON_PID[d2]}"
ectl put "$K/ghost" "$(rec 192.0.2.77 42)" >/dev/null
ectl del "$K/ghost" >/dev/null
ectl put "$K/ghost2" "$(rec 192.0.2.78 42)" >/dev/null
rev=$(ectl endpoint status -w json | jq '.[0].Status.header.revision')
ectl compact "$rev" >/dev/null
sleep 2
kill -CONT "${_DAEMON_PID[d2]}"
wait_until -t 10 is_peer 2 192.0.2.78 || die "h2 did not pick up the member added while it was stopped"
wait_until -t 10 not_peer 2 192.0.2.77 || die "h2 kept a stale peer (192.0.2.77, added and removed while it was stopped)"
info "re-lists after compaction by h2: $(($(compacted 2) - c0)) (etcd had sent these few changes into h2's connection before it stopped, so its watch stays in step; lab 99 puts a watch behind a compaction)"
ectl del "$K/ghost2" >/dev/null
for i in 1 2 3 4; do
  wait_until -t 10 not_peer "$i" 192.0.2.78 || die "h$i kept 192.0.2.78 (never heard on the data path) after its record went"
done
wait_until -t 30 all_pairs 1 2 3 4 || die "the four hosts do not ping pairwise after h2 resumed"
ok "no stale peer on h2 after SIGCONT; an expired member never heard on the data path is removed at once"

log "h2 cut off from etcd only (a blackhole route), not from its peers"
expired_events() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" 'overlayd_cluster_events_total{event="expired",network="blue"}'; }
x0=$(expired_events 1)
ns_exec "${H[2]}" ip route add blackhole "$EA/32"
wait_until -t $((TTL * 3)) eval "(( \$(expired_events 1) > x0 ))" || die "h1 saw no expiry of h2's lease with h2 cut off from etcd"
info "h2's lease expired at h1 while h2 is cut off from etcd"
sleep 3
is_peer 1 "${U[2]}" || die "h1 removed h2, which its data path still hears"
ping_ok "${H[1]}" "${O[2]}" 5
ovl cluster --admin "$WORK/h1.sock" --json | jq -e '.networks[0].members[] | select(.node == "h2") | .status == "expired"' >/dev/null ||
  die "h1 does not show h2 as expired"
ok "h2 kept by h1 while its keepalives arrive (shown as expired)"
ns_exec "${H[2]}" ip route del blackhole "$EA/32"
active_again() { ovl cluster --admin "$WORK/h1.sock" --json | jq -e '.networks[0].members[] | select(.node == "h2") | .status == "active"' >/dev/null; }
wait_until -t 30 active_again || die "h2 did not come back as active after it reached etcd again"
grep -q 'granting a new one and writing the records again' "$WORK/d2.log" || die "h2 did not re-grant its lease"
ok "h2 re-granted its lease and re-wrote its records; active again at h1"

log "a SIGHUP reload of h1 (storm limit added) keeps its cluster peers"
printf 'bum_pps_limit = 5000\n' >>"$WORK/h1.toml"
kill -HUP "${_DAEMON_PID[d1]}"
wait_until -t 10 grep -q 'reload applied' "$WORK/d1.log" || die "d1 did not apply the reload"
for a in "${U[2]}" "${U[3]}" "${U[4]}"; do is_peer 1 "$a" || die "the reload dropped cluster peer $a"; done
ping_ok "${H[1]}" "${O[4]}" 3
ok "reload applied; the cluster peers stay"

log "etcd SIGKILLed for $((TTL * 2 + 2)) s (lease TTL ${TTL} s) during a paced transfer h1 -> h2 and 50 pings/s h3 -> h4"
flushed() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" 'overlayd_fdb_events_total{event="flushed",network="blue"}'; }
reconnects() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" 'overlayd_cluster_resyncs_total{reason="reconnect"}'; }
removals() { grep -c 'member removed' "$WORK/d$1.log" || true; }
declare -A FL RC RM
for i in 1 2 3 4; do FL[$i]=$(flushed "$i"); RC[$i]=$(reconnects "$i"); RM[$i]=$(removals "$i"); done
make_random_file "$WORK/payload" 12
want=$(sha256sum <"$WORK/payload" | cut -d' ' -f1)
start_bg "${H[2]}" "$WORK/recv.log" socat -u "TCP-LISTEN:5001,bind=${O[2]},reuseaddr" "CREATE:$WORK/received"
recv=$BG_PID
wait_until -t 10 _tcp_listening "${H[2]}" 5001 || die "receiver did not start"
# 32 KiB every 40 ms: about 15 s for 12 MiB, longer than the outage
start_bg "${H[1]}" "$WORK/send.log" sh -c "/usr/bin/python3 -c '
import sys, time
f = open(sys.argv[1], \"rb\"); o = sys.stdout.buffer
while True:
    b = f.read(32768)
    if not b: break
    o.write(b); o.flush(); time.sleep(0.04)
' $WORK/payload | socat -u - TCP:${O[2]}:5001"
send=$BG_PID
PING_DEADLINE=40 ping_start outage "${H[3]}" "${O[4]}" 1000 -i 0.02
sleep 1
kill_etcd
info "etcd killed"
sleep $((TTL * 2 + 2))
start_etcd
wait_exit "$send" 60 || die "the paced sender did not finish"
wait_exit "$recv" 30 || die "the receiver did not finish"
got=$(sha256sum <"$WORK/received" | cut -d' ' -f1)
assert_eq "sha256 of the 12 MiB sent across the outage" "$want" "$got"
ping_finish outage
for i in 1 2 3 4; do
  wait_until -t 20 eval "(( \$(reconnects $i) > ${RC[$i]} ))" || die "d$i did not re-list after etcd came back"
done
sleep 2
for i in 1 2 3 4; do
  assert_eq "re-lists (reason reconnect) by d$i across the outage" $((RC[$i] + 1)) "$(reconnects "$i")"
  assert_eq "MACs flushed by d$i across the outage" "${FL[$i]}" "$(flushed "$i")"
  assert_eq "members removed by d$i across the outage" 0 $(($(removals "$i") - RM[$i]))
done
ok "nothing lost, no member removed, no MAC flushed, one re-list each"

log "SIGTERM: h4 leaves"
t0=$(date +%s%N)
stop_daemon d4
wait_until -t 10 not_peer 1 "${U[4]}" || die "h1 still has h4 as a peer 10 s after it left"
t1=$(date +%s%N)
info "leave: SIGTERM to h4 removed at h1 after $(((t1 - t0) / 1000000)) ms"
grep -q 'member removed.*node="h4".*why="left"' "$WORK/d1.log" || die "h1 did not log h4's removal as left"
ok "h4 removed as left (not as an expiry)"

log "SIGKILL: h3 dies"
t0=$(date +%s%N)
kill -KILL "${_DAEMON_PID[d3]}"
wait_until -t $((TTL * 4 + 10)) not_peer 1 "${U[3]}" || die "h1 still has h3 as a peer $((TTL * 4 + 10)) s after it died"
t1=$(date +%s%N)
info "death: SIGKILL of h3 removed at h1 after $(((t1 - t0) / 1000000)) ms (lease TTL ${TTL} s)"
grep -q 'lease expired' "$WORK/d1.log" || die "h1 did not log h3's lease expiry"
ok "h3 removed after its lease expired"

log "a node name held by another underlay address is refused, not overwritten"
sed 's/node_name = "h4"/node_name = "h2"/' "$WORK/h4.toml" >"$WORK/h4b.toml"
start_daemon "${H[4]}" d4b "$WORK/h4b.toml"; wait_ready d4b
wait_until -t 10 grep -q 'node name taken' "$WORK/d4b.log" || die "d4b did not log 'node name taken'"
holder=$(ectl get --print-value-only /overlayd/v1/nodes/h2)
assert_eq "holder of node name h2" "${U[2]}" "$holder"
sleep 1
not_peer 1 "${U[4]}" || die "h1 took the refused node as a peer"
kill -0 "${_DAEMON_PID[d4b]}" || die "d4b exited after the refusal"
stop_daemon d4b
ok "node name taken: logged, refused, h2's claim intact, the daemon runs on"

log "etcd down at start: h1 restarts from its state file"
kill_etcd
stop_daemon d1
start_daemon "${H[1]}" d1b "$WORK/h1.toml"; wait_ready d1b
t0=$(date +%s%N)
wait_until -t 10 pings 1 "${O[2]}" || die "h1 started without etcd cannot reach h2 (its state file's member)"
t1=$(date +%s%N)
info "start without etcd: h1 -> h2 ping after $(((t1 - t0) / 1000000)) ms"
ok "h1 forwards to its state file's members while etcd is down"

log "etcd down at start, no state file: h4 starts with no peer, and joins once etcd is back"
sed "s|$WORK/h4-state.json|$WORK/h4-fresh-state.json|" "$WORK/h4.toml" >"$WORK/h4c.toml"
start_daemon "${H[4]}" d4c "$WORK/h4c.toml"; wait_ready d4c
sleep 2
kill -0 "${_DAEMON_PID[d4c]}" || die "d4c exited because etcd is down"
assert_eq "peers of h4 started without etcd or state file" 0 "$(ovl peers --admin "$WORK/h4.sock" --json | jq '.[0].peers | length')"
start_etcd
t0=$(date +%s%N)
wait_until -t 30 pings 4 "${O[2]}" || die "h4 did not join h2 after etcd came back"
wait_until -t 10 pings 1 "${O[4]}" || die "h1 (started from its state file) did not learn h4 after etcd came back"
info "etcd back: h4 pings h2 after $((($(date +%s%N) - t0) / 1000000)) ms"
[[ -s $WORK/h4-fresh-state.json ]] || die "h4 wrote no state file"
ok "started without etcd and state file, joined when etcd came back, state file written"
