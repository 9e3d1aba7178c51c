#!/usr/bin/env bash
# 98-cluster-scale.sh - a simulated fleet: SCALE_AGENTS (default 1000) membership agents (the
# real membership logic and the real etcd backend, each with its own connection, lease and
# watch) against a real etcd, each advertising a VM's MAC and address (SCALE_MACS per agent,
# default 1: the real advertiser, its writes under the agent's lease), observed by two real
# daemons.
#
#   netns e  192.0.2.10: etcd, and the agents (examples/cluster_scale)
#   netns h1 192.0.2.1: overlayd with `cluster = true`, `advertise = "macs+ips"`,
#            `arp_suppress = true`, `peers = []`
#   netns h2 192.0.2.2: overlayd with `cluster = true`, `peers = []` (no advertisement)
#   The agents' underlay addresses are fake fleet addresses (198.18.0.0/15), their VMs'
#   addresses too (198.19.0.0/16); h1 and h2 route them to the etcd host, which does not
#   forward: tunnel packets to them go nowhere else.
#
# Proves: every agent converges on the full membership (N-1 peers) and on every other agent's
# MACs, the daemons on N peers, h1 on the N advertised MACs (type cluster) and their
# addresses; every change reaches every agent. Then the same frames go into h1's and h2's TAPs
# (ARP requests for K advertised addresses, unicast frames to K advertised MACs, ARP requests
# for addresses nobody advertises), and the tunnel packets they cost are counted from each
# daemon's metrics: with advertisement and arp_suppress, every request for an advertised
# address is answered locally (hit rate 100 %, no tunnel packet) and unicast goes to one peer,
# where without them each costs a copy to every peer; requests nobody can answer still flood
# (misses). Prints (never asserts) the join-storm and MAC times, change propagation p50/p99 at
# 10 changes/s, re-list time, etcd RSS/CPU/DB size, the daemon's RSS/CPU with N peers, and the
# cost of one broadcast to every peer (tunnel packets and CPU).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"
SIM=${SCALE_BIN:-$(dirname "$OVERLAYD_BIN")/examples/cluster_scale}
[[ -x $SIM ]] || die "the simulator is not built at $SIM (cargo build --release --example cluster_scale)"
N=${SCALE_AGENTS:-1000}
CHANGES=${SCALE_CHANGES:-50}
export SCALE_MACS=${SCALE_MACS:-1}
K=${SCALE_PROBES:-100}

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
H1=$PREFIX-h1
U1=192.0.2.1
H2=$PREFIX-h2
U2=192.0.2.2
TAP=${PREFIX}tap
export ETCDCTL_API=3

log "underlay: h1, h2 and the etcd host; fleet addresses 198.18.0.0/15 routed to the etcd host"
bridged_underlay "$SW" "$H1" "$U1/24" "$H2" "$U2/24" "$E" "$EA/24"
ns_exec "$H1" ip route add 198.18.0.0/15 via "$EA"
ns_exec "$H2" ip route add 198.18.0.0/15 via "$EA"
ns_exec "$E" sysctl -qw net.ipv4.ip_forward=0
etcd_up "$E" "$EA"

write_config "$WORK/h1.toml" "$U1"
set_metrics_listen "$WORK/h1.toml" "$U1:9477"
printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "observer"\nlease_ttl_secs = 15\n' "$EA" >>"$WORK/h1.toml"
add_network "$WORK/h1.toml" blue 42 "$TAP" 198.51.100.1/24 "" cluster=true 'advertise="macs+ips"' arp_suppress=true
start_daemon "$H1" d1 "$WORK/h1.toml"; wait_ready d1
write_config "$WORK/h2.toml" "$U2"
set_metrics_listen "$WORK/h2.toml" "$U2:9477"
printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "plain"\nlease_ttl_secs = 15\n' "$EA" >>"$WORK/h2.toml"
add_network "$WORK/h2.toml" blue 42 "$TAP" 198.51.100.2/24 "" cluster=true
start_daemon "$H2" d2 "$WORK/h2.toml"; wait_ready d2

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
((SCALE_MACS == 0)) || grep -q '^MAC advertisement: .* every agent bound' "$WORK/sim.log" || die "the agents did not bind each other's MACs"

peers() { "$OVERLAYD_BIN" peers --admin "$WORK/h${1:-1}.sock" --json | jq '.[0].peers | length'; }
wait_until -t 120 eval "(( \$(peers) >= N && \$(peers 2) >= N ))" || die "the daemons have $(peers) and $(peers 2) peers, expected $N"
ok "the observing daemons have $(peers) and $(peers 2) cluster peers"
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

