#!/usr/bin/env bash
# 74-interop-kernel-vxlan-ipv6.sh - overlayd and the Linux kernel vxlan device share one L2
# segment over an IPv6 underlay.
#
#   netns h1                                            netns h2
#   <P>u1 2001:db8::1/64 <====== veth underlay ======>  <P>u2 2001:db8::2/64  (default offloads)
#   overlayd: vni 42, port 4789,                        kernel: <P>vx (vxlan id 42 dstport 4789
#     tap <P>tap 198.51.100.1/24                          local 2001:db8::2 remote 2001:db8::1)
#                                                         in bridge <P>br, 198.51.100.2/24
#
# Proves:
#   - overlayd's TAP MTU is the underlay MTU minus the VXLAN/IPv6 overhead (1500 - 70), the
#     same as the kernel's vxlan device over IPv6;
#   - ping both ways, including DF pings that fill the MTU;
#   - a 10 MB TCP transfer (random data) arrives byte-identical (sha256) in each direction,
#     with the underlay's default offloads;
#   - with the eBPF fast path (OVERLAYD_DATAPATH unset, auto or ebpf), the kernel's transfer to
#     overlayd is decapsulated by it (overlayd_fastpath_frames_total{direction="tunnel_rx"} rises
#     by at least 90% of the tunnel packets received), and the TCP acknowledgements and pings
#     overlayd's side sends are encapsulated by it (tap_rx: at least 90% of the TAP's frames);
#     the super-frames of overlayd's own transfer go through the userspace path, whose UDP GSO
#     puts a checksum on every datagram (the kernel's vxlan checks it; the fast path cannot ask
#     the kernel for per-segment outer checksums); with OVERLAYD_DATAPATH=userspace the fast
#     path carries nothing;
#   - then, with tx checksum offload off on overlayd's end only (so that a capture holds
#     finished checksums; this is what a real NIC puts on the wire): every VXLAN/IPv6 packet
#     overlayd sent has a real UDP checksum that verifies (RFC 6935/6936: no zero checksum over
#     IPv6; tshark checks it), flags 0x08, VNI 42, port 4789, hop limit 64; with the fast path
#     these are the programs' (its counters rise by the pings sent).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v tshark >/dev/null || die "tshark not installed (see .ci/run)"

H1=$PREFIX-h1 H2=$PREFIX-h2
V1=2001:db8::1 V2=2001:db8::2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap VX=${PREFIX}vx BR=${PREFIX}br

log "underlay: $H1 ${PREFIX}u1 $V1/64 <-> $H2 ${PREFIX}u2 $V2/64, default offloads"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$V1/64" "$H2" "${PREFIX}u2" "$V2/64"
ping_ok "$H1" "$V2" 2

log "h2: kernel vxlan (id 42, dstport 4789, local $V2 remote $V1) in bridge $BR with $O2/24"
add_native_vxlan "$H2" "$VX" 42 "$V2" "$V1" "${PREFIX}u2" 4789
add_bridge "$H2" "$BR" "$VX"
ip -n "$H2" addr add "$O2/24" dev "$BR"

log "h1: overlayd on the IPv6 underlay (vni 42, tap $TAP $O1/24)"
write_config "$WORK/h1.toml" "$V1"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$V2"
start_daemon "$H1" d1 "$WORK/h1.toml"
wait_ready d1
mtu=$(link_mtu "$H1" "$TAP")
assert_eq "overlayd TAP MTU (1500 - 70)" 1430 "$mtu"
assert_eq "overlayd TAP MTU equals the kernel vxlan MTU over IPv6" "$(link_mtu "$H2" "$VX")" "$mtu"

log "ping both ways, and DF pings that fill the MTU ($mtu)"
wait_ping "$H1" "$O2"
ping_ok "$H1" "$O2" 5
ping_ok "$H2" "$O1" 5
ping_ok "$H1" "$O2" 3 -M "do" -s $((mtu - 28))
ping_ok "$H2" "$O1" 3 -M "do" -s $((mtu - 28))

