#!/usr/bin/env bash
# examples/two-hosts.sh - overlayd in one minute: two "hosts" (network namespaces) joined by a
# veth underlay, one overlayd in each, and a ping across the overlay between them.
#
#   sudo examples/two-hosts.sh          (root: it creates namespaces and TAP devices)
#
#   host h1  192.0.2.1 ===== veth underlay ===== 192.0.2.2  host h2
#   overlayd, tap 198.51.100.1/24 .... VXLAN vni 42 .... overlayd, tap 198.51.100.2/24
#
# It builds the release binary if needed (or uses OVERLAYD_BIN), prints every step, and removes
# everything it made on exit. HOLD=1 keeps the lab up until you press Enter, to look around.
user_bin=${OVERLAYD_BIN:-}
# what the demo needs from Debian, installed quietly if missing (see scripts/deps.sh)
bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/deps.sh" demo || exit 1
# shellcheck source-path=SCRIPTDIR source=../netns-tests/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../netns-tests/lib.sh"

show() { sed 's/^/     | /' "$@"; }     # indent a file or stdin

log "1. the overlayd binary"
if [[ -z $user_bin ]]; then
  if command -v cargo >/dev/null; then
    info "cargo build --release"
    (cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
  elif [[ ! -x $OVERLAYD_BIN ]]; then
    die "no cargo in root's PATH and no $OVERLAYD_BIN: run 'cargo build --release' first"
  fi
fi
need_daemon
info "$OVERLAYD_BIN"

H1=$PREFIX-h1 H2=$PREFIX-h2
log "2. two hosts: namespaces $H1 and $H2, a veth pair between them as the underlay"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" 192.0.2.1/24 "$H2" "${PREFIX}u2" 192.0.2.2/24
info "$H1: ${PREFIX}u1 192.0.2.1/24    $H2: ${PREFIX}u2 192.0.2.2/24    (MTU 1500)"
ping_ok "$H1" 192.0.2.2 1

log "3. one config per host: network 'blue', VXLAN vni 42, the other host as peer"
TAP=${PREFIX}tap
write_config "$WORK/h1.toml" 192.0.2.1
add_network "$WORK/h1.toml" blue 42 "$TAP" 198.51.100.1/24 192.0.2.2
write_config "$WORK/h2.toml" 192.0.2.2
add_network "$WORK/h2.toml" blue 42 "$TAP" 198.51.100.2/24 192.0.2.1
for h in h1 h2; do
  info "$WORK/$h.toml:"
  show "$WORK/$h.toml"
done
"$OVERLAYD_BIN" check --config "$WORK/h1.toml" >/dev/null || die "overlayd check rejected h1.toml"
"$OVERLAYD_BIN" check --config "$WORK/h2.toml" >/dev/null || die "overlayd check rejected h2.toml"
ok "overlayd check --config accepts both"

log "4. start the daemons: ip netns exec <host> overlayd run --config <host>.toml"
start_daemon "$H1" overlayd-h1 "$WORK/h1.toml"
start_daemon "$H2" overlayd-h2 "$WORK/h2.toml"
wait_ready overlayd-h1
wait_ready overlayd-h2

log "5. the TAP each daemon made (MTU = underlay 1500 - 50 bytes of VXLAN over IPv4)"
ip -n "$H1" -br addr show dev "$TAP" | show
ip -n "$H1" -d link show dev "$TAP" | head -n 3 | show
info "TAP MTU: $(link_mtu "$H1" "$TAP")"

log "6. ping 198.51.100.2 from $H1, across the overlay"
wait_ping "$H1" 198.51.100.2
ns_exec "$H1" ping -n -c 3 -i 0.2 198.51.100.2 | show
log "   and back, with a full-size packet that may not be fragmented (-M do)"
mtu=$(link_mtu "$H1" "$TAP")
ns_exec "$H2" ping -n -c 3 -i 0.2 -M "do" -s $((mtu - 28)) 198.51.100.1 | show

log "7. what the daemons logged"
for h in h1 h2; do
  info "overlayd-$h:"
  show "$WORK/overlayd-$h.log"
done

if [[ ${HOLD:-0} == 1 ]]; then
  log "lab is up. Try:  ip netns exec $H1 ping 198.51.100.2"
  log "                 ip netns exec $H2 tcpdump -ni ${PREFIX}u2 udp port 4789"
  read -r -p "== press Enter to tear it down " _
fi
log "8. stop the daemons (SIGTERM); each removes its TAP"
stop_daemon overlayd-h1
stop_daemon overlayd-h2
log "done: the namespaces and $WORK are removed on exit"
