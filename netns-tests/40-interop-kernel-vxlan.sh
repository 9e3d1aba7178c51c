#!/usr/bin/env bash
# 40-interop-kernel-vxlan.sh - overlayd and the Linux kernel vxlan device share one L2 segment.
#
#   netns h1                                         netns h2
#   <P>u1 192.0.2.1/24 <====== veth underlay ======> <P>u2 192.0.2.2/24   (default offloads)
#   overlayd: vni 42, port 4789,                     kernel: <P>vx (vxlan id 42 dstport 4789
#     tap <P>tap 198.51.100.1/24                       remote 192.0.2.1) in bridge <P>br,
#                                                      198.51.100.2/24 on the bridge
#
# Proves:
#   - ping both ways between overlayd and the kernel, including DF pings that fill the MTU;
#   - every VXLAN packet overlayd sent is RFC 7348 to the byte: flags 0x08 (I) with the reserved
#     bits zero, VNI 42, to UDP port 4789;
#   - a 10 MB TCP transfer (random data) arrives byte-identical (sha256) in each direction.
#
# Offloads stay as they come: veth hands packets over with unfinished checksums and whole GSO
# packets, so overlayd receives the kernel's inner TCP segments with partial checksums and its
# TSO bursts in one piece, and must take both (lab 41 goes further, with iperf3 and a vxlan
# device without a bridge).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap VX=${PREFIX}vx BR=${PREFIX}br

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 $U2/24, default offloads"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ping_ok "$H1" "$U2" 2
ping_ok "$H2" "$U1" 2

log "h2: kernel vxlan (id 42, dstport 4789, remote $U1) in bridge $BR with $O2/24"
add_native_vxlan "$H2" "$VX" 42 "$U2" "$U1" "${PREFIX}u2" 4789
add_bridge "$H2" "$BR" "$VX"
ip -n "$H2" addr add "$O2/24" dev "$BR"
info "kernel vxlan MTU $(link_mtu "$H2" "$VX"), bridge MTU $(link_mtu "$H2" "$BR")"

log "h1: overlayd (vni 42, port 4789, tap $TAP $O1/24)"
write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$U2" vxlan_port=4789
start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1
mtu=$(link_mtu "$H1" "$TAP")
assert_eq "overlayd TAP MTU equals the kernel vxlan MTU" "$(link_mtu "$H2" "$VX")" "$mtu"

log "ping both ways, and DF pings that fill the MTU ($mtu)"
capture_start wire "$H1" "${PREFIX}u1" udp port 4789
wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 5
ping_ok "$H2" "$O1" 5
ping_ok "$H1" "$O2" 3 -M "do" -s $((mtu - 28))
ping_ok "$H2" "$O1" 3 -M "do" -s $((mtu - 28))
capture_stop wire

log "the VXLAN header overlayd puts on the wire"
sent=$(capture_count wire src host "$U1" and udp)
assert_ge "VXLAN packets sent by overlayd" 16 "$sent"
# UDP payload bytes 0-3: flags 0x08 + 24 reserved bits; bytes 4-7: VNI 42 (0x00002a) + 8 reserved
exact=$(capture_count wire src host "$U1" and udp dst port 4789 and 'udp[8:4] = 0x08000000' and 'udp[12:4] = 0x00002a00')
((exact == sent)) || capture_show wire src host "$U1" and udp and not '(udp[8:4] = 0x08000000 and udp[12:4] = 0x00002a00)'
assert_eq "of those, to port 4789 with flags 0x08, reserved bits zero and VNI 42" "$sent" "$exact"

log "10 MB TCP transfer (random data) each way, byte for byte"
make_random_file "$WORK/payload" 10
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlayd->kernel"
info "rate overlayd -> kernel: $TRANSFER_MBIT Mbit/s (not asserted)"
tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/payload" "kernel->overlayd"
info "rate kernel -> overlayd: $TRANSFER_MBIT Mbit/s (not asserted)"
log "PASS: overlayd and the kernel vxlan device interoperate"
