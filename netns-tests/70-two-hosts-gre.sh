#!/usr/bin/env bash
# 70-two-hosts-gre.sh - two overlayd daemons carry L2 networks over GRE, on an IPv4 and on an
# IPv6 underlay; the same hosts over VXLAN give the rate to compare with.
#
#   netns h1                                              netns h2
#   <P>u1 192.0.2.1/24 2001:db8::1/64 <== veth ==> <P>u2 192.0.2.2/24 2001:db8::2/64
#   overlayd, tap <P>tap 198.51.100.1/24  .......  overlayd, tap <P>tap 198.51.100.2/24
#
# Phases, one pair of daemons each:
#   A. GRE over IPv4, key 42 (blue), plus a keyless GRE network (red, tap <P>tk, 203.0.113.x)
#      in the same daemons;
#   B. GRE over IPv6, key 42 with GRE checksums;
#   D. GRE over IPv4 with [node] offload = false;
#   C. VXLAN over IPv4 (rate reference only).
# Proves:
#   - the TAP MTU is the underlay MTU minus the real overhead: 1500-42 (GRE/IPv4 with key),
#     1500-38 (keyless), 1500-66 (GRE/IPv6 with key and checksum);
#   - ping both ways; DF pings that fill the TAP MTU and 1400-byte DF pings pass; one byte
#     more is refused locally; the underlay fragments nothing;
#   - the GRE TAPs offer TSO (offloads on by default): TCP super-frames are cut into GRE
#     packets, and received segments are coalesced; with [node] offload = false (phase D)
#     they do not, and traffic still flows;
#   - a 20 MB TCP transfer (random data) arrives byte-identical each way, for GRE/IPv4,
#     GRE/IPv6 with GRE checksums (verified by the receiving daemon, which counts no
#     gre_checksum drop) and GRE/IPv4 without offloads;
#   - on the wire, dissected by tshark (an independent GRE parser): IP protocol 47, GRE
#     version 0, protocol 0x6558, key 42 (none on the keyless network), checksum flag and a
#     checksum tshark verifies as good in phase B, outer TTL / hop limit 64, DF set (IPv4),
#     and the inner DSCP copied to the outer header (ping -Q 0xb8: DSCP 46 both inside and out);
#   - the daemons count no GRE drops during all this; both stop cleanly.
# Rates (GRE/IPv4, GRE/IPv6, VXLAN/IPv4 on the same hosts) are printed, never asserted.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v tshark >/dev/null || die "tshark not installed (see .ci/run)"
command -v ethtool >/dev/null || die "ethtool not installed"

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2 V1=2001:db8::1 V2=2001:db8::2
O1=198.51.100.1 O2=198.51.100.2 K1=203.0.113.1 K2=203.0.113.2
TAP=${PREFIX}tap TK=${PREFIX}tk

log "underlay: $H1 ${PREFIX}u1 $U1/24 $V1/64 <-> $H2 ${PREFIX}u2 $U2/24 $V2/64"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ip -n "$H1" addr add "$V1/64" dev "${PREFIX}u1" nodad
ip -n "$H2" addr add "$V2/64" dev "${PREFIX}u2" nodad
ping_ok "$H1" "$U2" 2
ping_ok "$H1" "$V2" 2
make_random_file "$WORK/payload" 20

# tshark_fields PCAP FILTER FIELD... - one line per matching packet, fields separated by '|'
tshark_fields() {
  local pcap=$1 filter=$2 f args=(); shift 2
  for f; do args+=(-e "$f"); done
  tshark -r "$pcap" -Y "$filter" -T fields -E separator='|' "${args[@]}" 2>/dev/null
}

# overlay_checks NAME MTU - ping, DF pings, MTU+1 refused, no underlay fragments
overlay_checks() {
  local what=$1 mtu=$2 f1 f2
  wait_ping "$H1" "$O2"
  ping_ok "$H1" "$O2" 5
  ping_ok "$H2" "$O1" 5
  f1=$(snmp_counter "$H1" Ip FragCreates) f2=$(snmp_counter "$H2" Ip FragCreates)
  ping_ok "$H1" "$O2" 3 -M "do" -s $((mtu - 28))
  ping_ok "$H2" "$O1" 3 -M "do" -s $((mtu - 28))
  ping_ok "$H1" "$O2" 3 -M "do" -s 1400
  ping_ok "$H2" "$O1" 3 -M "do" -s 1400
  assert_fails "$what: DF ping of MTU+1 bytes is refused in h1" ns_exec "$H1" ping -n -c 1 -W 1 -M "do" -s $((mtu - 27)) "$O2"
  assert_eq "$what: underlay fragments created by the DF pings" 0 $(($(snmp_counter "$H1" Ip FragCreates) - f1 + $(snmp_counter "$H2" Ip FragCreates) - f2))
}

# tso_state NS DEV - the TSO line of ethtool -k
tso_state() { ns_exec "$1" ethtool -k "$2" | grep '^tcp-segmentation-offload:' | sed 's/ \[fixed\]//'; }

