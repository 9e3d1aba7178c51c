#!/usr/bin/env bash
# 92-live-reload.sh - SIGHUP applies a new configuration to the running daemon: networks and
# peers come and go, and the traffic of what did not change does not notice.
#
#   netns h1 (d1, reloaded)       netns h2 (d2)                  netns h3 (d3)
#   <P>u1 192.0.2.1  ----+        <P>u2 192.0.2.2  ----+         <P>u3 192.0.2.3
#                        +------- bridge in netns <P>-sw -------+
#   blue vni 42  198.51.100.1/24   blue  198.51.100.2 (peers h1 h3)  blue 198.51.100.3 (peers h1 h2)
#   red  vni 43  203.0.113.1/25    red   203.0.113.2/25
#   (green vni 44 203.0.113.129/25 comes and goes)  green 203.0.113.130/25
#
# Proves, while a paced 24 MB TCP transfer runs over red (never changed) and 50 pings a second
# run over blue from h1 to h2 (a peer that stays):
#   - reload 1 adds network green (on VXLAN port 4790) and peer h3 to blue: green's TAP and
#     UDP socket appear and carry pings to h2, blue reaches h3, blue's counters towards h2 do not go back, the log says
#     "reload applied" with added=["green"] updated=["blue"];
#   - a broken config is refused naming the key, a config changing node.underlay_mtu is
#     refused naming it, and nothing changes;
#   - reload 2 changes green's MTU: green restarts with the new MTU;
#   - reload 3 removes green and peer h3: green's TAP and its UDP socket are gone,
#     `overlayd peers` no longer lists h3, blue still reaches h2;
#   - afterwards: the transfer over red is byte-identical, not one blue ping was lost, and d1
#     counted no send or TAP write failure on red or blue.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v jq >/dev/null || die "jq not installed"

SW=$PREFIX-sw
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3")
U=(- 192.0.2.1 192.0.2.2 192.0.2.3)
B=(- 198.51.100.1 198.51.100.2 198.51.100.3)      # blue
R=(- 203.0.113.1 203.0.113.2)                      # red, /25
G=(- 203.0.113.129 203.0.113.130)                  # green, /25
TB=${PREFIX}b TR=${PREFIX}r TG=${PREFIX}g
URL=http://127.0.0.1:9477/metrics
TX_H2="overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"${U[2]}\"}"

log "underlay: h1, h2, h3 on a bridge"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24"
ping_ok "${H[1]}" "${U[3]}" 2

# h1's configurations: A (start), B (reload 1), B2 (reload 2), and A again (reload 3)
h1_config() { # FILE BLUE_PEERS GREEN_MTU(- = no green)
  write_config "$1" "${U[1]}"
  add_network "$1" blue 42 "$TB" "${B[1]}/24" "$2"
  add_network "$1" red 43 "$TR" "${R[1]}/25" "${U[2]}"
  [[ $3 == - ]] || add_network "$1" green 44 "$TG" "${G[1]}/25" "${U[2]}" mtu="$3" vxlan_port=4790
  sed -i "s|^socket = .*|socket = \"$WORK/h1.sock\"|" "$1"   # one admin socket whatever the file
}
h1_config "$WORK/h1.A.toml" "${U[2]}" -
h1_config "$WORK/h1.B.toml" "${U[2]} ${U[3]}" 1400
h1_config "$WORK/h1.B2.toml" "${U[2]} ${U[3]}" 1300
cp "$WORK/h1.A.toml" "$WORK/h1.toml"
write_config "$WORK/h2.toml" "${U[2]}"
add_network "$WORK/h2.toml" blue 42 "$TB" "${B[2]}/24" "${U[1]} ${U[3]}"
add_network "$WORK/h2.toml" red 43 "$TR" "${R[2]}/25" "${U[1]}"
add_network "$WORK/h2.toml" green 44 "$TG" "${G[2]}/25" "${U[1]}" mtu=1300 vxlan_port=4790
write_config "$WORK/h3.toml" "${U[3]}"
add_network "$WORK/h3.toml" blue 42 "$TB" "${B[3]}/24" "${U[1]} ${U[2]}"
for i in 1 2 3; do start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"; done
for i in 1 2 3; do wait_ready "d$i"; done
PID=${_DAEMON_PID[d1]}
wait_ping "${H[1]}" "${B[2]}"
wait_ping "${H[1]}" "${R[2]}"
listens_4790() { ns_exec "${H[1]}" ss -Hlun "sport = :4790" | grep -q .; }
link_exists "${H[1]}" "$TG" && die "green's TAP exists before the reload"
listens_4790 && die "h1 listens on UDP 4790 before green exists"

