#!/usr/bin/env bash
# 55-vm-socket-ports.sh - QEMU socket ports: local switching between VM connections.
#
#   netns h1: overlayd, network blue (vni 42) with only a vm_socket (no TAP), peer h2
#   netns h2: overlayd, network blue with a TAP 198.51.100.2/24, peer h1
#   Clients A and B (netns-tests/qemu_stream.py, speaking QEMU's 4-byte length framing)
#   connect to h1's socket as two switch ports.
#
# Proves:
#   - the socket file gets the configured group and mode, an unprivileged user in that group
#     can connect, one outside it cannot;
#   - A's broadcast reaches B and goes to the peer exactly once;
#   - unicast between A and B is switched locally: not one of those frames is on the underlay
#     (counted in a capture of h1's underlay veth, inner EtherType 0x7a05);
#   - frames shorter than 60 bytes and frames written in pieces arrive whole;
#   - a client sending garbage, and one sending a zero length, are disconnected and logged
#     while A and B keep working;
#   - when B disconnects its MAC is flushed: A's frames for it flood to the peer again
#     (inner EtherType 0x7a06 appears on the underlay);
#   - prints the local switching rate between the two python clients (never asserted);
#   - the socket file is removed when the daemon stops.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v tshark >/dev/null || die "tshark not installed"
command -v setpriv >/dev/null || die "setpriv not installed (util-linux)"
getent group nogroup >/dev/null || die "no group 'nogroup' on this system"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
CLIENT=$LIB_DIR/qemu_stream.py
chmod 0711 "$WORK"                      # unprivileged clients must reach the socket below
RUN=$WORK/run
SOCK=$RUN/blue.sock

log "underlay: $H1 $U1 <-> $H2 $U2"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

log "h1: network blue with a vm_socket only; h2: a TAP"
write_config "$WORK/h1.toml" "$U1"
cat >>"$WORK/h1.toml" <<EOF

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
vm_socket = "$SOCK"
vm_socket_group = "nogroup"
vm_socket_mode = "0660"
peers = ["$U2"]
EOF
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "${PREFIX}tap" 198.51.100.2/24 "$U1"
assert_ok "overlayd check accepts a network without a TAP" "$OVERLAYD_BIN" check --config "$WORK/h1.toml"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
[[ -S $SOCK ]] || die "no socket file at $SOCK"
assert_eq "socket file mode and group" "660 nogroup" "$(stat -c '%a %G' "$SOCK")"
assert_ok "user nobody in group nogroup connects" \
  setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/bin/python3 "$CLIENT" connect "$SOCK"
assert_fails "user nobody outside the group is refused" \
  setpriv --reuid=nobody --regid=nobody --clear-groups /usr/bin/python3 "$CLIENT" connect "$SOCK"

log "two socket clients on h1: local switching"
capture_start under "$H1" "${PREFIX}u1" udp port 4789
out=$WORK/clients.out
if ! /usr/bin/python3 "$CLIENT" local-switching "$SOCK" "$WORK/d1.log" >"$out" 2>&1; then
  sed 's/^/   /' "$out"
  die "socket client scenario failed"
fi
sed -n 's/^ok: /   ok: /p; s/^info: /   /p' "$out"

# frames of the two clients (MACs 02:00:00:00:00:0a/0b) with the phase's EtherType
inner() {
  tshark -r "$WORK/under.pcap" -d udp.port==4789,vxlan \
    -Y "eth.type == $1 && (eth.src == 02:00:00:00:00:0a || eth.src == 02:00:00:00:00:0b)" 2>/dev/null | wc -l
}
inner_at_least() { (($(inner "$1") >= $2)); }
# the last frames A sent (0x7a06) are on the underlay before the capture stops; the exact
# counts are checked on the complete capture below
wait_until -t 15 inner_at_least 0x7a06 3 || info "fewer than 3 frames 0x7a06 on the underlay after 15 s"
capture_stop under
assert_eq "A<->B unicast frames (0x7a05) seen on the underlay" 0 "$(inner 0x7a05)"
assert_eq "copies of A's broadcast (0x7a07) sent to the peer" 1 "$(inner 0x7a07)"
assert_eq "frames for B's MAC after B left (0x7a06), flooded to the peer" 3 "$(inner 0x7a06)"
assert_eq "bad-framing disconnects logged by h1" 2 "$(grep -c 'vm sent bad framing; disconnected' "$WORK/d1.log")"
grep -q 'vm disconnected.*flushed_macs=1' "$WORK/d1.log" || die "no 'vm disconnected ... flushed_macs=1' line for B in the log"
ok "B's disconnect flushed its MAC (logged)"

log "shutdown"
stop_daemon d1
stop_daemon d2
[[ ! -e $SOCK ]] || die "socket file $SOCK left behind"
ok "socket file removed"
log "PASS: VM socket ports switch locally"
