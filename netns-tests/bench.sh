#!/usr/bin/env bash
# netns-tests/bench.sh - overlayd against the kernel, side by side, in one run.
#
# Usage (root; from the repository):
#   netns-tests/bench.sh                 the default SYSTEMS, REPEATS interleaved rounds
#   netns-tests/bench.sh SYSTEM...       only these systems
#   netns-tests/bench.sh list            list the systems
#   netns-tests/bench.sh clean           remove a lab left behind (KEEP_LAB=1 or a kill -9)
#   netns-tests/bench.sh table RESULTS [METRIC...]   markdown table from a results.txt
#
# Not a test: it asserts nothing (netns-tests/run.sh does not run it) and prints numbers.
# Builds the release binary first unless OVERLAYD_BIN is set. See docs/benchmark.md.
#
# Lab, rebuilt for every system and every repetition:
#
#   netns ${PREFIX}_h1                                  netns ${PREFIX}_h2
#   ${PREFIX}_u1 192.0.2.1/24 <==== veth, MTU 1500 ====> ${PREFIX}_u2 192.0.2.2/24   (underlay)
#   <overlay dev> 198.51.100.1/24  ......overlay......  <overlay dev> 198.51.100.2/24
#
# Systems: raw (plain veth, no overlay: the ceiling), kernel-vxlan (the Linux vxlan device,
# VNI 42, port 4789), overlayd (VXLAN, userspace data path, offloads on), overlayd-ebpf (VXLAN,
# the eBPF fast path at TC: [node] datapath = "ebpf"), overlayd-nooffload (VXLAN
# with [node] offload = false), overlayd-gre (GRE, when this overlayd build supports it).
#
# Measurements (client in h1 -> server in h2, overlay addresses), REPEATS times each:
#   tcp1_gbps / tcp4_gbps   iperf3 TCP, 1 and 4 streams, DURATION s (+OMIT s not counted)
#   udp64_rx_kpps           iperf3 UDP, UDP_LEN-byte payloads, as fast as the sender goes:
#                           packets received per second (also sent kpps and loss %)
#   ping_avg_ms / p99       PING_COUNT pings at PING_INTERVAL s
#   cpu_s_per_gb            CPU seconds (all cores, whole machine, /proc/stat) per GB of TCP
#                           payload received during tcp1; daemon_cpu_s_per_gb: the overlay
#                           daemons' own CPU (/proc/PID/stat) per GB
#   plus drops/retransmits/fragments during tcp1 and per-process CPU (*_core_pct)
# Output: "RUN ..." per repetition and "RESULT ... value=<median> min max n" per metric in
# $OUTDIR/results.txt, then a table of medians with the ratio overlayd / kernel-vxlan.
#
# Environment knobs (defaults in brackets):
#   SYSTEMS ["raw kernel-vxlan overlayd overlayd-ebpf overlayd-nooffload", + overlayd-gre if supported]
#   DURATION [10]  OMIT [1]  REPEATS [3]  UDP_LEN [64]  UDP_RATE [0]
#   PING_COUNT [100]  PING_INTERVAL [0.01]  PREFIX [ob]  OUTDIR [/tmp/overlayd-bench.<time>]
#   OVERLAYD_BIN [target/release/overlayd, built if unset]  PROFILE [0] (1 = build with frame
#   pointers, one extra tcp1 run per system under perf: netns-tests/profile.sh)  INTERLEAVE [1]
#   KEEP_LAB [0]  BASE_BIN [unset] (the binary of overlayd-base / overlayd-gre-base: compare
#   two builds in one interleaved run, e.g. BASE_BIN=/tmp/main/overlayd SYSTEMS="kernel-vxlan
#   overlayd-gre-base overlayd-gre")
#
# The machine may be shared: compare systems within one run only, and look at
# foreign_core_pct (other processes' CPU during tcp1) before trusting a difference.

set -Eeuo pipefail

# ----------------------------------------------------------------------------- settings
PREFIX=${PREFIX:-ob}
DURATION=${DURATION:-10}
OMIT=${OMIT:-1}
REPEATS=${REPEATS:-3}
UDP_LEN=${UDP_LEN:-64}
UDP_RATE=${UDP_RATE:-0}
PING_COUNT=${PING_COUNT:-100}
PING_INTERVAL=${PING_INTERVAL:-0.01}
PROFILE=${PROFILE:-0}
KEEP_LAB=${KEEP_LAB:-0}
INTERLEAVE=${INTERLEAVE:-1}
OUTDIR=${OUTDIR:-/tmp/overlayd-bench.$(date +%Y%m%d-%H%M%S)}
IPERF_PORT=${IPERF_PORT:-5201}

NS1=${PREFIX}_h1 NS2=${PREFIX}_h2          # network namespaces
UL1=${PREFIX}_u1 UL2=${PREFIX}_u2          # underlay veth ends
U1=192.0.2.1 U2=192.0.2.2                  # underlay addresses (/24)
O1=198.51.100.1 O2=198.51.100.2            # overlay addresses (/24)
UNDERLAY_MTU=1500
NCPU=$(nproc)
CLK_TCK=$(getconf CLK_TCK)

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# PROFILE=1: profile_build, profile_run (after the last repetition), profile_summary
source "$REPO_DIR/netns-tests/profile.sh"

