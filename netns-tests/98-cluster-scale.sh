#!/usr/bin/env bash
# 98-cluster-scale.sh - a simulated fleet: SCALE_AGENTS (default 1000) membership agents (the
# real membership logic and the real etcd backend, each with its own connection, lease and
# watch) against a real etcd, observed by a real daemon.
#
#   netns e  192.0.2.10: etcd, and the agents (examples/cluster_scale)
#   netns h1 192.0.2.1: overlayd with `cluster = true`, `peers = []`
#   The agents' underlay addresses are fake fleet addresses (198.18.0.0/15); h1 routes them to
#   the etcd host, which does not forward: tunnel packets to them go nowhere else.
#
# Proves: every agent converges on the full membership (N-1 peers) and the daemon on N; every
# change reaches every agent. Prints (never asserts) the join-storm time, change propagation
# p50/p99 at 10 changes/s, re-list time, etcd RSS/CPU/DB size, the daemon's RSS/CPU with N
# peers, and the cost of one broadcast to every peer (tunnel packets and CPU).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"
SIM=${SCALE_BIN:-$(dirname "$OVERLAYD_BIN")/examples/cluster_scale}
[[ -x $SIM ]] || die "the simulator is not built at $SIM (cargo build --release --example cluster_scale)"
N=${SCALE_AGENTS:-1000}
CHANGES=${SCALE_CHANGES:-50}

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
H1=$PREFIX-h1
U1=192.0.2.1
TAP=${PREFIX}tap
export ETCDCTL_API=3

log "underlay: h1 and the etcd host; fleet addresses 198.18.0.0/15 routed to the etcd host"
bridged_underlay "$SW" "$H1" "$U1/24" "$E" "$EA/24"
ns_exec "$H1" ip route add 198.18.0.0/15 via "$EA"
ns_exec "$E" sysctl -qw net.ipv4.ip_forward=0
start_bg "$E" "$WORK/etcd.log" etcd --name e1 --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$EA:2379" --advertise-client-urls "http://$EA:2379" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster e1=http://127.0.0.1:2380
ETCD_PID=$BG_PID
wait_until -t 20 ns_exec "$E" etcdctl --endpoints "http://$EA:2379" endpoint health || die "etcd did not become healthy"
ok "etcd up"

write_config "$WORK/h1.toml" "$U1"
set_metrics_listen "$WORK/h1.toml" "$U1:9477"
printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "observer"\nlease_ttl_secs = 15\n' "$EA" >>"$WORK/h1.toml"
add_network "$WORK/h1.toml" blue 42 "$TAP" 198.51.100.1/24 "" cluster=true
start_daemon "$H1" d1 "$WORK/h1.toml"; wait_ready d1

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
e0=$(cpu_ticks "$ETCD_PID")

log "$N agents join at once, then $CHANGES changes at 10/s"
: >"$WORK/sim.log"
SCALE_HOLD=1 start_bg "$E" "$WORK/sim.log" env SCALE_HOLD=1 "$SIM" "http://$EA:2379" "$N" "$CHANGES"
SIMPID=$BG_PID
wait_until -t 900 grep -q 'holding\|only' "$WORK/sim.log" || { cat "$WORK/sim.log" >&2; die "the simulation did not finish within 900 s"; }
cat "$WORK/sim.log" | sed 's/^/   /'
grep -q holding "$WORK/sim.log" || die "the simulation failed"
grep -q '^join storm: .* every one sees' "$WORK/sim.log" || die "the agents did not converge"

peers() { "$OVERLAYD_BIN" peers --admin "$WORK/h1.sock" --json | jq '.[0].peers | length'; }
wait_until -t 120 eval "(( \$(peers) >= N ))" || die "the daemon has $(peers) peers, expected $N"
ok "the observing daemon has $(peers) cluster peers"
e1=$(cpu_ticks "$ETCD_PID")
info "etcd: RSS $(($(rss_kb "$ETCD_PID") / 1024)) MiB, CPU $(((e1 - e0) / HZ)) s over the run, DB $(ns_exec "$E" etcdctl --endpoints "http://$EA:2379" endpoint status -w json | jq '.[0].Status.dbSize / 1024 | floor') KiB"
DPID=${_DAEMON_PID[d1]}
d0=$(cpu_ticks "$DPID")
sleep 10
d1=$(cpu_ticks "$DPID")
info "daemon with $(peers) peers: RSS $(($(rss_kb "$DPID") / 1024)) MiB, CPU $(awk -v t=$((d1 - d0)) -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz / 10 * 100 }') % of a core at rest (keepalives to every peer each second)"

log "the cost of one broadcast to every peer"
m() { metric "$(scrape "$H1" "http://$U1:9477/metrics")" "$1"; }
FLOOD='overlayd_flooded_frames_total{network="blue"}'
tx_total() { scrape "$H1" "http://$U1:9477/metrics" | awk '/^overlayd_tunnel_packets_total\{direction="tx",network="blue"/ { s += $2 } END { print s + 0 }'; }
f0=$(m "$FLOOD"); t0=$(tx_total); c0=$(cpu_ticks "$DPID"); w0=$(date +%s%N)
B=200
for _ in $(seq $B); do ns_exec "$H1" arping -c 1 -w 0.01 -I "$TAP" 198.51.100.99 >/dev/null 2>&1 || true; done
f1=$(m "$FLOOD"); t1=$(tx_total); c1=$(cpu_ticks "$DPID"); w1=$(date +%s%N)
fl=$((f1 - f0))
(( fl > 0 )) || die "no broadcast was flooded"
# the daemon's CPU over the window, less what it spends at rest (keepalives) over as long
us=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v rest=$((d1 - d0)) -v w=$(((w1 - w0) / 1000000)) -v b="$fl" \
  'BEGIN { printf "%.0f", (c / hz - rest / hz / 10 * w / 1000) * 1e6 / b }')
info "$fl broadcasts flooded: $((t1 - t0)) tunnel packets, $(((t1 - t0) / fl)) per broadcast; daemon CPU about $us us per broadcast (keepalive CPU at rest subtracted; 10 ms tick granularity)"
kill -INT "$SIMPID"
wait_exit "$SIMPID" 60 || die "the simulation did not stop"
ok "done"
