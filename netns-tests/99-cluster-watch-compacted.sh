#!/usr/bin/env bash
# 99-cluster-watch-compacted.sh - a daemon whose etcd watch falls behind a compaction re-lists
# the members, so the delete it missed leaves no stale peer.
#
#   netns e  192.0.2.10 (etcd) ─┐
#   netns h1, h2 192.0.2.1..2  ─┴─ bridge in netns sw (the L3 underlay)
#
# etcd only cancels a watch for compaction when the watcher is *behind*: a watcher that keeps
# up gets every event before it is compacted away. A few changes while a daemon is stopped do
# not put it behind: etcd has already sent them into the connection, and they arrive in order
# after SIGCONT. So while h2 is stopped (SIGSTOP), the lab writes (through etcd's own HTTP
# gateway) records of another network until etcd's send path to h2 is full and etcd reports a
# slow watcher (its etcd_debugging_mvcc_slow_watcher_total), just as a busy fleet would with
# many small records. Then, in order: a ghost member of blue is deleted, another one is added,
# and the history is compacted (physically) past all of it.
#
# Proves:
#   - etcd really had h2's watch behind when it compacted (its slow-watcher gauge > 0);
#   - after SIGCONT, h2 re-lists with reason "compacted"
#     (overlayd_cluster_resyncs_total{reason="compacted"} rose, and it logged why);
#   - the ghost, whose put h2 received before it fell behind and whose delete was compacted
#     away, is not left as a peer (without the re-list it would be, until the periodic one);
#   - the member added while h2 was behind is a peer of h2; h1 and h2 still ping each other.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
TAP=${PREFIX}tap
U=(- 192.0.2.1 192.0.2.2)
O=(- 198.51.100.1 198.51.100.2)
H=(- "$PREFIX-h1" "$PREFIX-h2")
export ETCDCTL_API=3

bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "$E" "$EA/24"
etcd_up "$E" "$EA"
ectl() { ns_exec "$E" etcdctl --endpoints "http://$EA:2379" "$@"; }

# A lease long enough that h2's stop does not expire it: this lab is about the watch alone.
for i in 1 2; do
  f=$WORK/h$i.toml
  write_config "$f" "${U[i]}"
  set_metrics_listen "$f" "${U[i]}:9477"
  printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "h%s"\nlease_ttl_secs = 60\nstate_file = "%s"\n' \
    "$EA" "$i" "$WORK/h$i-state.json" >>"$f"
  add_network "$f" blue 42 "$TAP" "${O[i]}/24" "" cluster=true
  start_daemon "${H[i]}" "d$i" "$f"
done
wait_ready d1; wait_ready d2
wait_until -t 30 ns_exec "${H[2]}" ping -n -c 1 -W 1 "${O[1]}" || die "h1 and h2 did not find each other through etcd"
ok "h1 and h2 joined through etcd"

is_peer() { "$OVERLAYD_BIN" peers --admin "$WORK/h$1.sock" --json | jq -e --arg a "$2" '.[0].peers | any(.peer == $a)' >/dev/null; }
not_peer() { ! is_peer "$@"; }
compacted() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" 'overlayd_cluster_resyncs_total{reason="compacted"}'; }
# slow_watchers - etcd's count of watchers behind the store (fails the lab if etcd has no such gauge)
slow_watchers() {
  local m
  m=$(ns_exec "$E" curl -fsS --max-time 5 "http://$EA:2379/metrics") || die "etcd's /metrics does not answer"
  awk '$1 == "etcd_debugging_mvcc_slow_watcher_total" { print $2; f = 1 } END { exit !f }' <<<"$m" ||
    die "etcd exports no etcd_debugging_mvcc_slow_watcher_total"
}
rec() { printf '{"underlay":"%s","encap":"vxlan","vni":42,"port":4789,"state":"active"}' "$1"; }
K=/overlayd/v1/networks/blue/members
# fill N - N records of 32 KiB under another network's prefix, one revision each (etcd's HTTP
# gateway, one client process), then all deleted at once so later listings stay small
fill() {
  ns_exec "$E" /usr/bin/python3 - "http://$EA:2379" "$1" <<'PY'
import base64, json, sys, urllib.request
api, n = sys.argv[1], int(sys.argv[2])
b = lambda s: base64.b64encode(s).decode()
value = b(b"x" * 32768)
for i in range(n):
    body = json.dumps({"key": b(b"/overlayd/v1/networks/other/members/n%d" % i), "value": value}).encode()
    req = urllib.request.Request(api + "/v3/kv/put", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()
PY
  ectl del --prefix /overlayd/v1/networks/other/ >/dev/null
}

c0=$(compacted 2)
assert_eq "compaction re-lists by h2 before the test" 0 "$c0"
log "h2 stopped (SIGSTOP); a ghost member appears; another network's records churn until etcd has h2's watch behind"
kill -STOP "${_DAEMON_PID[d2]}"
ectl put "$K/ghost" "$(rec 192.0.2.77)" >/dev/null
rounds=0
while sw=$(slow_watchers) && [[ $sw == 0 ]]; do
  ((rounds < 20)) || die "etcd never had a slow watcher after $((rounds * 100)) records of 32 KiB"
  fill 100
  rounds=$((rounds + 1))
  sleep 0.3   # etcd moves a blocked watcher to its slow set on its next pass
done
[[ $sw =~ ^[1-9][0-9]*$ ]] || die "etcd's slow-watcher gauge is unreadable: '$sw'"
info "etcd reports $sw slow watcher(s) after $((rounds * 100)) records of 32 KiB ($((rounds * 100 * 32 / 1024)) MiB)"
ectl del "$K/ghost" >/dev/null
ectl put "$K/late" "$(rec 192.0.2.78)" >/dev/null
rev=$(ectl endpoint status -w json | jq '.[0].Status.header.revision')
ectl compact --physical "$rev" >/dev/null
ok "history compacted at revision $rev, past the ghost's delete"
kill -CONT "${_DAEMON_PID[d2]}"

log "h2 resumed (SIGCONT)"
wait_until -t 20 eval '(( $(compacted 2) > c0 ))' || die "h2 did not re-list after its watch was compacted"
grep -q 'the watch ended; listing again.*reason="compacted"' "$WORK/d2.log" || die "h2 did not log the compaction re-list"
ok "h2 re-listed: overlayd_cluster_resyncs_total{reason=\"compacted\"} $c0 -> $(compacted 2)"
wait_until -t 10 is_peer 2 192.0.2.78 || die "h2 did not pick up the member added while its watch was behind"
wait_until -t 10 not_peer 2 192.0.2.77 || die "h2 kept a stale peer (192.0.2.77, whose delete was compacted away)"
ok "no stale peer on h2; the member added meanwhile is a peer"
ectl del "$K/late" >/dev/null
wait_until -t 20 ns_exec "${H[2]}" ping -n -c 1 -W 1 "${O[1]}" || die "h2 does not reach h1 after it resumed"
wait_until -t 20 ns_exec "${H[1]}" ping -n -c 1 -W 1 "${O[2]}" || die "h1 does not reach h2 after it resumed"
ok "h1 and h2 ping each other"
stop_daemon d2
stop_daemon d1
log "PASS: a watch compacted while behind is followed by a re-list; no stale peer"
