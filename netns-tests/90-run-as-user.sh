#!/usr/bin/env bash
# 90-run-as-user.sh - `[node] user` / `group`: started as root, the daemon binds its admin and
# metrics sockets, becomes the configured unprivileged user and forwards as before.
#
#   netns h1                                                  netns h2
#   <P>u1 192.0.2.1/24  <========= veth underlay =========>   <P>u2 192.0.2.2/24
#   blue: vni 42, <P>t 198.51.100.1/24                         blue: vni 42, <P>t 198.51.100.2/24
#   d1: user = "<P>u" (by name,                                d2: user = <uid of <P>u> (a number),
#       primary group by default)                                  group = "<P>g"
#
# The lab adds a system user <P>u (primary group <P>u, also a member of <P>g) and a group <P>g,
# and deletes both at exit.
#
# Proves:
#   - real, effective, saved and filesystem uid and gid of both daemons (every thread) are the
#     configured user's and group's, and the supplementary groups are the group plus the user's
#     memberships (d1: <P>u and <P>g; d2: <P>g only);
#   - the main thread's effective capabilities are exactly CAP_NET_ADMIN|CAP_NET_RAW (0x3000),
#     every other thread's a subset of them; one log line names the user and uid switched to;
#   - ping and a 10 MB sha256-checked TCP transfer cross the overlay; `overlayd peers` (as root)
#     gets an answer on the admin socket; /metrics answers, with the process metrics;
#   - `[admin] group` (d1: "<P>g"): the socket is mode 0660 and belongs to <P>g; a member of
#     <P>g gets an answer, the same user without that group is refused with an error saying why;
#   - SIGTERM: exit 0, no warning or error logged (but for the timing-only one of a slow
#     reload); the admin socket in a directory the user may write is removed, the one in a
#     root-only directory is left (logged), and the next start replaces it;
#   - configs/overlayd.service's privilege lines (bounding set, ambient set, securebits,
#     no-new-privs, read off the file and applied with setpriv, as systemd would): as shipped,
#     the daemon starts as root with 0x3000; with User= it runs as the user (and `[node] user`
#     naming that user is a no-op); `[node] user` with CAP_SETUID CAP_SETGID added switches;
#   - an unknown user: `overlayd check` exits 1 naming node.user; a daemon that is not root
#     cannot switch: exit 1 with an error naming node.user and CAP_SETUID; under the unit,
#     admin.group needs the daemon in that group (SupplementaryGroups=): without, exit 1 with
#     an error naming admin.group and what is missing.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
for t in useradd userdel groupadd groupdel getent setpriv curl jq; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
T=${PREFIX}t
USR=${PREFIX}u GRP=${PREFIX}g

log "a system user $USR and a group $GRP"
groupadd --system "$GRP" || die "cannot add group $GRP"
at_cleanup groupdel "$GRP"
useradd --system --no-create-home --shell /usr/sbin/nologin --groups "$GRP" "$USR" || die "cannot add user $USR"
at_cleanup userdel "$USR"
uid=$(id -u "$USR") ugid=$(id -g "$USR")
ggid=$(getent group "$GRP" | cut -d: -f3)
[[ -n $uid && -n $ugid && -n $ggid ]] || die "cannot read the ids of $USR / $GRP"
info "$USR: uid $uid, primary gid $ugid; $GRP: gid $ggid"
# the user must reach the files it uses after the switch: the config (SIGHUP re-reads it) and
# d2's admin socket directory, which it owns
chmod 0711 "$WORK"
mkdir "$WORK/run-u"
chown "$USR:" "$WORK/run-u"

add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
write_config "$WORK/h1.toml" "$U1"
sed -i "/^underlay = /a user = \"$USR\"" "$WORK/h1.toml"
sed -i "/^socket = /a group = \"$GRP\"" "$WORK/h1.toml"
add_network "$WORK/h1.toml" blue 42 "$T" "$O1/24" "$U2"
write_config "$WORK/h2.toml" "$U2"
sed -i "/^underlay = /a user = $uid\ngroup = \"$GRP\"" "$WORK/h2.toml"
sed -i "s|^socket = .*|socket = \"$WORK/run-u/h2.sock\"|" "$WORK/h2.toml"
add_network "$WORK/h2.toml" blue 42 "$T" "$O2/24" "$U1"
chmod 0644 "$WORK/h1.toml" "$WORK/h2.toml"
assert_ok "overlayd check accepts user = name" "$OVERLAYD_BIN" check --config "$WORK/h1.toml"
assert_ok "overlayd check accepts user = uid, group = name" "$OVERLAYD_BIN" check --config "$WORK/h2.toml"
SOCK1=$WORK/h1.sock SOCK2=$WORK/run-u/h2.sock

start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

