#!/usr/bin/env bash
# 58-udp-coalescing.sh - small UDP goes to the TAP in super-frames, and UDP GSO leaves it whole.
#
#   netns h1                                             netns h2
#   <P>u1 192.0.2.1/24  <======= veth underlay =======>  <P>u2 192.0.2.2/24
#   overlayd (userspace): vni 42, tap 198.51.100.1  ....  same, tap 198.51.100.2
#
# On a kernel with UDP segmentation offload for TAPs (TUN_F_USO4/6, Linux 6.2), the receiving
# daemon chains datagrams of one flow from a receive batch into one UDP super-frame (virtio-net
# gso_type UDP_L4) and writes it with one writev; the host cuts it back into the datagrams.
# The same offload flags let the host hand the TAP a sender's UDP GSO burst whole; the daemon
# cuts it into datagrams itself.
#
# Proves (whatever OVERLAYD_DATAPATH says: this lab sets node.datapath = "userspace" itself):
#   - the TAPs offer UDP segmentation to the host (ethtool: tx-udp-segmentation on);
#   - 20000 datagrams of 64 bytes h1 -> h2, in bursts: every one that arrived holds exactly the
#     bytes that were sent, none twice, all arrived (unless the kernel counted a full receive
#     buffer), and h2 wrote some of them to its TAP coalesced
#     (overlayd_tap_tx_udp_coalesced_total moved; one TAP frame per super-frame, so fewer TAP
#     frames than datagrams);
#   - 6400 datagrams of 1200 bytes sent with UDP GSO (UDP_SEGMENT, 32 per send) h1 -> h2: h1
#     read them from its TAP as super-frames (fewer TAP frames than half the datagrams), and
#     every datagram arrived intact at h2;
#   - datagrams with a wrong UDP checksum among good ones of the same flow (tunnel packets
#     sent straight from h1's underlay, in bursts) are never merged: the host drops and counts
#     each of them (Udp InCsumErrors), none is delivered, every good one arrives intact.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
for _t in curl ethtool python3; do command -v "$_t" >/dev/null || die "missing tool: $_t"; done
# this lab is about the userspace data path whatever the run asks for
unset OVERLAYD__NODE__DATAPATH
IFS=. read -r kmaj kmin _ <<<"$(uname -r)"
((kmaj > 6 || (kmaj == 6 && kmin >= 2))) || die "kernel $(uname -r) has no UDP segmentation offload for TAPs (6.2+)"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap
URL=http://127.0.0.1:9477/metrics
STREAM=$LIB_DIR/udp_stream.py

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24"
add_ns "$H1" "$H2"
quiet_ipv6 "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 1

userspace_config() { # FILE UNDERLAY OVERLAY PEER
  write_config "$1" "$2" datapath='"userspace"'
  add_network "$1" blue 42 "$TAP" "$3/24" "$4"
}
userspace_config "$WORK/h1.toml" "$U1" "$O1" "$U2"
userspace_config "$WORK/h2.toml" "$U2" "$O2" "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
wait_ping "$H1" "$O2"
for h in "$H1" "$H2"; do
  ns_exec "$h" ethtool -k "$TAP" | grep -q '^tx-udp-segmentation: on' ||
    die "TAP $TAP in $h does not offer UDP segmentation: $(ns_exec "$h" ethtool -k "$TAP" | grep -i udp)"
done
ok "both TAPs offer UDP segmentation to the host stack"

delta() { echo $(($(metric "$3" "$1") - $(metric "$2" "$1"))); }   # delta SERIES BEFORE AFTER
rcvbuf_errors() { ip netns exec "$1" cat /proc/net/snmp | awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) c[$i] = i; h = 1 } else print $c["RcvbufErrors"] }'; }
COALESCED='overlayd_tap_tx_udp_coalesced_total{network="blue"}'
TAPTX='overlayd_tap_frames_total{direction="tx",network="blue"}'
TAPRX='overlayd_tap_frames_total{direction="rx",network="blue"}'

# stream PORT COUNT SIZE BURST [gso] - send from h1 to h2's listener; the receiver's line in $GOT
stream() {
  local port=$1 count=$2 size=$3
  start_bg "$H2" "$WORK/recv-$port.log" python3 "$STREAM" recv "$port" "$count" "$size"
  local rpid=$BG_PID
  wait_until -t 10 _udp_bound "$H2" "$port" || die "UDP receiver did not start"
  ns_exec "$H1" python3 "$STREAM" send "$O2" "$port" "$count" "$size" "$4" ${5:+"$5"} || die "sender failed"
  wait_exit "$rpid" 30 || die "UDP receiver did not finish"
  ((EXIT_STATUS == 0)) || die "UDP receiver failed: $(cat "$WORK/recv-$port.log")"
  GOT=$(cat "$WORK/recv-$port.log")
  info "h2 receiver: $GOT"
}
# check_stream COUNT LINE KERNEL_DROPS - every datagram intact; all of them unless the kernel dropped some
check_stream() {
  local received intact bad dup
  read -r _ received _ intact _ bad _ dup <<<"$2"
  assert_eq "datagrams with wrong bytes" 0 "$bad"
  assert_eq "datagrams received twice" 0 "$dup"
  if (($3 == 0)); then
    assert_eq "datagrams received intact" "$1" "$intact"
  else
    info "the kernel dropped $3 UDP messages for a full receive buffer: not all can arrive"
    assert_ge "datagrams received intact (of $1)" $(($1 * 9 / 10)) "$intact"
  fi
}

