#!/usr/bin/env bash
# 47-ebpf-reload-detach.sh - the eBPF fast path follows reloads: a removed network's programs
# leave its TAPs, a restarted network's are attached anew and forward again, the underlay's
# program goes when no network uses it, and a clean stop leaves nothing on any device.
#
#   netns h1 (d1, reloaded)                               netns h2 (d2)
#   <P>u1 192.0.2.1/24  <======= veth underlay =======>   <P>u2 192.0.2.2/24
#   blue vni 42: persistent TAP <P>b 198.51.100.1/24       blue: <P>b 198.51.100.2/24
#   red  vni 43: persistent TAP <P>r 203.0.113.1/24        red:  <P>r 203.0.113.2/24
#
# h1's TAPs are persistent (made by `ip tuntap`), so they outlive their networks and the
# kernel can be asked what is attached to them (tcx_query.py: BPF_PROG_QUERY on the device,
# whoever attached it). Both daemons use node.datapath = "ebpf", whatever OVERLAYD_DATAPATH says.
#
# Proves:
#   - at start: one program on each TAP's TC egress and one on the underlay's TC ingress;
#   - reload 1 removes red: red's TAP is still there and has no program; blue's keeps its own
#     (same link) and blue still forwards on the fast path;
#   - reload 2 restarts blue (its MTU changes): its TAP has one program again, on a new link
#     (detached and attached anew, not left over), and a TCP transfer (sha256) over blue is
#     carried by the fast path (its counters rise by at least 90% of the TAP's rx frames);
#   - reload 3 removes every network: nothing on blue's TAP, nothing on the underlay;
#   - reload 4 adds blue back: programs on its TAP and the underlay again, and pings are
#     carried by the fast path;
#   - SIGTERM: nothing on any of h1's devices (the persistent TAPs stay, without programs).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
for _t in jq curl python3; do command -v "$_t" >/dev/null || die "missing tool: $_t"; done
unset OVERLAYD__NODE__DATAPATH

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
B1=198.51.100.1 B2=198.51.100.2 R1=203.0.113.1 R2=203.0.113.2
TB=${PREFIX}b TR=${PREFIX}r
URL=http://127.0.0.1:9477/metrics

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24; persistent TAPs $TB, $TR in $H1"
add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
for t in "$TB" "$TR"; do
  ip -n "$H1" tuntap add mode tap name "$t" || die "cannot create a persistent TAP $t in $H1"
done

config() { # FILE UNDERLAY - a config with the fast path and no network yet (h1's all name
  # one admin socket: a reload cannot change it)
  write_config "$1" "$2"
  sed -i -e 's/^underlay = .*/&\ndatapath = "ebpf"/' -e 's|^socket = .*h1\..*\.sock"|socket = "'"$WORK"'/h1.sock"|' "$1"
}
config "$WORK/h1.A.toml" "$U1"
add_network "$WORK/h1.A.toml" blue 42 "$TB" "$B1/24" "$U2"
add_network "$WORK/h1.A.toml" red 43 "$TR" "$R1/24" "$U2"
config "$WORK/h1.B.toml" "$U1" # reload 1: red removed
add_network "$WORK/h1.B.toml" blue 42 "$TB" "$B1/24" "$U2"
config "$WORK/h1.C.toml" "$U1" # reload 2: blue restarted (MTU)
add_network "$WORK/h1.C.toml" blue 42 "$TB" "$B1/24" "$U2" mtu=1400
config "$WORK/h1.D.toml" "$U1" # reload 3: no network
config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$TB" "$B2/24" "$U1"
add_network "$WORK/h2.toml" red 43 "$TR" "$R2/24" "$U1"
cp "$WORK/h1.A.toml" "$WORK/h1.toml"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

