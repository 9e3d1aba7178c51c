#!/usr/bin/env bash
# 88-reload-and-privileges.sh - SIGHUP never disturbs a running daemon, and after start-up the
# daemon holds nothing but CAP_NET_ADMIN and CAP_NET_RAW.
#
#   netns h1                                                  netns h2
#   <P>u1 192.0.2.1/24  <========= veth underlay =========>   <P>u2 192.0.2.2/24
#   blue: vni 42, <P>t 198.51.100.1/24                         blue: vni 42, <P>t 198.51.100.2/24
#
# Proves:
#   - every thread of the running daemon has CapEff = CapPrm = CAP_NET_ADMIN|CAP_NET_RAW
#     (0x3000), an empty inheritable and ambient set, and a bounding set of those two; the
#     admin socket is mode 0600 and /metrics listens on loopback only;
#   - forwarding works with the reduced privileges (ping), and a 10 MB TCP transfer sent
#     alongside a SIGHUP with a broken config, one with the config unchanged, and one with a
#     valid but different config arrives byte-identical;
#   - `systemd-analyze verify` accepts configs/overlayd.service (binary path substituted);
#   - the broken config is refused with one log line naming the key, the unchanged one is
#     logged as such, and the different one is applied with the reduced privileges: its new
#     network's TAP appears (live reload in depth: 92-live-reload.sh).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
T=${PREFIX}t

add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$T" "$O1/24" "$U2"
cp "$WORK/h1.toml" "$WORK/h1.good.toml"
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$T" "$O2/24" "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
PID=${_DAEMON_PID[d1]}

log "capabilities of every thread of d1 (pid $PID)"
threads=0
for st in /proc/"$PID"/task/*/status; do
  name=$(awk '/^Name:/ { print $2 }' "$st")
  for f in CapEff CapPrm CapBnd; do
    v=$(awk -v f="$f:" '$1 == f { print $2 }' "$st")
    [[ $v == 0000000000003000 ]] || die "thread $name: $f is $v, expected 0000000000003000 (CAP_NET_ADMIN|CAP_NET_RAW)"
  done
  for f in CapInh CapAmb; do
    v=$(awk -v f="$f:" '$1 == f { print $2 }' "$st")
    [[ $v == 0000000000000000 ]] || die "thread $name: $f is $v, expected empty"
  done
  threads=$((threads + 1))
done
ok "all $threads threads: CapEff = CapPrm = CapBnd = 0x3000 (net_admin, net_raw), no inheritable or ambient"
grep -q "dropped every other capability" "${_DAEMON_LOG[d1]}" || die "no log line about the capability drop"
assert_eq "admin socket mode" 600 "$(stat -c %a "$WORK/h1.sock")"
listen=$(ns_exec "$H1" ss -Hltn "sport = :9477" | awk '{ print $4 }')
assert_eq "metrics listen address" "127.0.0.1:9477" "$listen"

wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3

log "SIGHUPs during a 10 MB transfer"
make_random_file "$WORK/payload" 10
# hup PATTERN - SIGHUP d1 and wait until it logged one more line matching PATTERN, so the next
# edit of the config cannot race the reading of this one (signals that arrive together merge)
hup() {
  local before
  before=$(grep -c "$1" "${_DAEMON_LOG[d1]}" || true)
  kill -HUP "$PID"
  wait_until -t 15 _more_lines "${_DAEMON_LOG[d1]}" "$1" "$before" || die "no new '$1' line after SIGHUP"
}
# the SIGHUPs go out alongside the transfer (which may well finish first on a fast machine:
# 92-live-reload.sh paces its transfer to span every reload); every config is written whole to
# a temporary file and renamed into place, so the daemon never reads one half-written
(
  { cat "$WORK/h1.good.toml"; printf '\n[[networks]]\nname = "red"\nencap = "vxlan"\nvni = 16777216\ntap = "x"\n'; } >"$WORK/h1.next.toml"
  mv "$WORK/h1.next.toml" "$WORK/h1.toml"
  hup "reload refused"
  cp "$WORK/h1.good.toml" "$WORK/h1.next.toml"
  mv "$WORK/h1.next.toml" "$WORK/h1.toml"
  hup "reload: configuration unchanged"
  cp "$WORK/h1.good.toml" "$WORK/h1.next.toml"
  add_network "$WORK/h1.next.toml" red 43 "${PREFIX}r" - "$U2"
  mv "$WORK/h1.next.toml" "$WORK/h1.toml"
  hup "reload applied"
) &
hupper=$!
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlay h1->h2 across three SIGHUPs"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
wait "$hupper" || die "the three SIGHUPs were not each answered by their log line"
_is_ours "$PID" || die "d1 exited after SIGHUP"
ok "d1 still running after three SIGHUPs"
line=$(grep "reload refused" "${_DAEMON_LOG[d1]}") || die "the broken config was not refused in the log"
[[ $line == *"networks[1].vni"* ]] || die "the refusal does not name the key: $line"
ok "broken config refused, naming the key: ${line#*ERROR }"
grep -q "reload: configuration unchanged" "${_DAEMON_LOG[d1]}" || die "unchanged config not logged as such"
ok "unchanged config logged as unchanged"
line=$(grep "reload applied" "${_DAEMON_LOG[d1]}")
[[ $line == *'added=["red"]'* ]] || die "the differing config's added network is not reported: $line"
ok "different config applied: ${line#*INFO }"
link_exists "$H1" "${PREFIX}r" || die "the network added by the reload has no TAP (CAP_NET_ADMIN kept for reloads?)"
ok "the added network's TAP ${PREFIX}r exists"
ping_ok "$H1" "$O2" 3

stop_daemon d1
stop_daemon d2

log "the shipped systemd unit"
command -v systemd-analyze >/dev/null || die "systemd-analyze not installed (package systemd)"
sed "s|/usr/local/bin/overlayd|$OVERLAYD_BIN|g; s|/etc/overlayd/overlayd.toml|$WORK/h1.good.toml|g" \
  "$REPO_DIR/configs/overlayd.service" >"$WORK/overlayd.service"
out=$(systemd-analyze verify "$WORK/overlayd.service" 2>&1) || die "systemd-analyze verify rejects configs/overlayd.service:"$'\n'"$out"
[[ -z $out ]] || die "systemd-analyze verify complains about configs/overlayd.service:"$'\n'"$out"
ok "systemd-analyze verify accepts configs/overlayd.service"
log "PASS: reload and least privilege"