peers_of() { "$OVERLAYD_BIN" peers --config "$WORK/h1.toml" --network blue --json | jq -r '.[0].peers[].peer' | sort | xargs; }
assert_eq "blue's peers at start" "${U[2]}" "$(peers_of)"
applied_lines() { grep -c "reload applied" "${_DAEMON_LOG[d1]}" || true; }
applied_at_least() { (($(applied_lines) >= $1)); }
# reload N FILE FIELD... - install FILE, SIGHUP d1, and expect the Nth "reload applied" line to
# carry every FIELD (e.g. 'added=["green"]')
reload() {
  local n=$1 file=$2 line f; shift 2
  hup "$file"
  wait_until -t 10 applied_at_least "$n" || die "reload $n was not applied"
  line=$(grep "reload applied" "${_DAEMON_LOG[d1]}" | sed -n "${n}p")
  for f; do [[ $line == *"$f"* ]] || die "reload $n: the log line lacks $f: $line"; done
  ok "${line#*INFO }"
}
hup() { # FILE - install FILE as h1's config and signal d1
  cp "$1" "$WORK/h1.toml"
  kill -HUP "$PID" || die "cannot signal d1"
}

log "traffic that must not notice: 24 MB paced over red, 50 pings/s over blue to h2"
make_random_file "$WORK/payload" 24
start_bg "${H[2]}" "$WORK/recv.log" socat -u -b 131072 "TCP-LISTEN:5001,bind=${R[2]},reuseaddr" "CREATE:$WORK/received"
RECV=$BG_PID
wait_until -t 10 _tcp_listening "${H[2]}" 5001 || die "receiver did not start"
# 4 MB/s in 64 KB writes: about 6 s, long enough to span every reload below
start_bg "${H[1]}" "$WORK/send.log" python3 -c '
import socket, sys, time
s = socket.create_connection((sys.argv[1], 5001), timeout=10)
with open(sys.argv[2], "rb") as f:
    t0 = time.monotonic(); sent = 0
    while chunk := f.read(65536):
        s.sendall(chunk); sent += len(chunk)
        ahead = sent / (4 << 20) - (time.monotonic() - t0)
        if ahead > 0: time.sleep(ahead)
s.shutdown(socket.SHUT_WR); s.close()
' "${R[2]}" "$WORK/payload"
SEND=$BG_PID
ping_start blue "${H[1]}" "${B[2]}" 300 -i 0.02
sleep 0.5
tx_before=$(metric "$(scrape "${H[1]}" "$URL")" "$TX_H2")

log "reload 1: add network green, add peer h3 to blue"
reload 1 "$WORK/h1.B.toml" 'added=["green"]' 'removed=[]' 'updated=["blue"]' 'restarted=[]'
link_exists "${H[1]}" "$TG" || die "green's TAP did not appear"
assert_eq "green's TAP MTU" 1400 "$(link_mtu "${H[1]}" "$TG")"
listens_4790 || die "green's VXLAN port 4790 was not opened by the reload"
ok "green's VXLAN port 4790 opened by the reload"
wait_ping "${H[1]}" "${G[2]}"
ok "green carries pings to h2"
assert_eq "blue's peers after reload 1" "${U[2]} ${U[3]}" "$(peers_of)"
wait_ping "${H[1]}" "${B[3]}"
ok "blue reaches the added peer h3"
tx_after=$(metric "$(scrape "${H[1]}" "$URL")" "$TX_H2")
((tx_after > tx_before)) || die "blue's tx counter towards h2 went from $tx_before to $tx_after across the reload"
ok "blue's packets towards h2 kept counting across the reload: $tx_before -> $tx_after"