log "10 MB TCP transfer (random data) each way, byte for byte"
make_random_file "$WORK/payload" 10
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlayd->kernel (IPv6 underlay)"
info "rate overlayd -> kernel: $TRANSFER_MBIT Mbit/s (not asserted)"
sleep 0.3 # the MACs are mirrored into the fast path's maps (every 50 ms)
before=$(scrape "$H1" http://127.0.0.1:9477/metrics)
tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/payload" "kernel->overlayd (IPv6 underlay)"
info "rate kernel -> overlayd: $TRANSFER_MBIT Mbit/s (not asserted)"
after=$(scrape "$H1" http://127.0.0.1:9477/metrics)
d() { echo $(($(metric "$2" "$3") - $(metric "$1" "$3"))); } # d BEFORE AFTER SERIES
tun_rx=$(d "$before" "$after" "overlayd_tunnel_packets_total{direction=\"rx\",network=\"blue\",peer=\"$V2\"}")
fast_rx=$(d "$before" "$after" 'overlayd_fastpath_frames_total{direction="tunnel_rx",network="blue"}')
tap_rx=$(d "$before" "$after" 'overlayd_tap_frames_total{direction="rx",network="blue"}')
fast_tx=$(d "$before" "$after" 'overlayd_fastpath_frames_total{direction="tap_rx",network="blue"}')
info "kernel->overlayd: tunnel rx packets +$tun_rx, of which the fast path +$fast_rx; TAP rx frames +$tap_rx, of which the fast path +$fast_tx"
assert_ge "tunnel rx packets during the kernel's transfer (the userspace path counts GRO batches)" 100 "$tun_rx"
if [[ ${OVERLAYD_DATAPATH:-auto} == userspace ]]; then
  assert_eq "overlayd_datapath_info{datapath=\"userspace\"}" 1 "$(metric "$after" 'overlayd_datapath_info{datapath="userspace",network="blue"}')"
  assert_eq "fast-path frames (userspace data path)" 0 "$((fast_rx + fast_tx))"
else
  assert_eq "overlayd_datapath_info{datapath=\"ebpf\"}" 1 "$(metric "$after" 'overlayd_datapath_info{datapath="ebpf",network="blue"}')"
  assert_ge "fast-path tunnel rx packets, x10 (>= 9 x tunnel rx packets)" $((9 * tun_rx)) $((10 * fast_rx))
  assert_ge "fast-path TAP rx frames, x10 (>= 9 x TAP rx frames)" $((9 * tap_rx)) $((10 * fast_tx))
fi

log "tx checksum offload off on ${PREFIX}u1 only: a capture there holds the checksums a NIC would send"
checksum_offload_off "$H1" "${PREFIX}u1"
capture_start wire "$H1" "${PREFIX}u1" ip6 and udp port 4789
before=$(scrape "$H1" http://127.0.0.1:9477/metrics)
ping_ok "$H1" "$O2" 5
ping_ok "$H2" "$O1" 5
ping_ok "$H1" "$O2" 3 -M "do" -s $((mtu - 28))
ping_ok "$H2" "$O1" 3 -M "do" -s $((mtu - 28))
capture_stop wire
after=$(scrape "$H1" http://127.0.0.1:9477/metrics)
fast_tx=$(d "$before" "$after" 'overlayd_fastpath_frames_total{direction="tap_rx",network="blue"}')
if [[ ${OVERLAYD_DATAPATH:-auto} != userspace ]]; then
  assert_ge "fast-path TAP rx frames during the capture (16 pings and replies from h1's side)" 16 "$fast_tx"
fi

log "the VXLAN/IPv6 packets overlayd sent, as tshark dissects them"
sent=$(tshark -r "$WORK/wire.pcap" -Y "ipv6.src == $V1 && vxlan" -T fields -e frame.number 2>/dev/null | wc -l)
assert_ge "VXLAN/IPv6 packets from overlayd" 16 "$sent"
fields=$(tshark -r "$WORK/wire.pcap" -o udp.check_checksum:TRUE -Y "ipv6.src == $V1 && vxlan" \
  -T fields -E separator='|' -e frame.number -e udp.dstport -e udp.checksum -e udp.checksum.status \
  -e vxlan.flags -e vxlan.vni -e ipv6.hlim 2>/dev/null)
# (udp.checksum.status 1 = good; a field repeated by the inner frame lists the outer value first)
bad=$(awk -F'|' '{ for (i = 2; i <= NF; i++) sub(/,.*/, "", $i) }
  !($2 == 4789 && $3 != "0x0000" && $4 == 1 && $5 == "0x0800" && $6 == 42 && $7 == 64)' <<<"$fields")
[[ -z $bad ]] || die "VXLAN/IPv6 packets without a good UDP checksum, flags 0x08, VNI 42 or hop limit 64:"$'\n'"$bad"
ok "all $sent: to port 4789, non-zero UDP checksum verified good by tshark, flags 0x08, VNI 42, hop limit 64"

stop_daemon d1
log "PASS: overlayd and the kernel vxlan device interoperate over IPv6"
