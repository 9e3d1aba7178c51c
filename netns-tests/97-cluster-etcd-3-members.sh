#!/usr/bin/env bash
# 97-cluster-etcd-3-members.sh - membership through a three-member etcd cluster, one member
# killed under traffic.
#
#   netns e1..e3 192.0.2.10..12 (etcd members) ─┐
#   netns h1..h3 192.0.2.1..3                   ─┴─ bridge in netns sw
#
# Every daemon lists all three endpoints. Proves:
#   - three daemons with `peers = []` join through the three-member cluster and ping pairwise;
#   - one etcd member SIGKILLed during 50 pings/s: every ping answered, no member removed, no
#     MAC flushed, and the cluster still carries changes: h3 leaving (SIGTERM) is removed at h1;
#   - the killed member restarted: a fourth registration (h3 again) reaches everyone.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"

SW=$PREFIX-sw
TAP=${PREFIX}tap
TTL=5
EA=(- 192.0.2.10 192.0.2.11 192.0.2.12)
EN=(- "$PREFIX-e1" "$PREFIX-e2" "$PREFIX-e3")
U=(- 192.0.2.1 192.0.2.2 192.0.2.3)
O=(- 198.51.100.1 198.51.100.2 198.51.100.3)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3")
export ETCDCTL_API=3
ENDPOINTS="http://${EA[1]}:2379,http://${EA[2]}:2379,http://${EA[3]}:2379"

log "underlay: three hosts and three etcd members on one bridge"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24" \
  "${EN[1]}" "${EA[1]}/24" "${EN[2]}" "${EA[2]}/24" "${EN[3]}" "${EA[3]}/24"

declare -A EPID
start_member() { # start_member I STATE
  local i=$1
  start_bg "${EN[i]}" "$WORK/etcd$i.log" etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://${EA[i]}:2379" --advertise-client-urls "http://${EA[i]}:2379" \
    --listen-peer-urls "http://${EA[i]}:2380" --initial-advertise-peer-urls "http://${EA[i]}:2380" \
    --initial-cluster "e1=http://${EA[1]}:2380,e2=http://${EA[2]}:2380,e3=http://${EA[3]}:2380" \
    --initial-cluster-token "$PREFIX" --initial-cluster-state "$2"
  EPID[$i]=$BG_PID
}
for i in 1 2 3; do start_member "$i" new; done
healthy() { ns_exec "${EN[1]}" etcdctl --endpoints "$ENDPOINTS" endpoint health; }
wait_until -t 30 healthy || { tail -n 20 "$WORK/etcd1.log" >&2; die "the etcd cluster did not become healthy"; }
ok "three-member etcd cluster healthy"

cfg() {
  local i=$1 f=$WORK/h$1.toml list
  list="\"http://${EA[1]}:2379\", \"http://${EA[2]}:2379\", \"http://${EA[3]}:2379\""
  write_config "$f" "${U[i]}"
  set_metrics_listen "$f" "${U[i]}:9477"
  printf '\n[cluster]\nendpoints = [%s]\nnode_name = "h%s"\nlease_ttl_secs = %s\n' "$list" "$i" "$TTL" >>"$f"
  add_network "$f" blue 42 "$TAP" "${O[i]}/24" "" cluster=true
}
is_peer() { "$OVERLAYD_BIN" peers --admin "$WORK/h$1.sock" --json | jq -e --arg a "$2" '.[0].peers | any(.peer == $a)' >/dev/null; }
not_peer() { ! is_peer "$@"; }
pings() { ns_exec "${H[$1]}" ping -n -c 1 -W 1 "$2" >/dev/null; }
all_pairs() {
  local i j
  for i in 1 2 3; do for j in 1 2 3; do ((i == j)) || pings "$i" "${O[j]}" || return 1; done; done
}

log "join through the three-member cluster"
t0=$(date +%s%N)
for i in 1 2 3; do cfg "$i"; start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"; done
for i in 1 2 3; do wait_ready "d$i"; done
wait_until -t 30 all_pairs || die "the daemons did not converge within 30 s"
info "join convergence: $((($(date +%s%N) - t0) / 1000000)) ms"
ok "every pair pings"

log "etcd member e1 SIGKILLed during 50 pings/s h1 -> h2"
m() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" "$2"; }
FLUSHED='overlayd_fdb_events_total{event="flushed",network="blue"}'
REMOVED='overlayd_cluster_events_total{event="removed",network="blue"}'
declare -A FL RM
for i in 1 2; do FL[$i]=$(m "$i" "$FLUSHED"); RM[$i]=$(m "$i" "$REMOVED"); done
PING_DEADLINE=30 ping_start three "${H[1]}" "${O[2]}" 750 -i 0.02
sleep 1
kill -KILL "${EPID[1]}"; wait "${EPID[1]}" 2>/dev/null || true
info "e1 killed"
sleep $((TTL * 2))
ping_finish three
for i in 1 2; do
  assert_eq "MACs flushed by d$i with e1 down for $((TTL * 2)) s" "${FL[$i]}" "$(m "$i" "$FLUSHED")"
  assert_eq "members removed by d$i with e1 down" "${RM[$i]}" "$(m "$i" "$REMOVED")"
done
if grep -q 'lease expired' "$WORK/d1.log" "$WORK/d2.log"; then die "a lease expired with two of three etcd members up"; fi
ok "nothing lost, no lease expired, nothing removed or flushed with one etcd member down"

log "h3 leaves while e1 is down"
t0=$(date +%s%N)
stop_daemon d3
wait_until -t 10 not_peer 1 "${U[3]}" || die "h1 still has h3 10 s after it left (e1 down)"
info "leave with one etcd member down: removed at h1 after $((($(date +%s%N) - t0) / 1000000)) ms"
grep -q 'member removed.*node="h3".*why="left"' "$WORK/d1.log" || die "h1 did not remove h3 as left"

log "e1 restarted; h3 joins again"
start_member 1 existing
wait_until -t 30 healthy || die "the etcd cluster is not healthy after e1 restarted"
start_daemon "${H[3]}" d3b "$WORK/h3.toml"; wait_ready d3b
wait_until -t 30 all_pairs || die "h3 did not rejoin"
ok "h3 rejoined; every pair pings"