# Name -> one-line description.
declare -A SYSTEM_INFO=(
  [raw]="plain veth underlay, no overlay, offloads on (the ceiling)"
  [kernel-vxlan]="kernel vxlan VNI 42 dstport 4789, overlay IP on the vxlan device"
  [overlayd]="overlayd VXLAN VNI 42, userspace data path, offload on (default): TSO/GSO/GRO"
  [overlayd-ebpf]="overlayd VXLAN VNI 42, eBPF fast path at TC (datapath = \"ebpf\")"
  [overlayd-nooffload]="overlayd VXLAN VNI 42 with [node] offload = false"
  [overlayd-gre]="overlayd GRE key 42 (raw IP protocol 47 sockets)"
  [overlayd-base]="overlayd VXLAN as 'overlayd', run from \$BASE_BIN (another build: before/after in one run)"
  [overlayd-gre-base]="overlayd GRE as 'overlayd-gre', run from \$BASE_BIN (another build: before/after in one run)"
  [overlayd-kernel]="overlayd VXLAN in h1 (the client), kernel vxlan in h2: a mixed segment"
  [kernel-overlayd]="kernel vxlan in h1 (the client), overlayd VXLAN in h2: a mixed segment"
)
ALL_SYSTEMS=(raw kernel-vxlan overlayd overlayd-ebpf overlayd-nooffload overlayd-gre overlayd-kernel kernel-overlayd overlayd-base overlayd-gre-base)

# ----------------------------------------------------------------------------- logging
log()  { printf '# %s\n' "$*" >&2; }
die()  { printf '# ERROR: %s\n' "$*" >&2; exit 1; }
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

# ----------------------------------------------------------------------------- lab state
PIDS=()                 # every background process we started (killed on cleanup)
DAEMONS=()              # "label:pid" of overlay daemons (CPU accounted)
WORK=""                 # per-system directory under $OUTDIR
CUR_SYS=""

ns() { ip netns exec "$@"; }            # ns NS cmd...

# start_bg LOGFILE NS cmd...   - start a background process in NS, record its PID in $BG_PID
start_bg() {
  local logf=$1 nsn=$2; shift 2
  ip netns exec "$nsn" "$@" >"$logf" 2>&1 </dev/null &
  BG_PID=$!
  PIDS+=("$BG_PID")
}

# start_daemon LABEL NS cmd...  - like start_bg, log in $WORK/LABEL.log, counted as overlay daemon
start_daemon() {
  local label=$1 nsn=$2; shift 2
  start_bg "$WORK/$label.log" "$nsn" "$@"
  DAEMONS+=("$label:$BG_PID")
  log "started $label (pid $BG_PID) in $nsn: $*"
}

# wait_link NS DEV [TIMEOUT_S] - wait until DEV exists in NS
wait_link() {
  local nsn=$1 dev=$2 t=${3:-20} i
  for ((i = 0; i < t * 10; i++)); do
    ip -n "$nsn" link show dev "$dev" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "interface $dev did not appear in $nsn within ${t}s"
}

# overlay_ip NS DEV ADDR [MTU] - put ADDR/24 on DEV, set MTU, bring it up
overlay_ip() {
  local nsn=$1 dev=$2 addr=$3 mtu=${4:-}
  [[ -n $mtu ]] && ip -n "$nsn" link set dev "$dev" mtu "$mtu"
  ip -n "$nsn" addr replace "$addr/24" dev "$dev"
  ip -n "$nsn" link set dev "$dev" up
}

# overlay_dev NS ADDR - name of the interface carrying ADDR in NS
overlay_dev() {
  ip -n "$1" -o -4 addr show | awk -v a="$2" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}'
}

