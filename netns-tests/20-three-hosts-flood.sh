#!/usr/bin/env bash
# 20-three-hosts-flood.sh - flooding by head-end replication, split horizon and learning.
#
#   netns h1 192.0.2.1 ─┐                       overlay (vni 42, full mesh of peers):
#   netns h2 192.0.2.2 ─┼─ bridge in netns sw    tap 198.51.100.1 / .2 / .3 on h1 / h2 / h3
#   netns h3 192.0.2.3 ─┘  (the L3 underlay)
#
# Proves:
#   - one broadcast frame sent into h1's TAP arrives exactly once on h2's TAP and exactly once on
#     h3's TAP (no duplicate: a frame from a tunnel is never sent into another tunnel), and is
#     not reflected back into h1's TAP (seen there once: the frame we sent);
#   - after learning (h1 <-> h2 have pinged), 20 unicast pings h1 -> h2 cross h2's TAP
#     (40 ICMP frames: requests and replies, each exactly once) and not one ICMP frame reaches
#     h3's TAP, nor even h3's underlay (no VXLAN packet carrying them is sent to h3).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
/usr/bin/python3 -c 'import scapy' 2>/dev/null ||
  die "python3-scapy is needed to craft the broadcast frame (apt-get install python3-scapy)"

SW=$PREFIX-sw
TAP=${PREFIX}tap
U=(- 192.0.2.1 192.0.2.2 192.0.2.3)          # underlay address of host i
O=(- 198.51.100.1 198.51.100.2 198.51.100.3)  # overlay address of host i
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3")  # namespace of host i

log "underlay: h1, h2, h3 on a bridge in $SW"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24"
ping_ok "${H[1]}" "${U[2]}" 2
ping_ok "${H[1]}" "${U[3]}" 2
ping_ok "${H[2]}" "${U[3]}" 2

log "overlay: three daemons, vni 42, full mesh"
for i in 1 2 3; do
  peers=$(mesh_peers "$i" "${U[@]:1}")
  write_config "$WORK/h$i.toml" "${U[i]}"
  add_network "$WORK/h$i.toml" blue 42 "$TAP" "${O[i]}/24" "$peers"
  start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"
done
for i in 1 2 3; do wait_ready "d$i"; done
MAC1=$(link_mac "${H[1]}" "$TAP")

log "one broadcast frame from h1 (ARP who-has 198.51.100.99, an address nobody owns)"
for i in 1 2 3; do capture_start "bcast$i" "${H[i]}" "$TAP"; done
send_frame "${H[1]}" "$TAP" \
  "Ether(src='$MAC1', dst='ff:ff:ff:ff:ff:ff') / ARP(op=1, hwsrc='$MAC1', psrc='${O[1]}', pdst='198.51.100.99')"
# ARP target protocol address (bytes 24-27 of the ARP header) = 198.51.100.99 = c6.33.64.63
ours=(arp and ether broadcast and ether src "$MAC1" and 'arp[24:4] = 0xc6336463')
# wait for the copies on h2 and h3, then give a duplicate time to show up before counting
arrived() { (($(capture_count "bcast$1" "${ours[@]}") >= 1)); }
wait_until -t 10 arrived 2 || info "(no copy on h2's TAP after 10 s)"
wait_until -t 10 arrived 3 || info "(no copy on h3's TAP after 10 s)"
sleep 0.5
capture_stop bcast1 bcast2 bcast3
for i in 1 2 3; do
  n=$(capture_count "bcast$i" "${ours[@]}")
  ((n == 1)) || capture_show "bcast$i" arp
  assert_eq "copies of the broadcast frame on h$i's TAP" 1 "$n"
done

log "learning: h1 <-> h2 ping each other"
wait_ping "${H[1]}" "${O[2]}"
ping_ok "${H[1]}" "${O[2]}" 3
ping_ok "${H[2]}" "${O[1]}" 3

log "known unicast: 20 pings h1 -> h2 must not reach h3"
# On h3's underlay too, so a sender that floods is caught even if h3's daemon then drops the
# frames: VXLAN packets whose inner frame is IPv4 (ethertype at UDP payload byte 20) carrying
# ICMP (IP protocol at byte 31).
inner_icmp=(udp port 4789 and 'udp[28:2] = 0x0800' and 'udp[39] = 1')
capture_start ucast1 "${H[1]}" "$TAP" icmp
capture_start ucast2 "${H[2]}" "$TAP" icmp
capture_start ucast3 "${H[3]}" "$TAP" icmp
capture_start under3 "${H[3]}" "${PREFIX}u3" "${inner_icmp[@]}"
ping_ok "${H[1]}" "${O[2]}" 20 -i 0.05
capture_stop ucast1 ucast2 ucast3 under3
# (ping may have sent a request more while it waited for a late reply: count sequence numbers
# 1..20; on h3 every ICMP frame counts). Each host's TAP is judged by what arrives on it: a
# capture on a TAP does not see what the host sends into it when the eBPF fast path takes it
# (TC egress runs before the capture point), on either data path it sees what arrives.
seq=('icmp[6:2] >= 1 and icmp[6:2] <= 20')
assert_eq "ICMP echo requests 1..20 arrived on h2's TAP" 20 "$(capture_count ucast2 "icmp[0] = 8 and $seq")"
assert_eq "ICMP echo replies 1..20 arrived on h1's TAP" 20 "$(capture_count ucast1 "icmp[0] = 0 and $seq")"
n=$(capture_count ucast3)
((n == 0)) || capture_show ucast3
assert_eq "ICMP frames on h3's TAP" 0 "$n"
n=$(capture_count under3)
((n == 0)) || capture_show under3
assert_eq "VXLAN packets carrying ICMP that reached h3's underlay" 0 "$n"
log "PASS: three hosts, flood once, unicast stays between h1 and h2"
