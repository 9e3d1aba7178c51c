#!/usr/bin/env bash
# 86-restart.sh - the daemon's own restart: clean (SIGTERM) and after a crash (SIGKILL).
#
#   netns h1                                                  netns h2
#   <P>u1 192.0.2.1/24  <========= veth underlay =========>   <P>u2 192.0.2.2/24
#   blue: vni 42, TAP <P>b created by the daemon               blue: vni 42, <P>b 198.51.100.2/24
#   red:  vni 43, TAP <P>r persistent (made by `ip tuntap`)    red:  vni 43, <P>r 203.0.113.2/24
#
# Proves:
#   - SIGTERM, then start again: overlay pings on both networks work again (the time from the
#     new process's start to the first answered ping is printed, not asserted);
#   - SIGKILL leaves the persistent TAP <P>r behind (the daemon-created <P>b goes with the
#     process); the next start reuses <P>r (logged created=false), recreates <P>b, and both
#     networks forward again; the time to the first answered ping is printed;
#   - the final SIGTERM stop is clean and the persistent TAP is left in place.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
B=${PREFIX}b R=${PREFIX}r

add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1
ip -n "$H1" tuntap add mode tap name "$R" || die "cannot create a persistent TAP $R in $H1"

write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$B" "198.51.100.1/24" "$U2"
add_network "$WORK/h1.toml" red 43 "$R" "203.0.113.1/24" "$U2"
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$B" "198.51.100.2/24" "$U1"
add_network "$WORK/h2.toml" red 43 "$R" "203.0.113.2/24" "$U1"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d2
start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1
wait_ping "$H1" 198.51.100.2
wait_ping "$H1" 203.0.113.2
ping_ok "$H1" 198.51.100.2 3
ping_ok "$H1" 203.0.113.2 3

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# restart_and_measure LABEL - start d1 again, wait for pings on both networks; prints the time
# from the start of the process to the first answered ping on each
restart_and_measure() {
  local label=$1 t0 t1 dst
  t0=$(now_ms)
  start_daemon "$H1" d1 "$WORK/h1.toml"
  for dst in 198.51.100.2 203.0.113.2; do
    wait_until -t 15 ns_exec "$H1" ping -n -c 1 -W 0.2 "$dst" || die "$label: no ping reply from $dst within 15 s of the restart"
    t1=$(now_ms)
    info "$label: first ping answered by $dst $((t1 - t0)) ms after the new process started (not asserted)"
  done
  wait_ready d1 5
  ok "$label: both networks forward again"
}

log "SIGTERM, then start again"
stop_daemon d1
link_exists "$H1" "$R" || die "persistent TAP $R vanished on a clean stop"
restart_and_measure "after SIGTERM"
ping_ok "$H1" 198.51.100.2 3
ping_ok "$H1" 203.0.113.2 3

log "SIGKILL (a crash), then start again"
kill -KILL "${_DAEMON_PID[d1]}"
wait_exit "${_DAEMON_PID[d1]}" 10 || die "d1 did not die on SIGKILL"
link_exists "$H1" "$R" || die "persistent TAP $R vanished with the killed daemon"
ok "the persistent TAP $R is left behind by the crash"
link_exists "$H1" "$B" && die "daemon-created TAP $B outlived the killed daemon"
ok "the daemon-created TAP $B went with the process"
restart_and_measure "after SIGKILL"
grep -q "tap=\"$R\" .*created=false" "${_DAEMON_LOG[d1]}" || die "the restarted daemon did not log reusing $R (created=false)"
ok "the restarted daemon reused the TAP left behind ($R, created=false)"
ping_ok "$H1" 198.51.100.2 3
ping_ok "$H1" 203.0.113.2 3

stop_daemon d1
stop_daemon d2
link_exists "$H1" "$R" || die "persistent TAP $R removed by the daemon"
ok "persistent TAP $R still in place after the stop"
log "PASS: restart"