# no_gre_drops NAME... - the daemons counted no GRE-specific drop
no_gre_drops() {
  local d line
  for d; do
    drop_totals "$d"
    line=$(grep 'drop totals' "${_DAEMON_LOG[$d]}" | tail -n 5 | grep -o 'gre_[a-z_]*=[0-9]*' || true)
    [[ -z $line ]] || die "daemon $d counted GRE drops: $line"
  done
  ok "no GRE drops counted by $*"
}

# --------------------------------------------------------------------------- A: GRE / IPv4
log "A: GRE over IPv4: blue key 42, red keyless"
write_config "$WORK/a1.toml" "$U1"
add_network "$WORK/a1.toml" blue 42 "$TAP" "$O1/24" "$U2" encap='"gre"'
add_network "$WORK/a1.toml" red 7 "$TK" "$K1/24" "$U2" encap='"gre"' key=false
write_config "$WORK/a2.toml" "$U2"
add_network "$WORK/a2.toml" blue 42 "$TAP" "$O2/24" "$U1" encap='"gre"'
add_network "$WORK/a2.toml" red 7 "$TK" "$K2/24" "$U1" encap='"gre"' key=false
assert_ok "overlayd check accepts a1.toml" "$OVERLAYD_BIN" check --config "$WORK/a1.toml"
start_daemon "$H1" a1 "$WORK/a1.toml"
start_daemon "$H2" a2 "$WORK/a2.toml"
wait_ready a1
wait_ready a2
mtu=$(link_mtu "$H1" "$TAP")
assert_eq "GRE/IPv4 with key: TAP MTU (1500 - 42)" 1458 "$mtu"
assert_eq "GRE TAP offers TSO (offloads on by default)" "tcp-segmentation-offload: on" "$(tso_state "$H1" "$TAP")"
assert_eq "GRE/IPv4 keyless: TAP MTU (1500 - 38)" 1462 "$(link_mtu "$H1" "$TK")"
capture_start gre4 "$H1" "${PREFIX}u1" ip proto 47
overlay_checks "GRE/IPv4" "$mtu"
ping_ok "$H1" "$O2" 3 -Q 0xb8
wait_ping "$H1" "$K2"
ping_ok "$H1" "$K2" 3
ping_ok "$H2" "$K1" 3
capture_stop gre4

log "A: the GRE overlayd sent, as tshark dissects it"
pcap=$WORK/gre4.pcap
sent=$(tshark_fields "$pcap" "ip.src == $U1 && gre" frame.number | wc -l)
assert_ge "GRE packets from h1 in the capture" 30 "$sent"
bad=$(tshark_fields "$pcap" "ip.src == $U1 && gre && !(gre.flags.version == 0 && gre.proto == 0x6558 && gre.flags.routing == 0 && gre.flags.checksum == 0 && ip.ttl#1 == 64 && ip.flags.df#1 == 1)" frame.number ip.ttl ip.flags.df gre.flags_and_version gre.proto)
[[ -z $bad ]] || die "GRE packets with other than version 0, protocol 0x6558, no checksum, TTL 64, DF:"$'\n'"$bad"
ok "all $sent: version 0, protocol 0x6558 (transparent Ethernet bridging), TTL 64, DF set"
keyed=$(tshark_fields "$pcap" "ip.src == $U1 && gre.key == 42 && eth.dst" frame.number | wc -l)
keyless=$(tshark_fields "$pcap" "ip.src == $U1 && gre && gre.flags.key == 0 && eth.dst" frame.number | wc -l)
assert_ge "blue packets with key 42 carrying Ethernet" 20 "$keyed"
assert_ge "red packets without a key carrying Ethernet" 6 "$keyless"
assert_eq "every GRE packet is blue (key 42) or red (keyless)" "$sent" $((keyed + keyless))
ef=$(tshark_fields "$pcap" "ip.src == $U1 && gre.key == 42 && icmp.type == 8 && icmp.seq <= 3 && ip.dsfield.dscp == 46" ip.dsfield.dscp | sort | uniq -c | awk '{print $1, $2}')
assert_eq "echo requests sent with inner DSCP 46: outer and inner DSCP (count, value pairs)" "3 46,46" "$ef"

log "A: 20 MB each way over GRE/IPv4"
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "GRE/IPv4 h1->h2"
rate_gre4=$TRANSFER_MBIT
tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/payload" "GRE/IPv4 h2->h1"
no_gre_drops a1 a2
stop_daemon a1
stop_daemon a2

