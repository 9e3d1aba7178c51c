# shellcheck shell=bash
# netns-tests/lib.sh - helpers for the privileged overlayd labs (network namespaces + veth).
#
# Source it at the top of a scenario:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# What sourcing does: sets `set -Eeuo pipefail`, checks we are root and have the tools, picks a
# per-run PREFIX ("o" + 4 random hex chars) and a work dir $WORK, and installs an EXIT trap that
# stops the processes this run started (only those, by PID), deletes this run's namespaces and
# removes $WORK. Everything a lab creates lives inside its own namespaces: nothing is added to the
# host's namespace, so a crashed run leaves nothing but namespaces named $PREFIX-*.
#
# Naming: namespaces "$PREFIX-<name>", interfaces "$PREFIX<short>" (<= 15 chars, so <short> must
# be <= 10 chars).
#
# A lab that cannot set itself up FAILS (exit 1) with the reason; it never skips.
#
# Addresses: labs only use documentation ranges: underlay 192.0.2.0/24 and 2001:db8::/32,
# overlay 198.51.100.0/24 and 203.0.113.0/24.
#
# Environment:
#   OVERLAYD_BIN   daemon binary [<repo>/target/release/overlayd]
#   READY_TIMEOUT  seconds to wait for "overlayd ready" [20]
#   KEEP_WORK=1    keep $WORK (configs, logs, captures) after the run
#   VERBOSE=1      trace commands (set -x)
#   OVERLAYD_DATAPATH  auto|ebpf|userspace: every daemon of the run uses this data path
#                  (exported as OVERLAYD__NODE__DATAPATH); unset = the config's (default auto)

set -Eeuo pipefail

LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LIB_DIR/.." && pwd)
OVERLAYD_BIN=${OVERLAYD_BIN:-$REPO_DIR/target/release/overlayd}
READY_TIMEOUT=${READY_TIMEOUT:-20}
KEEP_WORK=${KEEP_WORK:-0}
if [[ -n ${OVERLAYD_DATAPATH:-} ]]; then export OVERLAYD__NODE__DATAPATH=$OVERLAYD_DATAPATH; fi