# links NS DEV DIRECTION - the TCX link ids of the programs on DEV's DIRECTION, one per line
links() {
  local out
  out=$(ns_exec "$1" python3 "$LIB_DIR/tcx_query.py" "$2" "$3") || die "cannot query the TCX programs of $2 in $1"
  awk '{ print $2 }' <<<"$out"
}
count() { links "$@" | grep -c . || true; } # count NS DEV DIRECTION
applied_lines() { grep -c "reload applied" "${_DAEMON_LOG[d1]}" || true; }
applied_at_least() { (($(applied_lines) >= $1)); }
# reload N FILE FIELD... - install FILE as h1's config, SIGHUP d1, and expect the Nth
# "reload applied" line to carry every FIELD
reload() {
  local n=$1 file=$2 line f; shift 2
  cp "$file" "$WORK/h1.toml"
  kill -HUP "${_DAEMON_PID[d1]}" || die "cannot signal d1"
  wait_until -t 10 applied_at_least "$n" || die "reload $n was not applied"
  line=$(grep "reload applied" "${_DAEMON_LOG[d1]}" | sed -n "${n}p")
  for f; do [[ $line == *"$f"* ]] || die "reload $n: the log line lacks $f: $line"; done
  ok "${line#*INFO }"
}
d() { echo $(($(metric "$2" "$3") - $(metric "$1" "$3"))); } # d BEFORE AFTER SERIES
FAST_TX='overlayd_fastpath_frames_total{direction="tap_rx",network="blue"}'
TAP_RX='overlayd_tap_frames_total{direction="rx",network="blue"}'
# fast_pings N - N pings from h1 to h2 over blue; the fast path carries h1's side of them
fast_pings() {
  local before after
  wait_ping "$H1" "$B2"
  ping_ok "$H1" "$B2" 2
  sleep 0.3 # the MACs are mirrored into the maps (every 50 ms)
  before=$(scrape "$H1" "$URL")
  ping_ok "$H1" "$B2" "$1" -i 0.05
  after=$(scrape "$H1" "$URL")
  assert_ge "blue: fast-path frames from h1's TAP during $1 pings" "$1" "$(d "$before" "$after" "$FAST_TX")"
}

log "at start: the programs are on h1's TAPs and underlay"
assert_eq "programs on blue's TAP" 1 "$(count "$H1" "$TB" egress)"
assert_eq "programs on red's TAP" 1 "$(count "$H1" "$TR" egress)"
assert_eq "programs on the underlay's ingress" 1 "$(count "$H1" "${PREFIX}u1" ingress)"
blue_link=$(links "$H1" "$TB" egress)
fast_pings 20
ping_ok "$H1" "$R2" 3

log "reload 1: red removed"
reload 1 "$WORK/h1.B.toml" 'removed=["red"]' 'restarted=[]'
link_exists "$H1" "$TR" || die "red's persistent TAP is gone"
assert_eq "programs on red's TAP (persistent, its network removed)" 0 "$(count "$H1" "$TR" egress)"
assert_eq "blue's TAP keeps its link" "$blue_link" "$(links "$H1" "$TB" egress)"
assert_eq "programs on the underlay's ingress" 1 "$(count "$H1" "${PREFIX}u1" ingress)"
fast_pings 20

log "reload 2: blue restarted (MTU 1400)"
reload 2 "$WORK/h1.C.toml" 'restarted=["blue"]'
assert_eq "blue's TAP MTU" 1400 "$(link_mtu "$H1" "$TB")"
assert_eq "programs on blue's TAP after the restart" 1 "$(count "$H1" "$TB" egress)"
new_link=$(links "$H1" "$TB" egress)
[[ $new_link != "$blue_link" ]] || die "blue's TAP still has the link of before the restart ($blue_link): not detached and attached anew"
ok "blue's TAP has a new link ($blue_link -> $new_link)"
fast_pings 20
make_random_file "$WORK/payload" 30
before=$(scrape "$H1" "$URL")
tcp_transfer "$H1" "$H2" "$B2" 5001 "$WORK/payload" "blue h1->h2 after the restart (30 MB)"
after=$(scrape "$H1" "$URL")
tap_rx=$(d "$before" "$after" "$TAP_RX") fast_tx=$(d "$before" "$after" "$FAST_TX")
info "restarted blue: TAP rx frames +$tap_rx, of which the fast path +$fast_tx"
assert_ge "TAP rx frames during the transfer" 300 "$tap_rx"
assert_ge "fast-path frames, x10 (>= 9 x TAP rx frames)" $((9 * tap_rx)) $((10 * fast_tx))

log "reload 3: every network removed"
reload 3 "$WORK/h1.D.toml" 'removed=["blue"]'
assert_eq "programs on blue's TAP (persistent, no network)" 0 "$(count "$H1" "$TB" egress)"
assert_eq "programs on the underlay's ingress (no network uses it)" 0 "$(count "$H1" "${PREFIX}u1" ingress)"

log "reload 4: blue added back"
reload 4 "$WORK/h1.B.toml" 'added=["blue"]'
assert_eq "programs on blue's TAP" 1 "$(count "$H1" "$TB" egress)"
assert_eq "programs on the underlay's ingress" 1 "$(count "$H1" "${PREFIX}u1" ingress)"
fast_pings 20

log "clean stop: nothing left on any device"
stop_daemon d1
for dev in "$TB" "$TR"; do
  link_exists "$H1" "$dev" || die "persistent TAP $dev is gone"
  assert_eq "programs on $dev after SIGTERM" 0 "$(count "$H1" "$dev" egress)"
done
assert_eq "programs on the underlay's ingress after SIGTERM" 0 "$(count "$H1" "${PREFIX}u1" ingress)"
stop_daemon d2
log "PASS: the fast path follows reloads and leaves nothing behind"
