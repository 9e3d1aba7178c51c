#!/usr/bin/env bash
# 45-ebpf-fastpath.sh - known unicast really takes the eBPF fast path, and a SIGKILLed daemon
# leaves nothing forwarding behind and comes back right.
#
#   netns h1                                             netns h2
#   <P>u1 192.0.2.1/24  <======= veth underlay =======>  <P>u2 192.0.2.2/24
#   overlayd (datapath "ebpf"): vni 42, tap 198.51.100.1  ....  same, tap 198.51.100.2
#
# Proves (whatever OVERLAYD_DATAPATH says: this lab sets node.datapath = "ebpf" itself):
#   - both daemons start with the fast path (log line, overlayd_datapath_info{datapath="ebpf"}
#     1), its programs attached to the TAP (TC egress) and the underlay device (TC ingress);
#   - a 200 MB TCP transfer arrives sha256-identical, and the fast-path counters account for
#     nearly all of it: h1's overlayd_fastpath_frames_total{direction="tap_rx"} rises by at least
#     90% of its TAP rx frames, h2's tunnel_rx by at least 90% of its tunnel rx packets; the
#     folded counters are the usual ones (overlayd_tap_*, overlayd_tunnel_*), and exact: the
#     packets h1 counts as sent to h2 are the packets h2 counts as received from h1;
#   - the daemons' own CPU time during the transfer stays under a quarter of its duration
#     (the userspace path needs most of a core for this: it fails that bound);
#   - ageing stays the table's, fed by the programs: with fdb_ageing_secs = 4, 12 s of pings
#     carried by the fast path expire no MAC (the programs' last-seen times refresh them);
#   - SIGKILL of h1's daemon in the middle of a transfer: no program of ours stays on h1's
#     devices (TCX links go with the process), the daemon restarts, the programs are attached
#     once again (not twice), ping and a new transfer work (sha256), and the new daemon's
#     counters start from zero and count the new transfer on the fast path.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v bpftool >/dev/null || die "bpftool not installed"
command -v curl >/dev/null || die "curl not installed"
command -v jq >/dev/null || die "jq not installed"
unset OVERLAYD__NODE__DATAPATH

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24"
add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"

ebpf_config() { # FILE UNDERLAY OVERLAY PEER
  write_config "$1" "$2" datapath='"ebpf"'
  add_network "$1" blue 42 "$TAP" "$3/24" "$4" fdb_ageing_secs=4
}
ebpf_config "$WORK/h1.toml" "$U1" "$O1" "$U2"
ebpf_config "$WORK/h2.toml" "$U2" "$O2" "$U1"
assert_ok "overlayd check accepts datapath = \"ebpf\"" "$OVERLAYD_BIN" check --config "$WORK/h1.toml"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