# check_ids NAME GID GROUPS - every thread of daemon NAME runs as $uid / GID with supplementary GROUPS
# (sorted, space-separated); the main thread holds exactly 0x3000, the others a subset
check_ids() {
  local name=$1 gid=$2 groups=$3 pid=${_DAEMON_PID[$1]} st tid eff n=0
  for st in /proc/"$pid"/task/*/status; do
    tid=$(awk '/^Pid:/ { print $2 }' "$st")
    [[ $(awk '/^Uid:/ { print $2, $3, $4, $5 }' "$st") == "$uid $uid $uid $uid" ]] ||
      die "$name thread $tid: $(grep '^Uid:' "$st"), expected $uid four times"
    [[ $(awk '/^Gid:/ { print $2, $3, $4, $5 }' "$st") == "$gid $gid $gid $gid" ]] ||
      die "$name thread $tid: $(grep '^Gid:' "$st"), expected $gid four times"
    [[ $(awk '/^Groups:/ { $1 = ""; print }' "$st" | tr ' ' '\n' | grep . | sort -n | paste -sd' ') == "$groups" ]] ||
      die "$name thread $tid: $(grep '^Groups:' "$st"), expected $groups"
    eff=$(awk '$1 == "CapEff:" { print $2 }' "$st")
    if [[ $tid == "$pid" ]]; then
      [[ $eff == 0000000000003000 ]] || die "$name main thread: CapEff is $eff, expected 0000000000003000 (CAP_NET_ADMIN|CAP_NET_RAW)"
    else
      (((16#$eff & ~16#3000) == 0)) || die "$name thread $tid: CapEff is $eff, not a subset of CAP_NET_ADMIN|CAP_NET_RAW"
    fi
    n=$((n + 1))
  done
  ok "$name: all $n threads run as uid $uid, gid $gid, groups ($groups); main CapEff = 0x3000, the others a subset"
}
log "identity and capabilities"
check_ids d1 "$ugid" "$(printf '%s\n' "$ugid" "$ggid" | sort -n | paste -sd' ')"
check_ids d2 "$ggid" "$ggid"
line=$(grep "switched to the configured user and group" "${_DAEMON_LOG[d1]}") || die "d1 logged no line about the switch"
[[ $line == *"user=\"$USR\""* && $line == *"uid=$uid "* ]] || die "the switch line does not name the user and uid: $line"
ok "logged: ${line#*INFO }"
grep -q "switched to the configured user and group.*uid=$uid .*gid=$ggid" "${_DAEMON_LOG[d2]}" || die "d2 logged no switch to uid $uid gid $ggid"

log "forwarding, admin socket, metrics"
wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 3
make_random_file "$WORK/payload" 10
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlay h1->h2, both daemons unprivileged"
info "rate: $TRANSFER_MBIT Mbit/s (not asserted)"
for d in 1 2; do
  sock=SOCK$d
  peer=$([[ $d == 1 ]] && echo "$U2" || echo "$U1")
  seen=$("$OVERLAYD_BIN" peers --admin "${!sock}" --json | jq -r '.[0].peers[0].peer') || die "d$d: overlayd peers failed on ${!sock}"
  assert_eq "d$d: overlayd peers (as root) on the admin socket" "$peer" "$seen"
done
assert_eq "d1's admin socket: mode and group (admin.group)" "660 $GRP" "$(stat -c '%a %G' "$SOCK1")"
seen=$(setpriv --reuid="$uid" --regid="$ugid" --groups="$ggid" "$OVERLAYD_BIN" peers --admin "$SOCK1" --json | jq -r '.[0].peers[0].peer') ||
  die "a member of $GRP got no answer on d1's admin socket"
assert_eq "d1: overlayd peers as $USR, a member of admin.group $GRP" "$U2" "$seen"
rc=0
out=$(setpriv --reuid="$uid" --regid="$ugid" --clear-groups "$OVERLAYD_BIN" peers --admin "$SOCK1" 2>&1) || rc=$?
assert_eq "d1: overlayd peers as $USR without $GRP: exit status" 1 "$rc"
[[ $out == *"permission denied on $SOCK1"*"admin.group"* ]] || die "the refusal does not say why: $out"
ok "refused without the group: $out"
text=$(scrape "$H1" http://127.0.0.1:9477/metrics)
assert_ge "d1 /metrics: tunnel packets to $U2" 3 "$(metric "$text" "overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"$U2\"}")"
assert_ge "d1 /metrics: process_open_fds (the process reads its own /proc as the user)" 1 "$(metric "$text" process_open_fds)"

log "a reload as the user: a network added on both hosts (TAPs opened with the kept CAP_NET_ADMIN)"
add_network "$WORK/h1.toml" red 43 "${PREFIX}r" "203.0.113.1/24" "$U2"
add_network "$WORK/h2.toml" red 43 "${PREFIX}r" "203.0.113.2/24" "$U1"
kill -HUP "${_DAEMON_PID[d1]}" "${_DAEMON_PID[d2]}"
for d in 1 2; do
  wait_until -t 10 grep -q 'reload applied.*added=\["red"\]' "${_DAEMON_LOG[d$d]}" || die "d$d: the reload as the user was not applied"
done
wait_ping "$H1" 203.0.113.2
ok "the network added by a reload carries pings"

log "shutdown"
# one SIGTERM for both: stopped one after the other, a slow stop of d1 could let d2 go 3 s
# without keepalives and rightly log its peer down
kill -TERM "${_DAEMON_PID[d1]}" "${_DAEMON_PID[d2]}"
for d in d1 d2; do
  wait_exit "${_DAEMON_PID[$d]}" 10 || die "daemon $d did not exit within 10 s of SIGTERM"
  ((EXIT_STATUS == 0)) || die "daemon $d exited with status $EXIT_STATUS after SIGTERM (expected 0)"
done
ok "d1 and d2 stopped cleanly on SIGTERM"
# the one warning that only says the machine was slow: a data-path thread took more than a
# second to let go of the configuration a reload replaced (the reload still completes)
SLOW_RELOAD='WARN .*reload: a data-path thread held on to the previous configuration for more than a second'
for d in d1 d2; do
  n=$(grep -c "$SLOW_RELOAD" "${_DAEMON_LOG[$d]}" || true)
  ((n == 0)) || info "$d: $n slow-reload warning(s) (timing only, not a fault)"
  if grep -E ' (WARN|ERROR) ' "${_DAEMON_LOG[$d]}" | grep -v "$SLOW_RELOAD"; then die "$d logged a warning or an error"; fi
done
ok "no warning or error in either log"
[[ ! -e $SOCK2 ]] || die "d2's admin socket $SOCK2 is still there although its directory belongs to $USR"
ok "d2 removed its admin socket (directory owned by $USR)"
[[ -S $SOCK1 ]] || die "d1's admin socket $SOCK1 is gone: $USR cannot write $WORK, so it should have been left"
grep -q "admin socket left in place" "${_DAEMON_LOG[d1]}" || die "d1 did not log why its admin socket stayed"
ok "d1 left its admin socket in the root-only directory, and said so"
mv "${_DAEMON_LOG[d1]}" "$WORK/d1.first.log"
start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1
grep -q "removing a stale admin socket" "${_DAEMON_LOG[d1]}" || die "the restarted d1 did not replace the stale admin socket"
"$OVERLAYD_BIN" peers --admin "$SOCK1" >/dev/null || die "the restarted d1 does not answer on $SOCK1"
ok "restarted d1 replaced the stale admin socket and answers on it"
stop_daemon d1

log "started the way configs/overlayd.service starts it (simulated with setpriv)"
# start_setpriv NAME CONFIG SETPRIV_ARGS... - a daemon in h1 under setpriv
start_setpriv() {
  local name=$1 cfg=$2; shift 2
  _DAEMON_LOG[$name]=$WORK/$name.log
  start_bg "$H1" "${_DAEMON_LOG[$name]}" setpriv "$@" "$OVERLAYD_BIN" run --config "$cfg"
  _DAEMON_PID[$name]=$BG_PID
}
# the unit's privilege lines, read off the shipped file
unit=$REPO_DIR/configs/overlayd.service
unit_list() { sed -n "s/^$1=//p" "$unit" | tr ' ' '\n' | grep . | sed "$2" | paste -sd,; }
BND=$(unit_list CapabilityBoundingSet 's/^CAP_/+/' | tr '[:upper:]' '[:lower:]')
AMB=$(unit_list AmbientCapabilities 's/^CAP_/+/' | tr '[:upper:]' '[:lower:]')
SEC=$(unit_list SecureBits 's/^/+/; s/-/_/g')
[[ -n $BND && -n $AMB && -n $SEC ]] || die "cannot read CapabilityBoundingSet, AmbientCapabilities and SecureBits from $unit"
UNIT=(--securebits="$SEC")
grep -q '^NoNewPrivileges=yes' "$unit" && UNIT+=(--no-new-privs)
info "unit: bounding $BND, ambient $AMB, securebits $SEC"
# as shipped: root, no [node] user; admin.group with the unit's SupplementaryGroups= set to it
sed '/^user = /d' "$WORK/h1.toml" >"$WORK/h6.toml"
start_setpriv d6 "$WORK/h6.toml" "${UNIT[@]}" --groups="$ggid" --bounding-set=-all,"$BND" --inh-caps=-all,"$AMB" --ambient-caps="$AMB"
wait_ready d6
eff=$(awk '$1 == "CapEff:" { print $2 }' "/proc/${_DAEMON_PID[d6]}/status")
assert_eq "the unit as shipped: the main thread's CapEff" 0000000000003000 "$eff"
assert_eq "the unit as shipped, SupplementaryGroups=$GRP: the admin socket's mode and group" "660 $GRP" "$(stat -c '%a %G' "$SOCK1")"
stop_daemon d6
sed "s|^socket = .*|socket = \"$WORK/run-u/h4.sock\"|" "$WORK/h1.toml" >"$WORK/h4.toml"
chmod 0644 "$WORK/h4.toml"
# User=/Group= in the unit and [node] user the same user: nothing left to switch
start_setpriv d4 "$WORK/h4.toml" --reuid="$uid" --regid="$ugid" --init-groups "${UNIT[@]}" \
  --bounding-set=-all,"$BND" --inh-caps=-all,"$AMB" --ambient-caps="$AMB"
wait_ready d4
grep -q "already running as the configured user and group" "${_DAEMON_LOG[d4]}" || die "d4 did not notice it already runs as $USR"
check_ids d4 "$ugid" "$(printf '%s\n' "$ugid" "$ggid" | sort -n | paste -sd' ')"
stop_daemon d4
[[ ! -e $WORK/run-u/h4.sock ]] || die "d4 left its admin socket in a directory $USR owns"
ok "User= in the unit: runs, keeps 0x3000, stops cleanly, removes its socket"
# root with [node] user, the unit's capability lines plus CAP_SETUID CAP_SETGID; without
# CAP_DAC_OVERRIDE root binds the admin socket in a directory of its own (like /run/overlayd)
start_setpriv d5 "$WORK/h1.toml" "${UNIT[@]}" --groups="$ggid" --bounding-set=-all,"$BND",+setuid,+setgid \
  --inh-caps=-all,"$AMB",+setuid,+setgid --ambient-caps="$AMB",+setuid,+setgid
wait_ready d5
grep -q "switched to the configured user and group" "${_DAEMON_LOG[d5]}" || die "d5 did not switch to $USR"
check_ids d5 "$ugid" "$(printf '%s\n' "$ugid" "$ggid" | sort -n | paste -sd' ')"
stop_daemon d5
ok "[node] user under the unit with CAP_SETUID CAP_SETGID added: switches, keeps 0x3000, stops cleanly"

log "refused: an unknown user, a daemon that is not root"
printf '[node]\nunderlay = "%s"\nuser = "%s"\n' "$U1" "${PREFIX}nouser" >"$WORK/bad.toml"
rc=0
out=$("$OVERLAYD_BIN" check --config "$WORK/bad.toml" 2>&1) || rc=$?
assert_eq "overlayd check with an unknown user: exit status" 1 "$rc"
[[ $out == *"node.user: no such user \"${PREFIX}nouser\""* && $(wc -l <<<"$out") == 1 ]] ||
  die "the error does not name node.user in one line: $out"
ok "one line naming the key: $out"
rc=0
out=$(timeout 20 ip netns exec "$H1" setpriv "${UNIT[@]}" --clear-groups --bounding-set=-all,"$BND" --inh-caps=-all,"$AMB" \
  --ambient-caps="$AMB" "$OVERLAYD_BIN" run --config "$WORK/h6.toml" 2>&1) || rc=$?
assert_eq "the unit as shipped with admin.group but no SupplementaryGroups=: exit status" 1 "$rc"
last=$(tail -n 1 <<<"$out")
[[ $last == *"admin.group"*"member of that group"* ]] || die "the error does not say what is missing:"$'\n'"$out"
ok "refused: $last"
write_config "$WORK/h3.toml" "$U1"
sed -i "/^underlay = /a user = \"root\"" "$WORK/h3.toml"
sed -i "s|^socket = .*|socket = \"$WORK/run-u/h3.sock\"|" "$WORK/h3.toml"
add_network "$WORK/h3.toml" blue 42 "$T" "$O1/24" "$U2"
set_metrics_listen "$WORK/h3.toml" 127.0.0.1:9478
chmod 0644 "$WORK/h3.toml"
rc=0
out=$(timeout 20 ip netns exec "$H1" setpriv --reuid="$uid" --regid="$ugid" --clear-groups --inh-caps=-all \
  "$OVERLAYD_BIN" run --config "$WORK/h3.toml" 2>&1) || rc=$?
assert_eq "overlayd run as $USR with user = \"root\": exit status" 1 "$rc"
last=$(tail -n 1 <<<"$out")
[[ $last == *"node.user:"*"CAP_SETUID"* ]] || die "the error does not say what is missing:"$'\n'"$out"
ok "refused: $last"
link_exists "$H1" "$T" && die "the refused daemon left TAP $T behind"
log "PASS: running as an unprivileged user"