log "20000 datagrams of 64 bytes h1 -> h2, 50 at a time"
a2=$(scrape "$H2" "$URL") e2=$(rcvbuf_errors "$H2")
stream 7001 20000 64 50
b2=$(scrape "$H2" "$URL")
check_stream 20000 "$GOT" $(($(rcvbuf_errors "$H2") - e2))
coalesced=$(delta "$COALESCED" "$a2" "$b2")
taptx=$(delta "$TAPTX" "$a2" "$b2")
assert_ge "h2: datagrams written to its TAP in super-frames" 1 "$coalesced"
assert_ge "h2: datagrams (20000) more than the TAP frames written ($taptx)" $((taptx + 1)) 20000
info "h2: $coalesced of 20000 datagrams went to the TAP coalesced, in $taptx TAP writes"

log "6400 datagrams of 1200 bytes h1 -> h2 with UDP GSO, 32 per send"
a1=$(scrape "$H1" "$URL") e2=$(rcvbuf_errors "$H2")
stream 7002 6400 1200 32 gso
b1=$(scrape "$H1" "$URL")
check_stream 6400 "$GOT" $(($(rcvbuf_errors "$H2") - e2))
taprx=$(delta "$TAPRX" "$a1" "$b1")
assert_ge "h1: TAP frames read ($taprx) at most half the datagrams: super-frames" "$taprx" 3200
info "h1: read 6400 datagrams in $taprx TAP frames"

log "20 bursts of 10 datagrams straight from h1's underlay, the 5th of each with a wrong UDP checksum"
# sent with a plain socket in one tight loop per burst, so that they arrive in one receive batch
# and the good ones around a bad one are coalesced; a bad one merged into a super-frame would
# reach the host with a checksum made for its corrupted bytes and be delivered
M1=$(link_mac "$H1" "$TAP") M2=$(link_mac "$H2" "$TAP")
a2=$(scrape "$H2" "$URL") csum2=$(snmp_counter "$H2" Udp InCsumErrors)
start_bg "$H2" "$WORK/recv-7003.log" python3 "$STREAM" recv 7003 200 64
rpid=$BG_PID
wait_until -t 10 _udp_bound "$H2" 7003 || die "UDP receiver did not start"
ns_exec "$H1" /usr/bin/python3 - "$STREAM" "$U1" "$U2" "$M1" "$M2" "$O1" "$O2" <<'PY' || die "could not send the tunnel packets"
import importlib.util, logging, socket, sys, time
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import IP, UDP, Ether, Raw
spec = importlib.util.spec_from_file_location('udp_stream', sys.argv[1])
st = importlib.util.module_from_spec(spec)
spec.loader.exec_module(st)
u1, u2, m1, m2, o1, o2 = sys.argv[2:8]
vxlan = bytes([8, 0, 0, 0, 0, 0, 42, 0])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((u1, 0))
for burst in range(20):
    pkts = []
    for k in range(10):
        n = burst * 10 + k
        f = bytearray(bytes(Ether(src=m1, dst=m2) / IP(src=o1, dst=o2, flags='DF') / UDP(sport=40001, dport=7003) / Raw(st.payload(n, 64))))
        if k == 4:
            f[-1] ^= 0x55  # after the checksum was computed: the datagram is corrupt
        pkts.append(vxlan + bytes(f))
    for p in pkts:
        s.sendto(p, (u2, 4789))
    time.sleep(0.01)
PY
wait_exit "$rpid" 30 || die "UDP receiver did not finish"
GOT=$(cat "$WORK/recv-7003.log")
info "h2 receiver: $GOT"
b2=$(scrape "$H2" "$URL")
read -r _ received _ intact _ bad _ dup <<<"$GOT"
assert_eq "datagrams with wrong bytes delivered" 0 "$bad"
assert_eq "datagrams received twice" 0 "$dup"
assert_eq "good datagrams received intact" 180 "$intact"
assert_eq "h2: UDP checksum errors counted by the host" 20 $(($(snmp_counter "$H2" Udp InCsumErrors) - csum2))
info "h2: $(delta "$COALESCED" "$a2" "$b2") of the 180 good datagrams went to the TAP coalesced"

stop_daemon d1
stop_daemon d2
