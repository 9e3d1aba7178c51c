#!/usr/bin/env bash
# 87-peer-restart.sh - a peer daemon killed and restarted: detected down, its MACs flushed,
# traffic back within seconds of its return.
#
#   netns h1                                                  netns h2
#   <P>u1 192.0.2.1/24  <========= veth underlay =========>   <P>u2 192.0.2.2/24
#   blue: vni 42, <P>t 198.51.100.1/24                         blue: vni 42, <P>t 198.51.100.2/24
#
# Proves:
#   - with both daemons up, h1 exports overlayd_peer_up{network="blue",peer="192.0.2.2"} 1 and
#     knows h2's MAC behind the peer;
#   - h2's daemon killed with SIGKILL: h1 logs "peer down" (keepalives stop; 3 s timeout),
#     flushes h2's MAC from its table, and exports overlayd_peer_up 0;
#   - h2's daemon started again: h1 logs "peer up", exports 1 again, and overlay pings work
#     again; the time from h2's restart to the first answered ping is printed (not asserted).
#   - all of it twice: over VXLAN, and over keyed GRE (keepalives go through the GRE tunnel).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v jq >/dev/null || die "jq not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
T=${PREFIX}t
URL=http://127.0.0.1:9477/metrics
UP_SERIES="overlayd_peer_up{network=\"blue\",peer=\"$U2\"}"

add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

# scenario ENCAP - the whole story over one encapsulation
scenario() {
  local encap=$1 d1=d1-$1 d2=d2-$1
  log "over $encap"
  write_config "$WORK/h1-$encap.toml" "$U1"
  add_network "$WORK/h1-$encap.toml" blue 42 "$T" "$O1/24" "$U2" encap="\"$encap\""
  write_config "$WORK/h2-$encap.toml" "$U2"
  add_network "$WORK/h2-$encap.toml" blue 42 "$T" "$O2/24" "$U1" encap="\"$encap\""
  start_daemon "$H1" $d1 "$WORK/h1-$encap.toml"
  start_daemon "$H2" $d2 "$WORK/h2-$encap.toml"
  wait_ready $d1
  wait_ready $d2
  wait_ping "$H1" "$O2"
  ping_ok "$H1" "$O2" 3
  MAC2=$(link_mac "$H2" "$T")

  peer_up() { metric "$(scrape "$H1" "$URL")" "$UP_SERIES"; }
  peer_up_is() { [[ $(peer_up) == "$1" ]]; }
  mac2_row() { "$OVERLAYD_BIN" fdb --config "$WORK/h1-$encap.toml" --json | jq -r --arg m "$MAC2" '.[0].entries[] | select(.mac == $m) | "\(.kind) \(.port)"'; }

  wait_until -t 10 peer_up_is 1 || die "$UP_SERIES is not 1 with both daemons up (seen $(peer_up))"
  ok "$UP_SERIES 1"
  assert_eq "h2's MAC in h1's table" "peer $U2" "$(mac2_row)"

  log "kill h2's daemon (SIGKILL), $encap"
  kill -KILL "${_DAEMON_PID[$d2]}"
  wait_exit "${_DAEMON_PID[$d2]}" 10 || die "$d2 did not die"
  t_kill=$SECONDS
  wait_until -t 15 grep -q "peer down.*peer=\"$U2\"" "${_DAEMON_LOG[$d1]}" || die "h1 did not log the peer down within 15 s"
  ok "h1 logged the peer down after ~$((SECONDS - t_kill)) s: $(grep "peer down" "${_DAEMON_LOG[$d1]}" | tail -1 | sed 's/^.*WARN //')"
  assert_eq "$UP_SERIES after the kill" 0 "$(peer_up)"
  assert_eq "h2's MAC flushed from h1's table" "" "$(mac2_row)"

  log "start h2's daemon again"
  t0=$(($(date +%s%N) / 1000000))
  start_daemon "$H2" $d2 "$WORK/h2-$encap.toml"
  wait_until -t 15 ns_exec "$H1" ping -n -c 1 -W 0.2 "$O2" || die "no overlay ping reply within 15 s of h2's restart"
  t1=$(($(date +%s%N) / 1000000))
  info "first ping answered $((t1 - t0)) ms after h2's daemon was started again (not asserted)"
  wait_ready $d2 5
  up_after_down() { sed -n '/peer down/,$p' "${_DAEMON_LOG[$d1]}" | grep -q "peer up.*peer=\"$U2\""; }
  wait_until -t 10 up_after_down || die "h1 did not log the peer up again"
  ok "h1 logged the peer up again"
  wait_until -t 10 peer_up_is 1 || die "$UP_SERIES is not back to 1"
  ok "$UP_SERIES back to 1"
  ping_ok "$H1" "$O2" 5

  stop_daemon $d1
  stop_daemon $d2
}

scenario vxlan
scenario gre
log "PASS: peer restart"
