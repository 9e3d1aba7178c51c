#!/usr/bin/env bash
# 57-run-to-completion.sh - what the host answers inside a TAP write leaves on the same thread.
#
#   netns h1                                             netns h2
#   <P>u1 192.0.2.1/24  <======= veth underlay =======>  <P>u2 192.0.2.2/24
#   overlayd (userspace): vni 42, tap 198.51.100.1  ....  same, tap 198.51.100.2
#
# An underlay thread that writes an echo request into h2's TAP finds the host's echo reply
# queued on the TAP when the write returns; it reads and sends it itself instead of waking the
# TAP's own thread (overlayd_tap_rx_inline_frames_total). The TAP's thread and the underlay
# threads then both read the TAP, one at a time.
#
# Proves (whatever OVERLAYD_DATAPATH says: this lab sets node.datapath = "userspace" itself):
#   - the data-path threads (port, underlay) of both daemons run with a 0.1 ms scheduler
#     slice (se.slice in /proc; on Linux 6.12 and later, which has custom slices);
#   - 200 pings h1 -> h2 are all answered, and h2 sent at least one of the replies from its
#     underlay thread (the counter moved; it stays 0 without run to completion);
#   - nothing read twice or lost between the two readers of h2's TAP: during the pings every
#     frame read from the TAP (overlayd_tap_frames_total rx) went out to h1 exactly once
#     (overlayd_tunnel_packets_total tx), the frames read inline are among them, and no drop
#     was counted on either side;
#   - a 30 MB TCP transfer each way (its ACKs drained inline by the receiving side, its data
#     read by the TAP's thread, with offloads on) arrives byte-identical (sha256), again with
#     no drop counted;
#   - per-run receive decisions: the segments of a GRO run that share the first one's headers
#     take its decision (overlayd_tunnel_rx_run_frames_total moved on the receiving side, it
#     stays 0 without them), and the totals are those of one decision per datagram: every
#     tunnel packet and byte one daemon sent during the transfers is counted received by the
#     other (when the kernel dropped no datagram on the way: UDP RcvbufErrors).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v curl >/dev/null || die "curl not installed"
# this lab is about the userspace data path whatever the run asks for
unset OVERLAYD__NODE__DATAPATH

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap
URL=http://127.0.0.1:9477/metrics

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