log "refused: a broken config, and one that changes a start-only setting"
{ cat "$WORK/h1.B.toml"; printf '\n[[networks]]\nname = "bad"\nencap = "vxlan"\nvni = 16777216\ntap = "x"\n'; } >"$WORK/h1.bad.toml"
hup "$WORK/h1.bad.toml"
wait_until -t 10 grep -q "reload refused" "${_DAEMON_LOG[d1]}" || die "the broken config was not refused"
line=$(grep "reload refused" "${_DAEMON_LOG[d1]}" | tail -1)
[[ $line == *"networks[3].vni"* ]] || die "the refusal does not name the key: $line"
ok "broken config refused: ${line#*ERROR }"
sed 's/^underlay = .*/&\nunderlay_mtu = 1500/' "$WORK/h1.B.toml" >"$WORK/h1.node.toml"
hup "$WORK/h1.node.toml"
wait_until -t 10 grep -q "reload refused.*node.underlay_mtu\|node.underlay_mtu.*reload refused" "${_DAEMON_LOG[d1]}" ||
  die "a changed node.underlay_mtu was not refused by name"
ok "start-only setting refused: $(grep "node.underlay_mtu" "${_DAEMON_LOG[d1]}" | tail -1 | sed 's/^.*ERROR //')"
assert_eq "reloads applied so far" 1 "$(applied_lines)"
link_exists "${H[1]}" "$TG" || die "green went away after a refused reload"

log "reload 2: green's MTU changes, so green restarts"
reload 2 "$WORK/h1.B2.toml" 'added=[]' 'removed=[]' 'updated=[]' 'restarted=["green"]'
assert_eq "green's TAP MTU after reload 2" 1300 "$(link_mtu "${H[1]}" "$TG")"
wait_ping "${H[1]}" "${G[2]}"
ok "green carries pings again"

log "reload 3: back to the start: green and peer h3 removed"
reload 3 "$WORK/h1.A.toml" 'added=[]' 'removed=["green"]' 'updated=["blue"]' 'restarted=[]'
wait_until -t 5 bash -c "! ip -n '${H[1]}' link show dev '$TG' >/dev/null 2>&1" || die "green's TAP is still there"
ok "green's TAP is gone"
listens_4790 && die "UDP 4790 is still open although no network uses it"
ok "UDP 4790 closed with the last network that used it"
assert_eq "blue's peers after reload 3" "${U[2]}" "$(peers_of)"

log "the traffic that ran through all of it"
wait_exit "$SEND" 60 || die "the paced sender did not finish"
((EXIT_STATUS == 0)) || die "the paced sender failed (status $EXIT_STATUS): $(cat "$WORK/send.log")"
wait_exit "$RECV" 30 || die "the receiver did not finish"
want=$(sha256sum <"$WORK/payload" | cut -d' ' -f1)
got=$(sha256sum <"$WORK/received" | cut -d' ' -f1)
[[ $want == "$got" ]] || die "red's transfer differs: sent $want, received $got ($(stat -c %s "$WORK/received") bytes)"
ok "red: 24 MB arrived byte-identical across four SIGHUPs"
ping_finish blue   # every one of the 300 answered (a late reply counts, a lost one fails)
drop_totals d1
for net in red blue; do
  for reason in send_failed tap_write_failed port_write_failed; do
    assert_eq "d1 $net $reason" 0 "$(drop_count d1 "$net" "$reason")"
  done
done
grep "reload applied" "${_DAEMON_LOG[d1]}" | sed -n 's/.*took_ms=\([0-9.]*\).*/\1/p' | xargs printf '%s ms ' |
  xargs -0 printf '   time to apply each reload: %s(not asserted)\n'
for i in 1 2 3; do stop_daemon "d$i"; done
log "PASS: live reload"