link_mtu() { ip -n "$1" -o link show dev "$2" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'; }

lab_exists() { ip netns list | awk '{print $1}' | grep -qx -e "$NS1" -e "$NS2"; }

# in_our_ns PID - true if PID (still) lives in one of our namespaces, so it is ours to kill
in_our_ns() {
  local pid=$1 nsn
  [[ -e /proc/$pid/ns/net ]] || return 1
  for nsn in "$NS1" "$NS2"; do
    [[ -e /run/netns/$nsn && /proc/$pid/ns/net -ef /run/netns/$nsn ]] && return 0
  done
  return 1
}

lab_down() {  # idempotent; may run concurrently in the parent and a system's subshell
  set +e
  local pid nsn sig
  for sig in TERM KILL; do
    # recorded PIDs first, then anything else living in our namespaces (started by us)
    for pid in "${PIDS[@]}" $(for nsn in "$NS1" "$NS2"; do ip netns pids "$nsn" 2>/dev/null || true; done); do
      in_our_ns "$pid" && kill -s "$sig" "$pid" 2>/dev/null || true
    done
    [[ $sig == TERM ]] && sleep 0.3
  done
  [[ -n ${PERF_PID:-} ]] && kill $PERF_PID 2>/dev/null || true
  for nsn in "$NS1" "$NS2"; do
    [[ -e /run/netns/$nsn ]] && ip netns del "$nsn" 2>/dev/null || true
  done
  PIDS=() DAEMONS=() PERF_PID=""
}

lab_up() {
  lab_exists && die "$NS1/$NS2 already exist (another run with PREFIX=$PREFIX, or leftovers: '$0 clean')"
  ip netns add "$NS1"
  ip netns add "$NS2"
  ip link add "$UL1" netns "$NS1" mtu "$UNDERLAY_MTU" type veth peer name "$UL2" netns "$NS2" mtu "$UNDERLAY_MTU"
  ip -n "$NS1" addr add "$U1/24" dev "$UL1"
  ip -n "$NS2" addr add "$U2/24" dev "$UL2"
  local nsn
  for nsn in "$NS1" "$NS2"; do
    ip -n "$nsn" link set lo up
    ip -n "$nsn" link set dev "${PREFIX}_u${nsn: -1}" up
  done
  ns "$NS1" ping -c 1 -W 2 "$U2" >/dev/null || die "underlay ping $U1 -> $U2 failed"
}

# ============================================================================= systems
# Each setup_<name> runs after lab_up and must make $O1 <-> $O2 work over its overlay.

setup_raw() {
  overlay_ip "$NS1" "$UL1" "$O1"
  overlay_ip "$NS2" "$UL2" "$O2"
  NOTE_MTU="no overlay: veth MTU $UNDERLAY_MTU"
}

# kernel VXLAN: point-to-point (remote = the other host), MTU derived by the kernel from
# the underlay device: 1500 - 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
vxlan_pair() {
  ip -n "$NS1" link add "${PREFIX}_vx1" type vxlan id 42 dstport 4789 local "$U1" remote "$U2" dev "$UL1"
  ip -n "$NS2" link add "${PREFIX}_vx2" type vxlan id 42 dstport 4789 local "$U2" remote "$U1" dev "$UL2"
}

setup_kernel_vxlan() {
  vxlan_pair
  overlay_ip "$NS1" "${PREFIX}_vx1" "$O1"
  overlay_ip "$NS2" "${PREFIX}_vx2" "$O2"
  NOTE_MTU="vxlan MTU set by kernel from underlay (1500-50)"
}

# overlayd: one daemon per namespace; its TAP ${PREFIX}_ovl carries the overlay address.
# overlayd_setup ENCAP OFFLOAD DATAPATH [HOST...] - ENCAP vxlan|gre, OFFLOAD the value of [node]
# offload, DATAPATH of [node] datapath, daemons in hosts HOST (1, 2) [both]
overlayd_setup() {
  local encap=$1 offload=$2 datapath=$3 i j nsn cfg t hosts=("${@:4}")
  ((${#hosts[@]})) || hosts=(1 2)
  for i in "${hosts[@]}"; do
    j=$((3 - i)) nsn=${PREFIX}_h$i cfg=$WORK/overlayd$i.toml
    cat >"$cfg" <<EOF
[node]
underlay = "192.0.2.$i"
offload = $offload
datapath = "$datapath"

[admin]
socket = "$WORK/overlayd$i.sock"

[[networks]]
name = "bench"
encap = "$encap"
vni = 42
tap = "${PREFIX}_ovl"
address = "198.51.100.$i/24"
peers = ["192.0.2.$j"]
EOF
    start_daemon "overlayd$i" "$nsn" "$OVERLAYD_BIN" run --config "$cfg"
  done
  for i in "${hosts[@]}"; do
    for ((t = 0; t < 200; t++)); do
      grep -q 'overlayd ready' "$WORK/overlayd$i.log" 2>/dev/null && break
      sleep 0.1
    done
    grep -q 'overlayd ready' "$WORK/overlayd$i.log" || { cat "$WORK/overlayd$i.log" >&2; die "overlayd$i not ready"; }
  done
  NOTE_MTU="tap MTU $(link_mtu "${PREFIX}_h${hosts[0]}" "${PREFIX}_ovl") set by overlayd ($encap, offload=$offload, datapath=$datapath)"
}

setup_overlayd() { overlayd_setup vxlan true userspace; }
setup_overlayd_ebpf() { overlayd_setup vxlan true ebpf; }
setup_overlayd_nooffload() { overlayd_setup vxlan false userspace; }
setup_overlayd_gre() { overlayd_setup gre true userspace; }
# the same with the binary $BASE_BIN, e.g. a build of the main branch, to compare two builds
# interleaved in one run
base_bin() { [[ -x ${BASE_BIN:-} ]] || die "this system needs BASE_BIN, an overlayd binary (got '${BASE_BIN:-}')"; }
setup_overlayd_base() { base_bin; OVERLAYD_BIN=$BASE_BIN overlayd_setup vxlan true userspace; }
setup_overlayd_gre_base() { base_bin; OVERLAYD_BIN=$BASE_BIN overlayd_setup gre true userspace; }

# a mixed segment: overlayd in one host, the kernel's vxlan device in the other (the veth keeps
# its default offloads, as everywhere here)
setup_overlayd_kernel() {
  ip -n "$NS2" link add "${PREFIX}_vx2" type vxlan id 42 dstport 4789 local "$U2" remote "$U1" dev "$UL2"
  overlay_ip "$NS2" "${PREFIX}_vx2" "$O2"
  overlayd_setup vxlan true userspace 1
}
setup_kernel_overlayd() {
  ip -n "$NS1" link add "${PREFIX}_vx1" type vxlan id 42 dstport 4789 local "$U1" remote "$U2" dev "$UL1"
  overlay_ip "$NS1" "${PREFIX}_vx1" "$O1"
  overlayd_setup vxlan true userspace 2
}

# gre_supported - whether this overlayd build accepts a GRE network
gre_supported() {
  local f rc=0
  f=$(mktemp)
  printf '[node]\nunderlay = "192.0.2.1"\n[[networks]]\nname = "g"\nencap = "gre"\nvni = 42\ntap = "g0"\npeers = ["192.0.2.2"]\n' >"$f"
  "$OVERLAYD_BIN" check --config "$f" >/dev/null 2>&1 || rc=$?
  rm -f "$f"
  return $rc
}

# ============================================================================= measuring
RESULTS_FILE=""
emit() {  # emit METRIC REP VALUE
  local line="RUN system=$CUR_SYS metric=$1 rep=$2 value=$3"
  echo "$line"
  echo "$line" >>"$RESULTS_FILE"
}
emit_info() { emit "$1" "$REP" "$2"; }  # facts about the setup, once per lab build

# overlay_ping_wait TIMEOUT_S - true once O1 -> O2 answers
overlay_ping_wait() {
  local t=$1 i
  for ((i = 0; i < t; i++)); do
    ns "$NS1" ping -c 1 -W 1 "$O2" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

check_overlay() {
  overlay_ping_wait 30 || die "overlay ping $O1 -> $O2 failed"
  local d1 d2 m1 m2 mtu
  d1=$(overlay_dev "$NS1" "$O1") d2=$(overlay_dev "$NS2" "$O2")
  [[ -n $d1 && -n $d2 ]] || die "overlay address missing"
  m1=$(link_mtu "$NS1" "$d1") m2=$(link_mtu "$NS2" "$d2")
  mtu=$((m1 < m2 ? m1 : m2))
  # a full-size packet with DF must go through unfragmented
  ns "$NS1" ping -c 3 -i 0.2 -W 2 -M "do" -s $((mtu - 28)) "$O2" >/dev/null ||
    die "full-size DF ping ($((mtu - 28)) B payload, MTU $mtu) over the overlay failed"
  log "overlay OK: $d1 (mtu $m1) in $NS1 <-> $d2 (mtu $m2) in $NS2; $NOTE_MTU"
  emit_info inner_mtu "$mtu"
}

start_iperf_server() {
  start_bg "$WORK/iperf3-server.log" "$NS2" iperf3 -s -B "$O2" -p "$IPERF_PORT"
  IPERF_SRV=$BG_PID
  local i
  for ((i = 0; i < 50; i++)); do
    ns "$NS2" ss -Hltn "sport = :$IPERF_PORT" | grep -q . && return 0
    sleep 0.1
  done
  die "iperf3 server did not start"
}

restart_iperf_server() {
  in_our_ns "$IPERF_SRV" && kill "$IPERF_SRV" 2>/dev/null || true
  sleep 0.5
  start_iperf_server
}

# iperf OUTFILE args... - run the iperf3 client in h1 against the server in h2 (JSON)
iperf() {
  local out=$1; shift
  if ! timeout $((DURATION + OMIT + 30)) ip netns exec "$NS1" \
      iperf3 -c "$O2" -p "$IPERF_PORT" -t "$DURATION" --connect-timeout 5000 -J "$@" >"$out" 2>&1 ||
      ! jq -e '.end.sum_received' "$out" >/dev/null 2>&1; then
    log "iperf3 $* failed (see $out)"
    restart_iperf_server
    return 1
  fi
}

cpu_snapshot() { awk '/^cpu /{print $2, $3, $4, $5, $6, $7, $8, $9; exit}' /proc/stat; }

# cpu_delta "SNAP_BEFORE" "SNAP_AFTER" -> "busy user sys softirq steal" in % of all cores
cpu_delta() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    split(a, x, " "); split(b, y, " "); tot = 0
    for (k = 1; k <= 8; k++) { d[k] = y[k] - x[k]; tot += d[k] }
    if (tot <= 0) tot = 1
    # fields: 1 user 2 nice 3 system 4 idle 5 iowait 6 irq 7 softirq 8 steal
    printf "%.1f %.1f %.1f %.1f %.1f\n", 100 * (tot - d[4] - d[5]) / tot,
      100 * (d[1] + d[2]) / tot, 100 * (d[3] + d[6]) / tot, 100 * d[7] / tot, 100 * d[8] / tot }'
}

# proc_snapshot FILE - "pid ppid ticks comm" for every process (ticks = utime + stime)
proc_snapshot() {
  # processes may exit between the glob and the read: ignore cat's complaints and status
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
    n = split($0, part, ") "); split(part[n], f, " ")
    p = index($0, " ("); pid = substr($0, 1, p - 1)
    comm = substr($0, p + 2, length($0) - length(part[n]) - p - 3); gsub(/[ =]/, "_", comm)
    print pid, f[2], f[12] + f[13], comm }' >"$1"
}

# cpu_by_process SNAP0 SNAP1 SECONDS - per-process CPU between two snapshots, in % of ONE core,
# as "category label pct" lines: daemon (our overlay daemons, by label), ours (anything else in
# our namespaces), kthreads (kernel threads: ksoftirqd, kworkers), foreign (all other processes:
# other tenants of this machine). Processes that exited in between are not seen.
cpu_by_process() {
  local ourpids daemons v
  ourpids=$(ip netns pids "$NS1" 2>/dev/null; ip netns pids "$NS2" 2>/dev/null || true)
  daemons=$(for v in "${DAEMONS[@]}"; do echo "${v#*:} ${v%%:*}"; done)
  awk -v hz="$CLK_TCK" -v el="$3" -v ours="$(echo $ourpids)" -v dm="$(echo $daemons)" '
    BEGIN { n = split(ours, o, " "); for (i = 1; i <= n; i++) isours[o[i]] = 1
            n = split(dm, d, " "); for (i = 1; i < n; i += 2) label[d[i]] = d[i + 1] }
    FNR == NR { t0[$1] = $3; next }
    { dt = $3 - (($1 in t0) ? t0[$1] : 0); if (dt <= 0) next
      pct = 100 * dt / hz / el
      if ($1 in label) print "daemon", label[$1], pct
      else if ($1 in isours) print "ours", $4, pct
      else if ($1 == 2 || $2 == 2) print "kthreads", $4, pct
      else print "foreign", $4, pct }' "$1" "$2"
}

# drop_counters - "udp_rcvbuf_errors dev_drops ip_frag_creates" summed over both namespaces:
# UDP sockets that overflowed; rx+tx drops of every interface (a TAP whose reader is too slow
# drops on tx); IP fragments created (an overlay whose outer packets exceed the underlay MTU)
drop_counters() {
  local nsn rb=0 dd=0 fc=0 v
  for nsn in "$NS1" "$NS2"; do
    read -r v1 v2 <<<"$(ip netns exec "$nsn" awk '
      /^(Udp|Ip):/ { if (!(($1) in h)) { h[$1] = 1; for (i = 1; i <= NF; i++) c[$1, $i] = i }
                     else if ($1 == "Udp:") rb = $c["Udp:", "RcvbufErrors"]
                     else fc = $c["Ip:", "FragCreates"] }
      END { print rb + 0, fc + 0 }' /proc/net/snmp)"
    rb=$((rb + ${v1:-0})) fc=$((fc + ${v2:-0}))
    v=$(ip -n "$nsn" -j -s link show | jq '[.[].stats64 | .rx.dropped + .tx.dropped] | add')
    dd=$((dd + ${v:-0}))
  done
  echo "$rb $dd $fc"
}

measure_rep() {
  local r=$1 f s0 s1 t0 t1 c v el rb0 rb1 dd0 dd1 fc0 fc1 v1 v2
  local p0=$WORK/procs0 p1=$WORK/procs1

  # background load of other tenants: 1 s with our lab idle
  s0=$(cpu_snapshot); sleep 1; s1=$(cpu_snapshot)
  read -r c _ <<<"$(cpu_delta "$s0" "$s1")"
  emit bg_busy_pct "$r" "$c"

  # (a) TCP, 1 stream, with CPU accounting
  f=$WORK/tcp1-rep$r.json
  read -r rb0 dd0 fc0 <<<"$(drop_counters)"
  proc_snapshot "$p0"; s0=$(cpu_snapshot); t0=$(date +%s.%N)
  if iperf "$f" -O "$OMIT"; then
    s1=$(cpu_snapshot); t1=$(date +%s.%N); proc_snapshot "$p1"
    read -r rb1 dd1 fc1 <<<"$(drop_counters)"
    emit tcp1_udp_rcvbuf_errors "$r" $((rb1 - rb0))
    emit tcp1_dev_drops "$r" $((dd1 - dd0))
    emit tcp1_ip_frag_creates "$r" $((fc1 - fc0))
    emit tcp1_gbps "$r" "$(jq -r '.end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000' "$f")"
    local gb
    gb=$(jq -r '.end.sum_received.bytes / 1e9' "$f")
    emit tcp1_retrans "$r" "$(jq -r '.end.sum_sent.retransmits // "NA"' "$f")"
    # iperf3's own accounting of its client (snd) and server (rcv) process, % of one core
    emit tcp1_iperf_snd_core_pct "$r" "$(jq -r '.end.cpu_utilization_percent.host_total | . * 10 | round / 10' "$f")"
    emit tcp1_iperf_rcv_core_pct "$r" "$(jq -r '.end.cpu_utilization_percent.remote_total | . * 10 | round / 10' "$f")"
    read -r c u sy si st <<<"$(cpu_delta "$s0" "$s1")"
    emit cpu_busy_pct "$r" "$c"          # whole machine, 100 = all cores
    emit cpu_user_pct "$r" "$u"
    emit cpu_sys_pct "$r" "$sy"
    emit cpu_softirq_pct "$r" "$si"
    emit cpu_steal_pct "$r" "$st"
    el=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
    # whole machine: busy share of all cores x cores x seconds, per GB received (the iperf3
    # run includes OMIT s of warm-up not counted in the bytes: charge only its counted part)
    emit cpu_s_per_gb "$r" "$(awk -v busy="$c" -v n="$NCPU" -v el="$el" -v gb="$gb" -v d="$DURATION" -v o="$OMIT" \
      'BEGIN { if (gb <= 0) { print "NA"; exit } printf "%.3f", busy / 100 * n * el * d / (d + o) / gb }')"
    cpu_by_process "$p0" "$p1" "$el" >"$WORK/cpu-by-process-rep$r.txt"
    while read -r label pct; do
      emit "cpu_${label}_core_pct" "$r" "$pct"
    done < <(awk '$1 == "daemon" {printf "%s %.1f\n", $2, $3}' "$WORK/cpu-by-process-rep$r.txt")
    if ((${#DAEMONS[@]})); then
      v=$(awk '$1 == "daemon" {s += $3} END {printf "%.1f", s}' "$WORK/cpu-by-process-rep$r.txt")
      emit daemon_core_pct "$r" "$v"
      emit daemon_cpu_s_per_gb "$r" "$(awk -v p="$v" -v el="$el" -v gb="$gb" -v d="$DURATION" -v o="$OMIT" \
        'BEGIN { if (gb <= 0) { print "NA"; exit } printf "%.3f", p / 100 * el * d / (d + o) / gb }')"
    fi
    emit kthreads_core_pct "$r" "$(awk '$1 == "kthreads" {s += $3} END {printf "%.1f", s}' "$WORK/cpu-by-process-rep$r.txt")"
    emit foreign_core_pct "$r" "$(awk '$1 == "foreign" {s += $3} END {printf "%.1f", s}' "$WORK/cpu-by-process-rep$r.txt")"
    v=$(sort -k3,3gr "$WORK/cpu-by-process-rep$r.txt" | awk '$1 != "daemon" && $3 >= 5 {printf "%s%s:%s=%.0f%%", sep, $1, $2, $3; sep = " "}')
    [[ -n $v ]] && log "tcp1 rep $r: other processes >= 5% of a core: $v"
  fi

  # (b) TCP, 4 streams
  f=$WORK/tcp4-rep$r.json
  if iperf "$f" -O "$OMIT" -P 4; then
    emit tcp4_gbps "$r" "$(jq -r '.end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000' "$f")"
  fi

  # (c) UDP, small packets, as fast as the sender goes
  f=$WORK/udp-rep$r.json
  if iperf "$f" -u -b "$UDP_RATE" -l "$UDP_LEN"; then
    read -r tx rx loss <<<"$(jq -r --argjson len "$UDP_LEN" '.end as $e |
      ($e.sum_sent.packets / $e.sum_sent.seconds / 1000) as $tx |
      ($e.sum_received.bytes / $len / $e.sum_received.seconds / 1000) as $rx |
      "\($tx * 10 | round / 10) \($rx * 10 | round / 10) \($e.sum_received.lost_percent * 10 | round / 10)"' "$f")"
    emit udp${UDP_LEN}_tx_kpps "$r" "$tx"
    emit udp${UDP_LEN}_rx_kpps "$r" "$rx"
    emit udp${UDP_LEN}_loss_pct "$r" "$loss"
  fi

  # (d) ping RTT
  f=$WORK/ping-rep$r.txt
  ns "$NS1" ping -c "$PING_COUNT" -i "$PING_INTERVAL" -W 1 "$O2" >"$f" 2>&1 || true
  read -r avg p50 p99 mx lost <<<"$(awk -v n="$PING_COUNT" '
    /time=/ { for (k = 1; k <= NF; k++) if ($k ~ /^time=/) { sub("time=", "", $k); t[++c] = $k + 0 } }
    END {
      if (c == 0) { print "NA NA NA NA 100"; exit }
      for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (t[j] < t[i]) { x = t[i]; t[i] = t[j]; t[j] = x }
      s = 0; for (i = 1; i <= c; i++) s += t[i]
      r50 = int(0.50 * c + 0.999999); r99 = int(0.99 * c + 0.999999)
      printf "%.3f %.3f %.3f %.3f %.1f\n", s / c, t[r50], t[r99], t[c], 100 * (n - c) / n }' "$f")"
  emit ping_avg_ms "$r" "$avg"
  emit ping_p50_ms "$r" "$p50"
  emit ping_p99_ms "$r" "$p99"
  emit ping_max_ms "$r" "$mx"
  emit ping_loss_pct "$r" "$lost"
}

summarize() {  # summarize SYSTEM - median/min/max over the RUN lines of SYSTEM
  awk -v sys="$1" '
    $1 == "RUN" {
      delete kv; for (k = 2; k <= NF; k++) { split($k, p, "="); kv[p[1]] = p[2] }
      if (kv["system"] != sys || kv["value"] == "NA" || kv["value"] == "") next
      m = kv["metric"]; if (!(m in cnt)) order[++no] = m
      v[m, ++cnt[m]] = kv["value"] + 0 }
    END {
      for (o = 1; o <= no; o++) {
        m = order[o]; n = cnt[m]
        for (i = 1; i <= n; i++) a[i] = v[m, i]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
        med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        printf "RESULT system=%s metric=%s value=%g min=%g max=%g n=%d\n", sys, m, med, a[1], a[n], n } }' \
    "$RESULTS_FILE"
}

run_system() {  # run_system SYSTEM FIRST_REP LAST_REP - in a subshell: its EXIT trap tears the lab down
  local sys=$1 first=$2 last=$3 fn=setup_${1//-/_} r
  CUR_SYS=$sys REP=$first
  WORK=$OUTDIR/$sys
  mkdir -p "$WORK"
  trap '[[ $KEEP_LAB == 1 ]] && log "KEEP_LAB=1: lab left up" || lab_down' EXIT
  trap 'exit 130' INT TERM
  log "=== $sys (repetitions $first..$last): ${SYSTEM_INFO[$sys]}"
  NOTE_MTU=""
  lab_up
  "$fn"
  check_overlay
  emit_info setup_ok 1
  start_iperf_server
  for ((r = first; r <= last; r++)); do
    log "$sys: repetition $r/$REPEATS"
    REP=$r
    measure_rep "$r"
  done
  if [[ $PROFILE == 1 && $last == "$REPEATS" ]]; then profile_run; fi
}

# table FILE [METRIC...] - markdown table of the RESULT lines in FILE, one column per system
table() {
  local file=$1; shift
  awk -v want="$*" '
    BEGIN { nw = split(want, w, " "); for (i = 1; i <= nw; i++) { wanted[w[i]] = i; morder[i] = w[i] }; nm = nw }
    $1 == "RESULT" {
      delete kv; for (k = 2; k <= NF; k++) { split($k, p, "="); kv[p[1]] = p[2] }
      s = kv["system"]; m = kv["metric"]
      if (nw && !(m in wanted)) next
      if (!(s in seen)) { seen[s] = 1; sorder[++ns] = s }
      if (!nw && !(m in mseen)) { mseen[m] = 1; morder[++nm] = m }
      cell[s, m] = (kv["n"] > 1 && kv["min"] != kv["max"]) ? kv["value"] " [" kv["min"] "-" kv["max"] "]" : kv["value"] }
    END {
      printf "| metric |"; for (j = 1; j <= ns; j++) printf " %s |", sorder[j]; printf "\n|---|"
      for (j = 1; j <= ns; j++) printf "---|"; printf "\n"
      for (i = 1; i <= nm; i++) { printf "| %s |", morder[i]
        for (j = 1; j <= ns; j++) printf " %s |", ((sorder[j], morder[i]) in cell) ? cell[sorder[j], morder[i]] : "-"
        printf "\n" } }' "$file"
}

# ratios TABLE_FILE - medians of the headline metrics, one column per system, and the ratio
# overlayd / kernel-vxlan for every overlayd system (higher is better for rates, lower for
# RTT and CPU cost)
ratios() {
  local file=$1
  awk '
    $1 == "RESULT" {
      delete kv; for (k = 2; k <= NF; k++) { split($k, p, "="); kv[p[1]] = p[2] }
      v[kv["system"], kv["metric"]] = kv["value"]; if (!(kv["system"] in seen)) { seen[kv["system"]] = 1; so[++ns] = kv["system"] } }
    END {
      nm = split("tcp1_gbps tcp4_gbps udp64_rx_kpps ping_avg_ms ping_p99_ms cpu_s_per_gb daemon_cpu_s_per_gb", m, " ")
      printf "| metric |"; for (j = 1; j <= ns; j++) printf " %s |", so[j]
      for (j = 1; j <= ns; j++) if (so[j] ~ /^overlayd/) printf " %s / kernel |", so[j]
      printf "\n|---|"; for (j = 1; j <= ns; j++) printf "---|"
      for (j = 1; j <= ns; j++) if (so[j] ~ /^overlayd/) printf "---|"
      printf "\n"
      for (i = 1; i <= nm; i++) {
        printf "| %s |", m[i]
        for (j = 1; j <= ns; j++) printf " %s |", ((so[j], m[i]) in v) ? v[so[j], m[i]] : "-"
        for (j = 1; j <= ns; j++) if (so[j] ~ /^overlayd/) {
          k = v["kernel-vxlan", m[i]] + 0; o = v[so[j], m[i]] + 0
          if (((so[j], m[i]) in v) && (("kernel-vxlan", m[i]) in v) && k > 0) printf " %.2fx |", o / k; else printf " - |"
        }
        printf "\n" } }' "$file"
}

# ============================================================================= main
usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }

main() {
  case ${1:-} in
    -h | --help | help) usage 0 ;;
    list)
      local s
      for s in "${ALL_SYSTEMS[@]}"; do printf '%-20s %s\n' "$s" "${SYSTEM_INFO[$s]}"; done
      exit 0 ;;
    clean) lab_down; log "removed $NS1 $NS2 (if they existed)"; exit 0 ;;
    table) shift; [[ -r ${1:-} ]] || die "usage: $0 table RESULTS_FILE [METRIC...]"; table "$@"; exit 0 ;;
  esac
  [[ $EUID == 0 ]] || die "must run as root (network namespaces)"
  if [[ $PROFILE == 1 && -z ${OVERLAYD_BIN:-} ]]; then OVERLAYD_BIN=$(profile_build); fi
  if [[ -z ${OVERLAYD_BIN:-} ]]; then
    log "cargo build --release"
    (cd "$REPO_DIR" && cargo build --release >&2) || die "cargo build --release failed"
    OVERLAYD_BIN=$REPO_DIR/target/release/overlayd
  fi
  [[ -x $OVERLAYD_BIN ]] || die "overlayd binary not found at $OVERLAYD_BIN"
  if (($# == 0)); then
    if [[ -n ${SYSTEMS:-} ]]; then
      read -r -a _sys <<<"$SYSTEMS"
    else
      _sys=(raw kernel-vxlan overlayd overlayd-ebpf overlayd-nooffload)
      gre_supported && _sys+=(overlayd-gre)
    fi
    set -- "${_sys[@]}"
  fi
  local s
  for s in "$@"; do
    [[ -n ${SYSTEM_INFO[$s]:-} ]] && declare -F "setup_${s//-/_}" >/dev/null || die "unknown system '$s' (try: $0 list)"
  done
  for s in ip iperf3 jq ping awk timeout; do command -v "$s" >/dev/null || die "$s not installed"; done
  lab_exists && die "$NS1/$NS2 already exist (another run with PREFIX=$PREFIX, or leftovers: '$0 clean')"

  mkdir -p "$OUTDIR"
  RESULTS_FILE=$OUTDIR/results.txt
  {
    echo "# overlayd bench $(date -Is) kernel=$(uname -r) ncpu=$NCPU"
    echo "# iperf3=$(iperf3 --version 2>/dev/null | awk 'NR==1{print $2}') overlayd=$OVERLAYD_BIN" \
      "commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "# systems: $*"
    echo "# DURATION=$DURATION OMIT=$OMIT REPEATS=$REPEATS UDP_LEN=$UDP_LEN UDP_RATE=$UDP_RATE" \
      "PING_COUNT=$PING_COUNT PING_INTERVAL=$PING_INTERVAL"
  } | tee -a "$RESULTS_FILE" >&2
  log "output in $OUTDIR"

  trap 'lab_down' EXIT   # in case the parent itself is interrupted
  trap 'exit 130' INT TERM
  # INTERLEAVE=1: round r runs repetition r of every system (lab rebuilt each round), so
  # bursts of load from other tenants spread over all systems instead of hitting one.
  local rc r failed=() round=() rounds
  if [[ $INTERLEAVE == 1 ]]; then rounds=$REPEATS; else rounds=1; fi
  for ((r = 1; r <= rounds; r++)); do
    for s in "$@"; do
      if [[ $INTERLEAVE == 1 ]]; then round=("$r" "$r"); else round=(1 "$REPEATS"); fi
      set +e
      (set -Eeuo pipefail; run_system "$s" "${round[@]}")
      rc=$?
      set -e
      ((rc == 130)) && exit 130
      if ((rc != 0)); then
        failed+=("$s/${round[0]}")
        CUR_SYS=$s REP=${round[0]} emit run_ok "${round[0]}" 0
        log "$s failed (rc=$rc) in repetition ${round[0]}, logs in $OUTDIR/$s"
      fi
    done
  done
  for s in "$@"; do summarize "$s"; done | tee -a "$RESULTS_FILE"
  [[ $KEEP_LAB == 1 ]] && trap - EXIT
  echo
  echo "Medians of $REPEATS repetitions (full min-max table: $0 table $RESULTS_FILE):"
  echo
  ratios "$RESULTS_FILE" | tee "$OUTDIR/summary.md"
  if [[ $PROFILE == 1 ]]; then echo; profile_summary "$OUTDIR"; fi
  log "results: $RESULTS_FILE"
  ((${#failed[@]} == 0)) || { log "failed (system/repetition): ${failed[*]}"; exit 1; }
}

main "$@"