# --------------------------------------------------------------------------- B: GRE / IPv6
log "B: GRE over IPv6: key 42, GRE checksums"
write_config "$WORK/b1.toml" "$V1"
add_network "$WORK/b1.toml" blue 42 "$TAP" "$O1/24" "$V2" encap='"gre"' gre_checksum=true
write_config "$WORK/b2.toml" "$V2"
add_network "$WORK/b2.toml" blue 42 "$TAP" "$O2/24" "$V1" encap='"gre"' gre_checksum=true
start_daemon "$H1" b1 "$WORK/b1.toml"
start_daemon "$H2" b2 "$WORK/b2.toml"
wait_ready b1
wait_ready b2
mtu=$(link_mtu "$H1" "$TAP")
assert_eq "GRE/IPv6 with key and checksum: TAP MTU (1500 - 40 - 12 - 14)" 1434 "$mtu"
capture_start gre6 "$H1" "${PREFIX}u1" ip6 proto 47
overlay_checks "GRE/IPv6" "$mtu"
ping_ok "$H1" "$O2" 3 -Q 0xb8
capture_stop gre6
pcap=$WORK/gre6.pcap
sent=$(tshark_fields "$pcap" "ipv6.src == $V1 && gre" frame.number | wc -l)
assert_ge "GRE/IPv6 packets from h1 in the capture" 20 "$sent"
bad=$(tshark_fields "$pcap" "ipv6.src == $V1 && gre && !(gre.flags.version == 0 && gre.proto == 0x6558 && gre.key == 42 && gre.flags.checksum == 1 && gre.checksum.status == 1 && ipv6.hlim#1 == 64)" frame.number ipv6.hlim gre.flags_and_version gre.key gre.checksum gre.checksum.status)
[[ -z $bad ]] || die "GRE/IPv6 packets that are not version 0, 0x6558, key 42, good checksum, hop limit 64:"$'\n'"$bad"
ok "all $sent: version 0, protocol 0x6558, key 42, checksum present and verified good by tshark, hop limit 64"
ef=$(tshark_fields "$pcap" "ipv6.src == $V1 && icmp.type == 8 && icmp.seq <= 3 && ip.dsfield.dscp == 46" ipv6.tclass.dscp | sort | uniq -c | awk '{print $1, $2}')
assert_eq "echo requests with inner DSCP 46: outer traffic class DSCP (count, value)" "3 46" "$ef"
tcp_transfer "$H1" "$H2" "$O2" 5003 "$WORK/payload" "GRE/IPv6 h1->h2"
rate_gre6=$TRANSFER_MBIT
tcp_transfer "$H2" "$H1" "$O1" 5004 "$WORK/payload" "GRE/IPv6 h2->h1"
no_gre_drops b1 b2
stop_daemon b1
stop_daemon b2

# --------------------------------------------------------------------------- D: no offloads
log "D: GRE over IPv4 with [node] offload = false: plain TAPs, one frame per packet"
for i in 1 2; do
  write_config "$WORK/d$i.toml" "192.0.2.$i"
  sed -i 's/^underlay = .*/&\noffload = false/' "$WORK/d$i.toml"
  add_network "$WORK/d$i.toml" blue 42 "$TAP" "198.51.100.$i/24" "192.0.2.$((3 - i))" encap='"gre"'
  start_daemon "$([[ $i == 1 ]] && echo "$H1" || echo "$H2")" "d$i" "$WORK/d$i.toml"
done
wait_ready d1
wait_ready d2
assert_eq "GRE TAP with offload = false offers no TSO" "tcp-segmentation-offload: off" "$(tso_state "$H1" "$TAP")"
ip -n "$H1" neigh flush dev "$TAP"
wait_ping "$H1" "$O2"
tcp_transfer "$H1" "$H2" "$O2" 5006 "$WORK/payload" "GRE/IPv4 without offloads h1->h2"
rate_plain=$TRANSFER_MBIT
tcp_transfer "$H2" "$H1" "$O1" 5007 "$WORK/payload" "GRE/IPv4 without offloads h2->h1"
no_gre_drops d1 d2
stop_daemon d1
stop_daemon d2

# --------------------------------------------------------------------------- C: VXLAN reference
log "C: VXLAN over IPv4 on the same hosts (rate reference)"
write_config "$WORK/c1.toml" "$U1"
add_network "$WORK/c1.toml" blue 42 "$TAP" "$O1/24" "$U2"
write_config "$WORK/c2.toml" "$U2"
add_network "$WORK/c2.toml" blue 42 "$TAP" "$O2/24" "$U1"
start_daemon "$H1" c1 "$WORK/c1.toml"
start_daemon "$H2" c2 "$WORK/c2.toml"
wait_ready c1
wait_ready c2
wait_ping "$H1" "$O2"
tcp_transfer "$H1" "$H2" "$O2" 5005 "$WORK/payload" "VXLAN/IPv4 h1->h2"
rate_vxlan=$TRANSFER_MBIT
stop_daemon c1
stop_daemon c2

info "rate h1->h2, 20 MB, socat (not asserted): GRE/IPv4 $rate_gre4 Mbit/s, GRE/IPv6+csum $rate_gre6 Mbit/s, GRE/IPv4 without offloads $rate_plain Mbit/s, VXLAN/IPv4 $rate_vxlan Mbit/s"
log "PASS: two hosts over GRE (IPv4 and IPv6)"