if ((SCALE_MACS > 0)); then
log "flooding with and without advertisement: the same frames into h1's and h2's TAPs"
mh() { metric "$(scrape "$1" "http://$2:9477/metrics")" "$3"; }
macs_remote() { mh "$H1" "$U1" 'overlayd_cluster_macs{network="blue",origin="remote"}'; }
bindings() { mh "$H1" "$U1" 'overlayd_neigh_bindings{network="blue"}'; }
wait_until -t 120 eval "(( \$(macs_remote) >= N * SCALE_MACS && \$(bindings) >= N * SCALE_MACS ))" ||
  die "h1 has $(macs_remote) advertised MACs and $(bindings) bindings, expected $((N * SCALE_MACS))"
ok "h1 has the $((N * SCALE_MACS)) advertised MACs (type cluster) and their addresses"
# K agents spread over the fleet: their first VM's MAC and address (examples/cluster_scale)
targets=()
for ((q = 0; q < K; q++)); do
  j=$((q * N / K)) k=$((q * N / K * 4 + 1))
  targets+=("$(printf '02:aa:00:%02x:%02x:%02x' $((j >> 16)) $(((j >> 8) & 255)) $((j & 255)))/198.19.$((k / 256)).$((k % 256))")
done
# probe NS SRC_MAC SRC_IP KIND - send one frame per target into the TAP, 10 ms apart:
# KIND arp (broadcast request for its address), unicast (UDP to its MAC), or unknown (broadcast
# request for 198.19.255.<q>, which nobody advertises)
probe() {
  ns_exec "$1" /usr/bin/python3 - "$TAP" "$2" "$3" "$4" "${targets[@]}" <<'PY'
import logging, sys
logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.all import ARP, IP, UDP, Ether, sendp
tap, mac, ip, kind, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
frames = []
for q, t in enumerate(targets):
    tmac, tip = t.split("/")
    if kind == "arp":
        frames.append(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, pdst=tip))
    elif kind == "unknown":
        frames.append(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, pdst="198.19.255.%d" % (q % 250 + 1)))
    else:
        frames.append(Ether(src=mac, dst=tmac) / IP(src=ip, dst=tip) / UDP(sport=4000, dport=9) / (b"x" * 18))
sendp(frames, iface=tap, inter=0.01, verbose=False)
PY
}
txs() { scrape "$1" "http://$2:9477/metrics" | awk '/^overlayd_tunnel_packets_total\{direction="tx",network="blue"/ { s += $2 } END { print s + 0 }'; }
HIT='overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="hit"}'
MISS='overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="miss"}'
declare -A cost
# measure NAME NS ADDR MAC IP KIND - tunnel packets per frame of one probe, into cost[NAME]
measure() {
  local t0 t1
  t0=$(txs "$2" "$3")
  probe "$2" "$4" "$5" "$6"
  sleep 0.5
  t1=$(txs "$2" "$3")
  cost[$1]=$((t1 - t0))
}
h0=$(mh "$H1" "$U1" "$HIT") m0=$(mh "$H1" "$U1" "$MISS")
measure arp1 "$H1" "$U1" 02:00:00:00:01:01 198.51.100.11 arp
h1=$(mh "$H1" "$U1" "$HIT") m1=$(mh "$H1" "$U1" "$MISS")
measure uni1 "$H1" "$U1" 02:00:00:00:01:01 198.51.100.11 unicast
measure unk1 "$H1" "$U1" 02:00:00:00:01:01 198.51.100.11 unknown
h2=$(mh "$H1" "$U1" "$HIT") m2=$(mh "$H1" "$U1" "$MISS")
measure arp2 "$H2" "$U2" 02:00:00:00:02:01 198.51.100.12 arp
measure uni2 "$H2" "$U2" 02:00:00:00:02:01 198.51.100.12 unicast
ratio() { awk -v a="$1" -v b="$K" 'BEGIN { printf "%.2f", a / b }'; }
P1=$(peers) P2=$(peers 2)
info "tunnel packets per frame sent into the TAP ($K frames each; h1 has $P1 peers, h2 $P2):"
info "  broadcast ARP request for an advertised address: $(ratio "${cost[arp1]}") with advertisement + arp_suppress (h1), $(ratio "${cost[arp2]}") without (h2)"
info "  unicast to an advertised MAC never seen on the data path: $(ratio "${cost[uni1]}") with advertisement (h1), $(ratio "${cost[uni2]}") without (h2)"
info "  broadcast ARP request for an address nobody advertises: $(ratio "${cost[unk1]}") on h1 (flooded, as without)"
info "suppression on h1: $((h1 - h0)) hits and $((m1 - m0)) misses for the $K advertised addresses (hit rate $(awk -v h=$((h1 - h0)) -v k="$K" 'BEGIN { printf "%.0f", 100 * h / k }') %), $((h2 - h1)) hits and $((m2 - m1)) misses for the $K nobody advertises"
assert_eq "suppression hits on h1 for the $K advertised addresses" "$K" "$((h1 - h0))"
assert_eq "suppression misses on h1 for the $K advertised addresses" 0 "$((m1 - m0))"
assert_eq "tunnel packets on h1 for $K ARP requests for advertised addresses" 0 "${cost[arp1]}"
assert_ge "tunnel packets on h2 for the same $K requests (one per peer each)" $((K * N)) "${cost[arp2]}"
assert_eq "misses on h1 for the $K addresses nobody advertises" "$K" "$((m2 - m1))"
assert_ge "tunnel packets on h1 for those (flooded to every peer)" $((K * N)) "${cost[unk1]}"
assert_ge "tunnel packets on h1 for $K unicast frames to advertised MACs (at least one each)" "$K" "${cost[uni1]}"
((cost[uni1] <= K)) || die "unicast to advertised MACs cost ${cost[uni1]} tunnel packets on h1 for $K frames: some flooded"
assert_ge "tunnel packets on h2 for the same $K unicast frames (flooded to every peer)" $((K * N)) "${cost[uni2]}"
fi
kill -INT "$SIMPID"
wait_exit "$SIMPID" 60 || die "the simulation did not stop"
ok "done"