# tcx_progs NAME NS DEV DIRECTION - how many TCX links daemon NAME holds on DEV of NS
# (ingress|egress), read off the fdinfo of its link file descriptors
tcx_progs() {
  local ix f n=0
  ix=$(ns_exec "$2" cat "/sys/class/net/$3/ifindex") || die "no device $3 in $2"
  for f in /proc/"${_DAEMON_PID[$1]}"/fdinfo/*; do
    awk -v ix="$ix" -v d="($4)" '
      $1 == "link_type:" && $2 == "tcx" { tcx = 1 }
      $1 == "ifindex:" { i = $2 }
      $1 == "attach_type:" { a = $3 }
      END { exit !(tcx && i == ix && a == d) }' "$f" 2>/dev/null && n=$((n + 1))
  done
  echo "$n"
}
# link_ids NAME - the ids of the TCX links daemon NAME holds
link_ids() {
  cat /proc/"${_DAEMON_PID[$1]}"/fdinfo/* 2>/dev/null | awk '$1 == "link_type:" { t = $2 } $1 == "link_id:" && t == "tcx" { print $2 }'
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # utime + stime of PID, in ticks

log "the fast path is loaded"
grep -q 'data path: eBPF fast path' "$WORK/d1.log" || die "d1 did not log that it uses the eBPF fast path"
ok "d1 logged that it uses the eBPF fast path"
for h in 1 2; do
  t=$(scrape "$PREFIX-h$h" http://127.0.0.1:9477/metrics)
  assert_eq "h$h overlayd_datapath_info{datapath=\"ebpf\"}" 1 "$(metric "$t" 'overlayd_datapath_info{datapath="ebpf",network="blue"}')"
  assert_eq "h$h: programs on the TAP's TC egress" 1 "$(tcx_progs "d$h" "$PREFIX-h$h" "$TAP" egress)"
  assert_eq "h$h: programs on the underlay's TC ingress" 1 "$(tcx_progs "d$h" "$PREFIX-h$h" "${PREFIX}u$h" ingress)"
done

wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3
ping_ok "$H2" "$O1" 3
sleep 0.3 # the MACs the pings taught are mirrored into the maps (every 50 ms)

log "a 200 MB transfer takes the fast path"
make_random_file "$WORK/payload" 200
before1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
before2=$(scrape "$H2" http://127.0.0.1:9477/metrics)
c1=$(cpu_ticks "${_DAEMON_PID[d1]}") c2=$(cpu_ticks "${_DAEMON_PID[d2]}")
t0=$(date +%s%N)
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlay h1->h2 (200 MB)"
t1=$(date +%s%N)
c1=$(($(cpu_ticks "${_DAEMON_PID[d1]}") - c1)) c2=$(($(cpu_ticks "${_DAEMON_PID[d2]}") - c2))
after1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
after2=$(scrape "$H2" http://127.0.0.1:9477/metrics)
d() { echo $(($(metric "$2" "$3") - $(metric "$1" "$3"))); } # d BEFORE AFTER SERIES
tap_rx=$(d "$before1" "$after1" 'overlayd_tap_frames_total{direction="rx",network="blue"}')
fast_tx=$(d "$before1" "$after1" 'overlayd_fastpath_frames_total{direction="tap_rx",network="blue"}')
tun_rx=$(d "$before2" "$after2" "overlayd_tunnel_packets_total{direction=\"rx\",network=\"blue\",peer=\"$U1\"}")
fast_rx=$(d "$before2" "$after2" 'overlayd_fastpath_frames_total{direction="tunnel_rx",network="blue"}')
info "h1: TAP rx frames +$tap_rx, of which the fast path +$fast_tx; h2: tunnel rx +$tun_rx, fast path +$fast_rx"
assert_ge "h1 TAP rx frames during the transfer" 1000 "$tap_rx"
assert_ge "h1 fast-path frames, x10 (>= 9 x TAP rx frames)" $((9 * tap_rx)) $((10 * fast_tx))
assert_ge "h2 fast-path tunnel packets, x10 (>= 9 x tunnel rx packets)" $((9 * tun_rx)) $((10 * fast_rx))
tx_bytes=$(d "$before1" "$after1" "overlayd_tunnel_bytes_total{direction=\"tx\",network=\"blue\",peer=\"$U2\"}")
assert_ge "h1 tunnel tx bytes (the 200 MB, folded into overlayd_tunnel_bytes_total)" $((200 * 1024 * 1024)) "$tx_bytes"
# exact: every packet h1 counts as sent to h2, h2 counts as received from h1, give or take the
# keepalives that crossed between the scrapes (a frame of the flow that the receiving side
# leaves to its userspace path, which counts a GRO batch as one packet, shows as a shortfall)
tx_p=$(d "$before1" "$after1" "overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"$U2\"}")
slack=$((($(date +%s%N) - t0) / 1000000000 + 3))
dp=$((tx_p - tun_rx))
((dp < 0)) && dp=$((-dp))
info "h1 tunnel tx packets +$tx_p, h2 tunnel rx packets +$tun_rx"
assert_ge "keepalive slack vs |h1 tunnel tx packets - h2 tunnel rx packets|" "$dp" "$slack"
hz=$(getconf CLK_TCK)
ms=$(((t1 - t0) / 1000000))
info "transfer: $ms ms at $TRANSFER_MBIT Mbit/s; daemon CPU: h1 $((c1 * 1000 / hz)) ms, h2 $((c2 * 1000 / hz)) ms"
# CPU time a quarter of the wall time at most (x4 to stay in integers)
assert_ge "transfer time vs 4 x h1 daemon CPU time (ms)" $((4 * c1 * 1000 / hz)) "$ms"
assert_ge "transfer time vs 4 x h2 daemon CPU time (ms)" $((4 * c2 * 1000 / hz)) "$ms"

log "ageing: MACs the fast path forwards from stay learned (fdb_ageing_secs = 4)"
e1=$(metric "$(scrape "$H1" http://127.0.0.1:9477/metrics)" 'overlayd_fdb_events_total{event="expired",network="blue"}')
e2=$(metric "$(scrape "$H2" http://127.0.0.1:9477/metrics)" 'overlayd_fdb_events_total{event="expired",network="blue"}')
ping_ok "$H1" "$O2" 60 -i 0.2
after1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
assert_eq "h1 MACs expired during 12 s of fast-path pings" 0 "$(($(metric "$after1" 'overlayd_fdb_events_total{event="expired",network="blue"}') - e1))"
assert_eq "h2 MACs expired during 12 s of fast-path pings" 0 "$(($(metric "$(scrape "$H2" http://127.0.0.1:9477/metrics)" 'overlayd_fdb_events_total{event="expired",network="blue"}') - e2))"
assert_eq "h1 FDB entries (its TAP's MAC and h2's)" 2 "$(metric "$after1" 'overlayd_fdb_entries{network="blue"}')"

log "SIGKILL of d1 in the middle of a transfer"
start_bg "$H2" "$WORK/sink.log" socat -u "TCP-LISTEN:5002,bind=$O2,reuseaddr" /dev/null
wait_until -t 10 _tcp_listening "$H2" 5002 || die "sink did not start"
start_bg "$H1" "$WORK/source.log" socat -u "OPEN:$WORK/payload" "TCP:$O2:5002"
source_pid=$BG_PID
sleep 0.3
killed_links=$(link_ids d1)
[[ -n $killed_links ]] || die "d1 holds no TCX links"
kill -KILL "${_DAEMON_PID[d1]}"
wait_exit "${_DAEMON_PID[d1]}" 10 || die "d1 did not die on SIGKILL"
ok "d1 killed (status $EXIT_STATUS)"
left=0
for id in $killed_links; do
  bpftool -j link show | jq -e --argjson id "$id" 'any(.[]; .id == $id)' >/dev/null && left=$((left + 1))
done
assert_eq "TCX links of the killed daemon left in the kernel (of $(wc -w <<<"$killed_links"))" 0 "$left"
wait_until -t 5 bash -c "! ip -n $H1 link show dev $TAP" || die "the TAP of the killed daemon is still there"
ok "the killed daemon's TAP is gone with it"
kill -TERM "$source_pid" 2>/dev/null || true # its connection died with the TAP
wait_exit "$source_pid" 10 || die "the sender of the interrupted transfer did not stop"

start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1
assert_eq "h1 after restart: programs on the TAP's TC egress" 1 "$(tcx_progs d1 "$H1" "$TAP" egress)"
assert_eq "h1 after restart: programs on the underlay's TC ingress" 1 "$(tcx_progs d1 "$H1" "${PREFIX}u1" ingress)"
wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3
sleep 0.3
make_random_file "$WORK/payload2" 50
before1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
# what the host sent since the restart: the pings, and the last words of the connections the
# kill cut (resets, retransmissions): a few hundred at most, not the thousands counted before
n=$(metric "$before1" 'overlayd_tap_frames_total{direction="rx",network="blue"}')
((n < 1000)) || die "restarted d1 counts $n TAP rx frames before the new transfer (expected a fresh count)"
ok "restarted d1's counters start afresh: $n TAP rx frames"
tcp_transfer "$H1" "$H2" "$O2" 5003 "$WORK/payload2" "overlay h1->h2 after the restart (50 MB)"
after1=$(scrape "$H1" http://127.0.0.1:9477/metrics)
tap_rx=$(d "$before1" "$after1" 'overlayd_tap_frames_total{direction="rx",network="blue"}')
fast_tx=$(d "$before1" "$after1" 'overlayd_fastpath_frames_total{direction="tap_rx",network="blue"}')
info "restarted h1: TAP rx frames +$tap_rx, of which the fast path +$fast_tx"
assert_ge "restarted h1 fast-path frames, x10 (>= 9 x TAP rx frames)" $((9 * tap_rx)) $((10 * fast_tx))

log "clean stop removes the programs"
links="$(link_ids d1) $(link_ids d2)"
stop_daemon d1
stop_daemon d2
left=0
for id in $links; do
  bpftool -j link show | jq -e --argjson id "$id" 'any(.[]; .id == $id)' >/dev/null && left=$((left + 1))
done
assert_eq "TCX links left in the kernel after SIGTERM (of $(wc -w <<<"$links"))" 0 "$left"
log "PASS: eBPF fast path"