# ----------------------------------------------------------------------------- messages
log()  { printf '== %s\n' "$*"; }            # a step of the lab
ok()   { printf '   ok: %s\n' "$*"; }        # a check that passed
info() { printf '   %s\n' "$*"; }            # a measurement or a fact (never asserted)
die()  { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

_on_err() { printf 'FAIL: line %s: command failed (status %s): %s\n' "$1" "$2" "$3" >&2; }
trap '_on_err "$LINENO" "$?" "$BASH_COMMAND"' ERR
[[ ${VERBOSE:-0} == 1 ]] && set -x

# ----------------------------------------------------------------------------- run state
PREFIX=o$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
_PIDS=()                 # background processes started by this run (children of this shell)
_NAMESPACES=()           # namespaces created by this run
declare -A _DAEMON_PID=() _DAEMON_LOG=() _CAP_PID=() _LOG_SHOWN=()
_AT_CLEANUP=()           # commands registered with at_cleanup
WORK=""
TRANSFER_MBIT=""         # set by tcp_transfer
EXIT_STATUS=0            # set by wait_exit

_cleanup() {
  local rc=$? pid nsn name i
  set +e +x
  trap - ERR
  if ((rc != 0)) && [[ -n $WORK ]]; then
    for name in "${!_DAEMON_LOG[@]}"; do
      [[ -z ${_LOG_SHOWN[${_DAEMON_LOG[$name]}]:-} ]] || continue
      printf -- '--- last lines of %s (%s)\n' "$name" "${_DAEMON_LOG[$name]}" >&2
      tail -n 25 "${_DAEMON_LOG[$name]}" >&2
    done
  fi
  # Only our own children: a PID whose parent is not this shell was reaped and may be reused.
  for pid in "${_PIDS[@]}"; do _is_ours "$pid" && kill -TERM "$pid" 2>/dev/null; done
  for ((i = 0; i < 30; i++)); do
    local alive=0
    for pid in "${_PIDS[@]}"; do _is_ours "$pid" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${_PIDS[@]}"; do _is_ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  for ((i = ${#_NAMESPACES[@]} - 1; i >= 0; i--)); do
    nsn=${_NAMESPACES[i]}
    [[ -e /run/netns/$nsn ]] && ip netns del "$nsn"
  done
  for ((i = ${#_AT_CLEANUP[@]} - 1; i >= 0; i--)); do eval "${_AT_CLEANUP[i]}"; done
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP_WORK == 1 ]]; then printf '(work dir kept: %s)\n' "$WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# at_cleanup CMD... - run CMD (e.g. userdel of a user the lab added) at exit, after this run's
# processes are stopped and its namespaces deleted; the last registered runs first
at_cleanup() {
  _AT_CLEANUP+=("$(printf '%q ' "$@")")
}

# _is_ours PID - PID is a live (not yet exited) child of this shell
_is_ours() {
  local stat ppid
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                 # fields after "pid (comm) "
  read -r _ ppid _ <<<"$stat"
  [[ $ppid == "$$" && ${stat%% *} != Z ]]
}

# ----------------------------------------------------------------------------- preconditions
[[ $EUID == 0 ]] || die "netns labs must run as root (network namespaces, TAP devices)"
for _t in ip ss ping tcpdump socat sha256sum timeout od; do
  command -v "$_t" >/dev/null || die "missing tool: $_t (see .ci/run for the package list)"
done
unset _t
WORK=$(mktemp -d "${TMPDIR:-/tmp}/overlayd-lab-$PREFIX.XXXXXX")

# need_daemon - fail unless the overlayd binary exists
need_daemon() {
  [[ -x $OVERLAYD_BIN ]] || die "overlayd binary not found at $OVERLAYD_BIN (run: cargo build --release, or set OVERLAYD_BIN)"
}

# ----------------------------------------------------------------------------- namespaces, links
ns_exec() { ip netns exec "$@"; }         # ns_exec NS cmd...

# add_ns NS... - create namespaces (cleanup registered), loopback up
add_ns() {
  local nsn
  for nsn; do
    ip netns add "$nsn" || die "cannot create network namespace $nsn"
    _NAMESPACES+=("$nsn")
    ip -n "$nsn" link set lo up
  done
}

# add_veth NS1 DEV1 ADDR1 NS2 DEV2 ADDR2 [MTU] - veth pair between two namespaces, both ends up.
# ADDR is a CIDR (IPv4, or IPv6 added with nodad) or "-" for none.
add_veth() {
  local ns1=$1 dev1=$2 addr1=$3 ns2=$4 dev2=$5 addr2=$6 mtu=${7:-1500}
  ip link add "$dev1" netns "$ns1" mtu "$mtu" type veth peer name "$dev2" netns "$ns2" mtu "$mtu" ||
    die "cannot create veth $dev1 ($ns1) <-> $dev2 ($ns2)"
  _if_addr_up "$ns1" "$dev1" "$addr1"
  _if_addr_up "$ns2" "$dev2" "$addr2"
}

_if_addr_up() {
  local nsn=$1 dev=$2 addr=$3
  if [[ $addr == *:* ]]; then
    ip -n "$nsn" addr add "$addr" dev "$dev" nodad
  elif [[ $addr != - ]]; then
    ip -n "$nsn" addr add "$addr" dev "$dev"
  fi
  ip -n "$nsn" link set dev "$dev" up
}

# add_bridge NS BR [PORT...] - Linux bridge in NS with the given ports, all up
add_bridge() {
  local nsn=$1 br=$2 port; shift 2
  ip -n "$nsn" link add "$br" type bridge || die "cannot create bridge $br in $nsn"
  for port; do ip -n "$nsn" link set dev "$port" master "$br" up; done
  ip -n "$nsn" link set dev "$br" up
}

# bridged_underlay SW NS CIDR [NS CIDR...] - one underlay segment: namespaces SW and every NS
# (IPv6 off on the hosts' new links), host i (from 1) joined to bridge <P>br in SW by the veth
# pair <P>u<i> (address CIDR) / <P>s<i>
bridged_underlay() {
  local sw=$1 i hosts=() cidrs=() ports=(); shift
  while (($# >= 2)); do hosts+=("$1") cidrs+=("$2"); shift 2; done
  (($# == 0 && ${#hosts[@]} > 0)) || die "bridged_underlay: give SW then NS CIDR pairs"
  add_ns "$sw" "${hosts[@]}"
  quiet_ipv6 "${hosts[@]}"
  for i in "${!hosts[@]}"; do
    add_veth "${hosts[i]}" "${PREFIX}u$((i + 1))" "${cidrs[i]}" "$sw" "${PREFIX}s$((i + 1))" -
    ports+=("${PREFIX}s$((i + 1))")
  done
  add_bridge "$sw" "${PREFIX}br" "${ports[@]}"
}

# add_native_vxlan NS DEV VNI LOCAL REMOTE UNDERLAY_DEV [PORT] - Linux kernel vxlan device
# (point to point: REMOTE is the default destination for every MAC). Not brought up.
add_native_vxlan() {
  local nsn=$1 dev=$2 vni=$3 lcl=$4 rmt=$5 udev=$6 port=${7:-4789}
  ip -n "$nsn" link add "$dev" type vxlan id "$vni" dstport "$port" local "$lcl" remote "$rmt" dev "$udev" ||
    die "cannot create kernel vxlan $dev in $nsn"
}

# checksum_offload_off NS DEV... - finish checksums in software (veth leaves them partial)
checksum_offload_off() {
  local nsn=$1 dev; shift
  command -v ethtool >/dev/null || die "ethtool not installed"
  for dev; do ns_exec "$nsn" ethtool -K "$dev" tx off >/dev/null || die "ethtool -K $dev tx off failed in $nsn"; done
}

link_mtu() { ns_exec "$1" cat "/sys/class/net/$2/mtu"; }        # link_mtu NS DEV
link_mac() { ns_exec "$1" cat "/sys/class/net/$2/address"; }    # link_mac NS DEV
link_exists() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }

# snmp_counter NS GROUP NAME - a counter of /proc/net/snmp in NS, e.g. snmp_counter h1 Ip FragCreates
snmp_counter() {
  # shellcheck disable=SC2016 # awk program
  ns_exec "$1" awk -v g="$2:" -v n="$3" '
    $1 == g && !hdr { for (i = 2; i <= NF; i++) col[$i] = i; hdr = 1; next }
    $1 == g && hdr  { if (n in col) print $col[n]; exit }' /proc/net/snmp | grep . ||
    die "no counter $2 $3 in /proc/net/snmp of $1"
}

# ----------------------------------------------------------------------------- polling
# wait_until [-t SECONDS] CMD... - run CMD every 0.2 s until it succeeds; status 1 on timeout
wait_until() {
  local t=10
  if [[ $1 == -t ]]; then t=$2; shift 2; fi
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# ----------------------------------------------------------------------------- prometheus
# start_prometheus NS EVERY RULES TARGET... - a real Prometheus in NS on 127.0.0.1:9090 (tsdb and
# log in $WORK) scraping TARGETs (host:port) as job "overlayd" and evaluating RULES ("" for none)
# every EVERY seconds; waits until it is ready. Its PID in $PROM_PID, the binary is $PROMETHEUS
# (default /usr/bin/prometheus). prom_query NS EXPR prints the JSON answer of an instant query.
start_prometheus() {
  local nsn=$1 every=$2 rules=$3 targets; shift 3
  PROMETHEUS=${PROMETHEUS:-/usr/bin/prometheus}
  [[ -x $PROMETHEUS ]] || die "prometheus not installed at $PROMETHEUS (package prometheus)"
  command -v curl >/dev/null || die "curl not installed"
  targets=$(printf '"%s", ' "$@")
  {
    printf 'global:\n  scrape_interval: %ss\n  scrape_timeout: %ss\n  evaluation_interval: %ss\n' "$every" "$every" "$every"
    [[ -z $rules ]] || printf 'rule_files:\n  - %s\n' "$rules"
    printf 'scrape_configs:\n  - job_name: overlayd\n    static_configs:\n      - targets: [%s]\n' "${targets%, }"
  } >"$WORK/prometheus.yml"
  mkdir -p "$WORK/tsdb"
  start_bg "$nsn" "$WORK/prometheus.log" "$PROMETHEUS" --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$WORK/tsdb" --web.listen-address=127.0.0.1:9090 --storage.tsdb.retention.time=1h
  PROM_PID=$BG_PID
  wait_until -t 30 ns_exec "$nsn" curl -fsS --max-time 2 http://127.0.0.1:9090/-/ready >/dev/null ||
    { _print_log "$WORK/prometheus.log"; die "prometheus did not get ready"; }
  ok "prometheus ready (pid $PROM_PID)"
}
prom_query() { ns_exec "$1" curl -fsS --max-time 5 http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$2"; }

# ----------------------------------------------------------------------------- background jobs
# start_bg NS LOGFILE CMD... - run CMD in NS in the background; PID in $BG_PID
start_bg() {
  local nsn=$1 logf=$2; shift 2
  ip netns exec "$nsn" "$@" >"$logf" 2>&1 </dev/null &
  BG_PID=$!
  _PIDS+=("$BG_PID")
}

# wait_exit PID TIMEOUT - wait for our child PID to exit; its status in $EXIT_STATUS; 1 on timeout
wait_exit() {
  local pid=$1 t=$2 deadline=$((SECONDS + $2))
  while _is_ours "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
  EXIT_STATUS=0
  wait "$pid" 2>/dev/null || EXIT_STATUS=$?
}

# ----------------------------------------------------------------------------- daemon
# write_config FILE UNDERLAY [KEY=TOML_VALUE...] - start a daemon config: [node] (with the
# given keys, e.g. datapath='"userspace"') and [admin] (socket in $WORK, so daemons of one run
# never share the default /run/overlayd/overlayd.sock)
write_config() {
  local file=$1 underlay=$2 sock kv; shift 2
  sock=$WORK/$(basename "$file" .toml).sock
  {
    printf '[node]\nunderlay = "%s"\n' "$underlay"
    for kv; do printf '%s = %s\n' "${kv%%=*}" "${kv#*=}"; done
    printf '\n[admin]\nsocket = "%s"\n' "$sock"
  } >"$file"
}

# add_network FILE NAME VNI TAP ADDRESS "PEER..." [KEY=TOML_VALUE...] - append a [[networks]]
# entry (encap vxlan unless a KEY=VALUE says encap='"gre"'). ADDRESS is a CIDR put on the TAP
# by the daemon, or "-" for none.
add_network() {
  local file=$1 name=$2 vni=$3 tap=$4 addr=$5 peers=$6 kv p list="" encap='"vxlan"'; shift 6
  for p in $peers; do list+="${list:+, }\"$p\""; done
  for kv; do [[ ${kv%%=*} != encap ]] || encap=${kv#*=}; done
  {
    printf '\n[[networks]]\nname = "%s"\nencap = %s\nvni = %s\ntap = "%s"\n' "$name" "$encap" "$vni" "$tap"
    [[ $addr == - ]] || printf 'address = "%s"\n' "$addr"
    printf 'peers = [%s]\n' "$list"
    for kv; do [[ ${kv%%=*} == encap ]] || printf '%s = %s\n' "${kv%%=*}" "${kv#*=}"; done
  } >>"$file"
}

# mesh_peers I ADDR... - the peers of host I (from 1) in a full mesh of the hosts at ADDR...:
# every ADDR but the I-th, space-separated (for add_network)
mesh_peers() {
  local i=$1 j=0 a out=""; shift
  for a; do
    j=$((j + 1))
    ((j == i)) || out+="${out:+ }$a"
  done
  printf '%s\n' "$out"
}

# start_daemon NS NAME CONFIG - run `overlayd run --config CONFIG` in NS; log in $WORK/NAME.log
start_daemon() {
  local nsn=$1 name=$2 cfg=$3
  need_daemon
  _DAEMON_LOG[$name]=$WORK/$name.log
  # emptied here, not only by start_bg's redirection in the background: a restarted daemon's
  # wait_ready must not find the "overlayd ready" of the run before
  : >"${_DAEMON_LOG[$name]}"
  start_bg "$nsn" "${_DAEMON_LOG[$name]}" "$OVERLAYD_BIN" run --config "$cfg"
  _DAEMON_PID[$name]=$BG_PID
  info "started $name (pid $BG_PID) in $nsn"
}

# wait_ready NAME [TIMEOUT] - wait for the "overlayd ready" log line; fail with the log if the
# daemon died or never got ready
wait_ready() {
  local name=$1 t=${2:-$READY_TIMEOUT} pid=${_DAEMON_PID[$1]} logf=${_DAEMON_LOG[$1]}
  local deadline=$((SECONDS + t))
  until grep -q 'overlayd ready' "$logf" 2>/dev/null; do
    if ! _is_ours "$pid"; then
      wait "$pid" 2>/dev/null && EXIT_STATUS=0 || EXIT_STATUS=$?
      _print_log "$logf"
      die "daemon $name exited (status $EXIT_STATUS) before it was ready"
    fi
    if ((SECONDS >= deadline)); then
      _print_log "$logf"
      die "daemon $name not ready after ${t}s (no 'overlayd ready' line in its log)"
    fi
    sleep 0.1
  done
  ok "$name ready"
}

# stop_daemon NAME - SIGTERM; the daemon must exit with status 0 within 10 s
stop_daemon() {
  local name=$1 pid=${_DAEMON_PID[$1]}
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_exit "$pid" 10; then
    _print_log "${_DAEMON_LOG[$name]}"
    die "daemon $name did not exit within 10 s of SIGTERM"
  fi
  if ((EXIT_STATUS != 0)); then
    _print_log "${_DAEMON_LOG[$name]}"
    die "daemon $name exited with status $EXIT_STATUS after SIGTERM (expected 0)"
  fi
  ok "$name stopped cleanly on SIGTERM"
}

_print_log() {
  _LOG_SHOWN[$1]=1
  printf -- '--- %s\n' "$1" >&2
  cat "$1" >&2 || true
  printf -- '--- end of %s\n' "$1" >&2
}

# ----------------------------------------------------------------------------- assertions
# assert_eq WHAT EXPECTED SEEN
assert_eq() {
  [[ $2 == "$3" ]] || die "$1: expected $2, seen $3"
  ok "$1: $3"
}

# assert_ge WHAT MIN SEEN (integers)
assert_ge() {
  (($3 >= $2)) || die "$1: expected at least $2, seen $3"
  ok "$1: $3 (>= $2)"
}

# assert_ok WHAT CMD... - CMD must exit 0 (its output is shown if not)
assert_ok() {
  local what=$1 out rc=0; shift
  out=$("$@" 2>&1) || rc=$?
  ((rc == 0)) || die "$what: expected exit status 0, seen $rc from: $*"$'\n'"$out"
  ok "$what"
}

# assert_fails WHAT CMD... - CMD must exit non-zero
assert_fails() {
  local what=$1 out rc=0; shift
  out=$("$@" 2>&1) || rc=$?
  ((rc != 0)) || die "$what: expected a non-zero exit status, seen 0 from: $*"$'\n'"$out"
  ok "$what (exit status $rc)"
}

# Pings are judged by their per-reply lines ("64 bytes from ...: icmp_seq=7 ..." from iputils,
# "... seq=6 ..." from busybox, which counts from 0), never by the summary: a reply that comes
# late still counts, a duplicate counts once, a reply to a request outside the range does not.
# ping_start/ping_finish/ping_ok/ping_some run ping with a deadline (-w) and without -c, and
# stop it (SIGINT) as soon as the requests they judge are answered: iputils `ping -c N` gives
# up on a reply ~2 RTTs after its last request, and `ping -c N -w D` stops at N replies even
# if one of them answers a request sent after a still missing one.

# ping_answered FIRST N - read ping output on stdin; print how many of the sequence numbers
# FIRST..FIRST+N-1 were answered, followed by the first 20 that were not
ping_answered() {
  # shellcheck disable=SC2016 # awk program
  awk -v first="$1" -v n="$2" '
    / bytes from / && match($0, /seq=[0-9]+/) {
      s = substr($0, RSTART + 4, RLENGTH - 4) - first
      if (s >= 0 && s < n) got[s] = 1
    }
    END {
      for (i = 0; i < n; i++) if (i in got) c++; else if (m++ < 20) miss = miss " " (i + first)
      print c + 0 miss
    }'
}

declare -A _PING_PID=() _PING_N=() _PING_WHAT=()

# ping_start NAME NS DST N [PING_ARGS...] - start pinging DST from NS in the background (every
# 0.2 s unless PING_ARGS say otherwise; log $WORK/ping-NAME.log); requests 1..N will be judged
# by ping_finish, which waits for their replies until the deadline of N/5 + 10 s (PING_DEADLINE
# seconds if set)
ping_start() {
  local name=$1 nsn=$2 dst=$3 count=$4; shift 4
  _PING_N[$name]=$count
  _PING_WHAT[$name]="ping ${*:+$* }$dst from $nsn"
  : >"$WORK/ping-$name.log"
  start_bg "$nsn" "$WORK/ping-$name.log" ping -n -i 0.2 -w "${PING_DEADLINE:-$((count / 5 + 10))}" "$@" "$dst"
  _PING_PID[$name]=$BG_PID
}

# ping_finish NAME [NEED] - wait until NEED (default: all N) of requests 1..N of ping_start NAME
# are answered, or ping reached its deadline; stop ping; fail unless NEED were answered
ping_finish() {
  local name=$1 n=${_PING_N[$1]} pid=${_PING_PID[$1]} logf=$WORK/ping-$1.log rx missing
  local need=${2:-${_PING_N[$1]}}
  while _ping_running "$pid"; do
    read -r rx _ < <(ping_answered 1 "$n" <"$logf")
    ((rx < need)) || break
    sleep 0.1
  done
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  read -r rx missing < <(ping_answered 1 "$n" <"$logf")
  if ((rx < need)); then
    printf -- '--- last lines of %s\n' "$logf" >&2
    tail -n 15 "$logf" >&2
    if ((need == n)); then
      die "${_PING_WHAT[$name]}: expected $n/$n replies, seen $rx/$n (unanswered icmp_seq: $missing)"
    fi
    die "${_PING_WHAT[$name]}: expected at least $need replies to requests 1..$n, seen $rx (unanswered icmp_seq: $missing)"
  fi
  if ((need == n)); then
    ok "${_PING_WHAT[$name]}: $rx/$n replies"
  else
    ok "${_PING_WHAT[$name]}: $rx replies to requests 1..$n (at least $need needed)"
  fi
}

# _ping_running PID - PID is a child of this (sub)shell that has not exited yet
_ping_running() {
  local stat ppid me=$BASHPID
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  read -r _ ppid _ <<<"$stat"
  [[ $ppid == "$me" && ${stat%% *} != Z ]]
}

# ping_ok NS DST COUNT [PING_ARGS...] - every one of requests 1..COUNT must be answered (late
# replies are waited for; ping may send a few more requests meanwhile: count frames by sequence
# number, e.g. tcpdump 'icmp[6:2] <= COUNT', tshark 'icmp.seq <= COUNT')
ping_ok() {
  local nsn=$1 dst=$2 count=$3; shift 3
  ping_start ok "$nsn" "$dst" "$count" "$@"
  ping_finish ok
}

# ping_some NS DST MIN OF [PING_ARGS...] - reachability under load: at least MIN of requests
# 1..OF answered
ping_some() {
  local nsn=$1 dst=$2 min=$3 of=$4; shift 4
  ping_start some "$nsn" "$dst" "$of" "$@"
  ping_finish some "$min"
}

# wait_ping NS DST [TIMEOUT] - wait until DST answers a ping (ARP, learning, startup)
wait_ping() {
  wait_until -t "${3:-10}" ns_exec "$1" ping -n -c 1 -W 1 "$2" ||
    die "no ping reply from $2 in $1 within ${3:-10}s"
}

# ----------------------------------------------------------------------------- captures
# capture_start NAME NS DEV [FILTER...] - tcpdump on DEV into $WORK/NAME.pcap (running once
# this returns)
capture_start() {
  local name=$1 nsn=$2 dev=$3; shift 3
  start_bg "$nsn" "$WORK/$name.tcpdump.log" tcpdump -i "$dev" -n -U --immediate-mode -Z root -w "$WORK/$name.pcap" "$@"
  _CAP_PID[$name]=$BG_PID
  wait_until -t 10 grep -q 'listening on' "$WORK/$name.tcpdump.log" || {
    _print_log "$WORK/$name.tcpdump.log"
    die "tcpdump on $dev in $nsn did not start"
  }
}

# capture_stop NAME... - stop captures (after a short grace so in-flight frames land); fail if
# the kernel dropped frames for want of buffer space, so a count is never silently short.
# ("received by filter" also counts frames still queued when tcpdump got SIGINT - e.g. a
# keepalive arriving in that instant - which it never writes; those are not the lab's frames.)
capture_stop() {
  local name logf got dropped
  sleep 0.5
  for name; do kill -INT "${_CAP_PID[$name]}" 2>/dev/null || true; done
  for name; do
    logf=$WORK/$name.tcpdump.log
    wait_exit "${_CAP_PID[$name]}" 10 || die "tcpdump $name did not stop"
    got=$(sed -n 's/^\([0-9]*\) packets\{0,1\} captured.*/\1/p' "$logf")
    dropped=$(sed -n 's/^\([0-9]*\) packets\{0,1\} dropped by kernel.*/\1/p' "$logf")
    [[ -n $got && $dropped == 0 ]] || {
      _print_log "$logf"
      die "capture $name is incomplete: $got frames written, ${dropped:-?} dropped by the kernel"
    }
  done
}

# send_frame NS DEV SCAPY_EXPR - send exactly one frame built by scapy (/usr/bin/python3 with
# python3-scapy) on DEV, e.g. send_frame h1 tap0 "Ether(dst='ff:ff:ff:ff:ff:ff') / ARP(...)"
send_frame() {
  local nsn=$1 dev=$2 expr=$3
  ns_exec "$nsn" /usr/bin/python3 -c "
import logging, sys
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import *
sendp($expr, iface=sys.argv[1], count=1, verbose=False)" "$dev" ||
    die "could not send a frame on $dev in $nsn: $expr"
}

# capture_count NAME [FILTER...] - number of frames in the capture matching FILTER
capture_count() {
  local name=$1; shift
  tcpdump -n -r "$WORK/$name.pcap" "$@" 2>/dev/null | wc -l
}

# capture_show NAME [FILTER...] - print the first 20 matching frames (for failure reports)
capture_show() {
  local name=$1; shift
  { tcpdump -n -e -r "$WORK/$name.pcap" "$@" 2>/dev/null || true; } | head -n 20 | sed 's/^/     /' || true
}

# ----------------------------------------------------------------------------- etcd
# etcd_start NS ADDR [SCHEME [ETCD_ARG...]] - a one-member etcd in NS (the etcd binary started by
# the lab, never a packaged service): clients on SCHEME://ADDR:2379 (SCHEME http unless given;
# https needs the TLS files among ETCD_ARGs), peers on 127.0.0.1:2380, data in $WORK/etcd (kept
# across a restart), log in $WORK/etcd.log. Returns at once; PID in $ETCD_PID.
etcd_start() {
  local nsn=$1 addr=$2 scheme=${3:-http}
  shift $(($# < 3 ? $# : 3))
  start_bg "$nsn" "$WORK/etcd.log" etcd --name e1 --data-dir "$WORK/etcd" \
    --listen-client-urls "$scheme://$addr:2379" --advertise-client-urls "$scheme://$addr:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e1=http://127.0.0.1:2380 "$@"
  ETCD_PID=$BG_PID
}

# etcd_wait CMD... - wait (20 s) until `CMD endpoint health` (an etcdctl call with its
# endpoints) succeeds; fail with the tail of $WORK/etcd.log if it never does
etcd_wait() {
  wait_until -t 20 "$@" endpoint health ||
    { tail -n 20 "$WORK/etcd.log" >&2; die "etcd did not become healthy"; }
}

# etcd_up NS ADDR - etcd_start over http, then etcd_wait with plain etcdctl (API v3)
etcd_up() {
  etcd_start "$1" "$2"
  etcd_wait ns_exec "$1" env ETCDCTL_API=3 etcdctl --endpoints "http://$2:2379"
  ok "etcd up (pid $ETCD_PID)"
}

# ----------------------------------------------------------------------------- bulk transfer
# make_random_file FILE MEGABYTES
make_random_file() {
  dd if=/dev/urandom of="$1" bs=1M count="$2" status=none
}

# tcp_transfer SRC_NS DST_NS DST_ADDR PORT FILE LABEL - send FILE over TCP from SRC_NS to
# (DST_ADDR IPv4 or IPv6)
# DST_ADDR:PORT in DST_NS with socat; fail unless the received bytes have the same sha256.
# Sets TRANSFER_MBIT (rate, for printing only: never assert on timing).
tcp_transfer() {
  local src_ns=$1 dst_ns=$2 addr=$3 port=$4 file=$5 label=$6
  local tag=${label//[^A-Za-z0-9]/_} srv t0 t1 bytes want got listen=TCP-LISTEN:$port,bind=$addr connect=TCP:$addr:$port
  local out=$WORK/recv-$tag
  # an IPv6 address: socat wants the address family spelled out and the address in brackets
  [[ $addr != *:* ]] || { listen=TCP6-LISTEN:$port,bind=[$addr]; connect=TCP6:[$addr]:$port; }
  rm -f "$out"
  start_bg "$dst_ns" "$WORK/socat-srv-$tag.log" \
    socat -u -b 131072 "$listen,reuseaddr" "CREATE:$out"
  srv=$BG_PID
  wait_until -t 10 _tcp_listening "$dst_ns" "$port" || die "$label: socat server on $addr:$port did not start"
  t0=$(date +%s%N)
  timeout 120 ip netns exec "$src_ns" socat -u -b 131072 "OPEN:$file" "$connect,connect-timeout=5" ||
    die "$label: sending $file to $addr:$port failed"
  wait_exit "$srv" 60 || die "$label: receiver did not finish within 60 s"
  t1=$(date +%s%N)
  ((EXIT_STATUS == 0)) || die "$label: socat receiver exited with status $EXIT_STATUS"
  bytes=$(stat -c %s "$out")
  want=$(sha256sum <"$file" | cut -d' ' -f1)
  got=$(sha256sum <"$out" | cut -d' ' -f1)
  [[ $want == "$got" ]] || die "$label: sha256 differs: sent $want ($(stat -c %s "$file") bytes), received $got ($bytes bytes)"
  # shellcheck disable=SC2034 # read by the scenarios
  TRANSFER_MBIT=$(awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", b * 8 / (ns / 1e9) / 1e6 }')
  ok "$label: $bytes bytes arrived byte-identical (sha256 ${got:0:16}...)"
  rm -f "$out"
}

_tcp_listening() { ns_exec "$1" ss -Hltn "sport = :$2" | grep -q .; }
# _udp_bound NS PORT - a UDP socket is bound to PORT in NS (ss itself exits 0 even if none is)
_udp_bound() { ns_exec "$1" ss -Hlun "sport = :$2" | grep -q .; }

# ----------------------------------------------------------------------------- metrics
# set_metrics_listen FILE ADDR:PORT - add a [metrics] table to a config from write_config
set_metrics_listen() {
  printf '\n[metrics]\nlisten = "%s"\n' "$2" >>"$1"
}

# scrape NS URL - the text of a metrics endpoint, fetched from inside NS (fails the lab if the
# endpoint does not answer 200)
scrape() {
  ns_exec "$1" curl -fsS --max-time 5 "$2" || die "scrape of $2 in $1 failed"
}

# metric TEXT SERIES - the value of one series (exact name and labels as exported, labels
# sorted by name) in a scrape's TEXT; fails the lab if the series is absent
metric() {
  local v
  v=$(awk -v s="$2" '$1 == s { print $2; found = 1; exit } END { exit !found }' <<<"$1") ||
    die "series $2 is not exported"
  printf '%s\n' "$v"
}

# quiet_ipv6 NS... - no IPv6 on new links of NS (no router/neighbour solicitations on TAPs, so
# frame counts are exactly what a lab sends)
quiet_ipv6() {
  local nsn
  for nsn; do
    ns_exec "$nsn" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 ||
      die "cannot disable IPv6 in $nsn"
  done
}

# ----------------------------------------------------------------------------- drop counters
# drop_totals NAME - ask daemon NAME for its drop totals (SIGUSR1) and wait until it logged
# the whole report: one "drop totals" line per scope ("-" for drops charged to no network, else
# the network name, one per [[networks]] of the config it runs), e.g.
#   ... drop totals scope="blue" drops="gre_checksum=1 malformed=2"
drop_totals() {
  local name=$1 logf=${_DAEMON_LOG[$1]} before cfg nets
  cfg=$(tr '\0' '\n' <"/proc/${_DAEMON_PID[$name]}/cmdline" | sed -n '/^--config$/{n;p;q}') ||
    die "daemon $name is not running"
  [[ -n $cfg ]] || die "cannot tell which config daemon $name runs"
  nets=$(grep -c '^\[\[networks\]\]' "$cfg" || true)
  before=$(grep -c 'drop totals' "$logf" || true)
  kill -USR1 "${_DAEMON_PID[$name]}" || die "cannot signal daemon $name"
  wait_until -t 10 _more_lines "$logf" 'drop totals' $((before + nets)) ||
    die "daemon $name logged no complete drop totals report ($((1 + nets)) lines) after SIGUSR1"
}
_more_lines() { (($(grep -c "$2" "$1" || true) > $3)); }

# drop_count NAME SCOPE REASON - REASON's count in the last drop totals of SCOPE logged by NAME
# (0 when absent); call drop_totals first
drop_count() {
  local line n
  line=$(grep 'drop totals' "${_DAEMON_LOG[$1]}" | grep -F "scope=\"$2\"" | tail -n 1)
  [[ -n $line ]] || die "daemon $1 logged no drop totals for scope $2"
  n=$(sed -n "s/.*[\" ]$3=\([0-9]*\).*/\1/p" <<<"$line")
  echo "${n:-0}"
}