# the data-path threads ask for the scheduler's shortest slice (0.1 ms), so that a wake-up for
# a frame preempts a task that has run longer instead of waiting out its slice; the kernel
# shows it as se.slice (custom slices for fair-class threads: Linux 6.12 and later)
log "data-path threads run with a 0.1 ms scheduler slice"
kver=$(uname -r)
IFS=. read -r kmaj kmin _ <<<"$kver"
if ((kmaj > 6 || (kmaj == 6 && kmin >= 12))); then
  for d in d1 d2; do
    n=0
    for t in /proc/"${_DAEMON_PID[$d]}"/task/*; do
      case $(cat "$t/comm") in port-* | underlay*) ;; *) continue ;; esac
      assert_eq "$d thread $(cat "$t/comm") se.slice" 100000 "$(awk '$1 == "se.slice" { print $3 }' "$t/sched")"
      n=$((n + 1))
    done
    assert_eq "$d data-path threads checked (port, underlay)" 2 "$n"
  done
else
  info "kernel $kver has no custom slices for fair-class threads (6.12+): slice not checked"
fi

drops() { awk -v p='overlayd_drops_total{network="blue",' 'index($1, p) == 1 { s += $2 } END { print s + 0 }' <<<"$1"; }
delta() { echo $(($(metric "$3" "$1") - $(metric "$2" "$1"))); }   # delta SERIES BEFORE AFTER
INLINE='overlayd_tap_rx_inline_frames_total{network="blue"}'
TAPRX='overlayd_tap_frames_total{direction="rx",network="blue"}'

log "200 pings $O1 -> $O2 (10 ms apart)"
a1=$(scrape "$H1" "$URL") a2=$(scrape "$H2" "$URL")
ping_ok "$H1" "$O2" 200 -i 0.01
sleep 0.3
b1=$(scrape "$H1" "$URL") b2=$(scrape "$H2" "$URL")
inline=$(delta "$INLINE" "$a2" "$b2")
rx=$(delta "$TAPRX" "$a2" "$b2")
tx=$(delta "overlayd_tunnel_packets_total{direction=\"tx\",network=\"blue\",peer=\"$U1\"}" "$a2" "$b2")
assert_ge "h2: frames read from its TAP by the underlay thread (echo replies sent inline)" 1 "$inline"
assert_ge "h2: frames read from its TAP ($rx) include the inline ones ($inline)" "$inline" "$rx"
assert_eq "h2: tunnel packets sent to $U1 = frames read from its TAP" "$rx" "$tx"
assert_eq "h1: drops during the pings" 0 $(($(drops "$b1") - $(drops "$a1")))
assert_eq "h2: drops during the pings" 0 $(($(drops "$b2") - $(drops "$a2")))
info "h2: $inline of $rx frames read from the TAP were read by the underlay thread"

log "30 MB TCP each way (ACKs drained inline on the receiving side)"
make_random_file "$WORK/data" 30
# UDP messages the kernel dropped for a full receive buffer, in namespace $1
rcvbuf_errors() { ip netns exec "$1" cat /proc/net/snmp | awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) c[$i] = i; h = 1 } else print $c["RcvbufErrors"] }'; }
declare -A NS=([1]=$H1 [2]=$H2) UL=([1]=$U1 [2]=$U2) RCVBUF BEFORE AFTER
for h in 1 2; do RCVBUF[$h]=$(rcvbuf_errors "${NS[$h]}"); done
a1=$(scrape "$H1" "$URL") a2=$(scrape "$H2" "$URL")
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/data" "h1 -> h2"
tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/data" "h2 -> h1"
sleep 0.5 # the last ACKs and FINs
b1=$(scrape "$H1" "$URL") b2=$(scrape "$H2" "$URL")
assert_eq "h1: drops during the transfers" 0 $(($(drops "$b1") - $(drops "$a1")))
assert_eq "h2: drops during the transfers" 0 $(($(drops "$b2") - $(drops "$a2")))
info "inline frames during the transfers: h1 $(delta "$INLINE" "$a1" "$b1"), h2 $(delta "$INLINE" "$a2" "$b2")"

log "per-run receive decisions: decided once per GRO run, the same totals"
BEFORE=([1]=$a1 [2]=$a2) AFTER=([1]=$b1 [2]=$b2)
RUNS='overlayd_tunnel_rx_run_frames_total{network="blue"}'
tun() { echo "overlayd_tunnel_$1_total{direction=\"$2\",network=\"blue\",peer=\"$3\"}"; } # tun WHAT DIR PEER
for pair in "1 2" "2 1"; do
  read -r s r <<<"$pair" # sender, receiver
  rx=$(delta "$(tun packets rx "${UL[$s]}")" "${BEFORE[$r]}" "${AFTER[$r]}")
  runs=$(delta "$RUNS" "${BEFORE[$r]}" "${AFTER[$r]}")
  assert_ge "h$r: tunnel packets from h$s decided by their run's first (of $rx)" 1 "$runs"
  kernel_drops=$(($(rcvbuf_errors "${NS[$r]}") - RCVBUF[$r]))
  for what in packets bytes; do
    tx=$(delta "$(tun "$what" tx "${UL[$r]}")" "${BEFORE[$s]}" "${AFTER[$s]}")
    rx=$(delta "$(tun "$what" rx "${UL[$s]}")" "${BEFORE[$r]}" "${AFTER[$r]}")
    if ((kernel_drops == 0)); then
      assert_eq "h$s -> h$r tunnel $what: received by h$r = sent by h$s" "$tx" "$rx"
    else
      info "h$r: the kernel dropped $kernel_drops UDP messages (RcvbufErrors): received $what cannot equal sent"
      assert_ge "h$s -> h$r tunnel $what: sent >= received" "$rx" "$tx"
    fi
  done
done

stop_daemon d1
stop_daemon d2
