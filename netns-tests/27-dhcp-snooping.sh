#!/usr/bin/env bash
# 27-dhcp-snooping.sh - addresses learned from DHCP acknowledgements, advertised through a real
# etcd, answered locally; real DHCP server and clients (busybox udhcpd and udhcpc).
#
#   netns e  192.0.2.10 (etcd) ─┐
#   netns h1..h3 192.0.2.1..3  ─┴─ bridge in netns sw (the L3 underlay)
#   h1: the DHCP server (udhcpd) on its bridge br (198.51.100.1), which holds the daemon's TAP;
#   client c1 on h1's bridge (the server on its own side: it asks for broadcast replies, the
#   only ones that cross the daemon's TAP), client c2 on h2's bridge (the server behind the
#   tunnel: unicast replies). Every network: cluster = true, advertise = "macs+ips",
#   arp_suppress = true, peers = [].
# The clients never send ARP of their own (udhcpc without -a; captured on their ports: zero
# ARP frames from them until the release step), so only the DHCPACK can tell a daemon their
# addresses. Proves:
#   - h2 binds c2's leased address (source local, with the lease time left), h1 binds it
#     behind h2 (the ACK it saw leaving for c2), and c1's address is bound on h1: the records
#     macs/h2/<c2> and macs/h1/<c1> in etcd carry the addresses, and h3 gets them (source
#     cluster); overlayd_neigh_dhcp_total{message="ack",result="applied"} counts;
#   - ARP requests from h3 for both addresses are answered locally: ZERO broadcasts on the
#     three underlay legs, and suppression hits on h3;
#   - c2 releases its lease (udhcpc -R, stopped): the binding goes on h2 and h1, and the
#     record loses the address;
#   - c1's lease (12 s, never renewed: udhcpc -q exited) ends: the record loses the address
#     and h1 no longer lists it (a DHCP binding never outlives its lease).
# Without DHCP snooping the records carry no address and h3's requests flood: the lab fails.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"
command -v busybox >/dev/null || die "busybox is needed for udhcpd/udhcpc (apt-get install busybox-static)"
command -v arping >/dev/null || die "arping is needed (apt-get install arping)"

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
TAP=${PREFIX}tap
BR=${PREFIX}br0
TTL=5
U=(- 192.0.2.1 192.0.2.2 192.0.2.3)
O=(- 198.51.100.1 198.51.100.2 198.51.100.3)
MAC=(- 02:00:00:00:00:01 02:00:00:00:00:02 02:00:00:00:00:03)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3")
C1=$PREFIX-c1 C2=$PREFIX-c2
CMAC1=02:00:00:00:c1:01 CMAC2=02:00:00:00:c2:02
export ETCDCTL_API=3

log "underlay: h1..h3 and the etcd host on a bridge in $SW"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24" "$E" "$EA/24"
etcd_up "$E" "$EA"
ectl() { ns_exec "$E" etcdctl --endpoints "http://$EA:2379" "$@"; }
K=/overlayd/v1/networks/blue/macs
ovl() { "$OVERLAYD_BIN" "$@"; }
m() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" "$2"; }

log "three daemons: cluster = true, advertise = \"macs+ips\", arp_suppress = true, peers = []"
for i in 1 2 3; do
  f=$WORK/h$i.toml
  write_config "$f" "${U[i]}"
  set_metrics_listen "$f" "${U[i]}:9477"
  printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "h%s"\nlease_ttl_secs = %s\n' "$EA" "$i" "$TTL" >>"$f"
  add_network "$f" blue 42 "$TAP" - "" cluster=true 'advertise="macs+ips"' arp_suppress=true
  start_daemon "${H[i]}" "d$i" "$f"
done
for i in 1 2 3; do wait_ready "d$i"; done
for i in 1 2 3; do
  ip -n "${H[i]}" link add "$BR" type bridge
  ip -n "${H[i]}" link set "$BR" address "${MAC[i]}"
  ip -n "${H[i]}" addr add "${O[i]}/24" dev "$BR"
  ip -n "${H[i]}" link set "$TAP" master "$BR" up
  ip -n "${H[i]}" link set "$BR" up
done
peers_of() { ovl peers --admin "$WORK/h$1.sock" --json | jq '.[0].peers | length'; }
for i in 1 2 3; do
  wait_until -t 30 eval "(( \$(peers_of $i) == 2 ))" || die "h$i does not have the two others as peers"
done
ok "every daemon has the two others as peers"

# the clients: namespaces on h1's and h2's bridges, IPv6 off (no neighbour discovery either)
add_ns "$C1" "$C2"
for c in 1 2; do
  cn=C$c cm=CMAC$c
  ns_exec "${!cn}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip link add "${PREFIX}c" netns "${!cn}" address "${!cm}" type veth peer name "${PREFIX}p$c" netns "${H[c]}"
  ns_exec "${H[c]}" sysctl -qw "net.ipv6.conf.${PREFIX}p$c.disable_ipv6=1"
  ip -n "${!cn}" link set "${PREFIX}c" up
  ip -n "${H[c]}" link set "${PREFIX}p$c" master "$BR" up
done
# every ARP frame the clients send, from before their first DHCP message
capture_start a1 "${H[1]}" "${PREFIX}p1" arp and ether src "$CMAC1"
capture_start a2 "${H[2]}" "${PREFIX}p2" arp and ether src "$CMAC2"

log "udhcpd on h1 (pool 198.51.100.100-150, leases up to 600 s)"
cat >"$WORK/udhcpd.conf" <<EOF
start 198.51.100.100
end 198.51.100.150
interface $BR
lease_file $WORK/udhcpd.leases
pidfile $WORK/udhcpd.pid
min_lease 5
option subnet 255.255.255.0
option lease 600
EOF
: >"$WORK/udhcpd.leases"
start_bg "${H[1]}" "$WORK/udhcpd.log" busybox udhcpd -f -a 200 "$WORK/udhcpd.conf"
cat >"$WORK/udhcpc.script" <<'EOF'
#!/bin/sh
# udhcpc's events: put the address on the interface (no ARP: the kernel sends none for this)
case $1 in
deconfig) ip -4 addr flush dev "$interface" ;;
bound | renew) ip addr add "$ip/24" dev "$interface" && echo "$ip $lease" >"$OUT" ;;
esac
EOF
chmod +x "$WORK/udhcpc.script"

log "c1 (on the server's side, broadcast replies, asks for a 12 s lease, exits once bound)"
ns_exec "$C1" env OUT="$WORK/c1.lease" busybox udhcpc -i "${PREFIX}c" -f -q -n -B -t 5 -T 1 -x lease:12 \
  -s "$WORK/udhcpc.script" >"$WORK/c1.log" 2>&1 || { cat "$WORK/c1.log" >&2; die "c1 got no lease"; }
read -r IP1 L1 <"$WORK/c1.lease"
t_c1=$SECONDS
ok "c1 got $IP1 for ${L1} s"
log "c2 (behind the tunnel from the server, unicast replies, stays running to release on exit)"
start_bg "$C2" "$WORK/c2.log" env OUT="$WORK/c2.lease" busybox udhcpc -i "${PREFIX}c" -f -R -t 5 -T 1 -s "$WORK/udhcpc.script"
C2PID=$BG_PID
wait_until -t 20 test -s "$WORK/c2.lease" || { cat "$WORK/c2.log" "$WORK/udhcpd.log" >&2; die "c2 got no lease"; }
read -r IP2 L2 <"$WORK/c2.lease"
ok "c2 got $IP2 for ${L2} s"

# binding I IP MAC SOURCE - host I's neighbour table binds IP to MAC from SOURCE
binding() {
  ovl fdb --admin "$WORK/h$1.sock" --network blue --json |
    jq -e --arg ip "$2" --arg m "$3" --arg s "$4" '.[0].neighbours | any(.ip == $ip and .mac == $m and .source == $s)' >/dev/null
}
# lease_binding I IP MAC SOURCE - the same, learned from a DHCP lease (some lease time left)
lease_binding() {
  ovl fdb --admin "$WORK/h$1.sock" --network blue --json |
    jq -e --arg ip "$2" --arg m "$3" --arg s "$4" '.[0].neighbours | any(.ip == $ip and .mac == $m and .source == $s and .lease_secs > 0)' >/dev/null
}
record_ips() { ectl get --print-value-only "$K/$1/$2" | jq -r '.ips | join(" ")' 2>/dev/null; }
wait_until -t 10 lease_binding 2 "$IP2" "$CMAC2" local || { ovl fdb --admin "$WORK/h2.sock"; die "h2 did not bind c2's leased address"; }
ok "h2 binds $IP2 to c2 from the DHCPACK that came through the tunnel (source local, lease time left)"
# (h2's record, once h1 has it, makes the binding one of source cluster: either will do)
wait_until -t 10 eval 'lease_binding 1 $IP2 $CMAC2 snooped || binding 1 $IP2 $CMAC2 cluster' ||
  { ovl fdb --admin "$WORK/h1.sock"; die "h1 did not bind c2's leased address behind h2"; }
ok "h1 binds $IP2 to c2 behind h2 (from the DHCPACK it sent there, or h2's record)"
wait_until -t 5 lease_binding 1 "$IP1" "$CMAC1" local || { ovl fdb --admin "$WORK/h1.sock"; die "h1 did not bind c1's leased address"; }
ok "h1 binds $IP1 to c1 from the broadcast DHCPACK (source local)"
wait_until -t 15 eval '[[ $(record_ips h2 $CMAC2) == "$IP2" && $(record_ips h1 $CMAC1) == "$IP1" ]]' ||
  { ectl get --prefix "$K" >&2; die "the records of c1 and c2 do not carry their leased addresses"; }
info "c2's record: $(ectl get --print-value-only "$K/h2/$CMAC2")"
ok "etcd: macs/h2/$CMAC2 carries $IP2, macs/h1/$CMAC1 carries $IP1"
wait_until -t 10 eval 'binding 3 $IP2 $CMAC2 cluster && binding 3 $IP1 $CMAC1 cluster' ||
  { ovl fdb --admin "$WORK/h3.sock"; die "h3 did not get the leased addresses from the cluster"; }
ok "h3 binds both leased addresses from the cluster"
ovl fdb --admin "$WORK/h2.sock" --network blue | sed 's/^/   /'
ack='overlayd_neigh_dhcp_total{message="ack",network="blue",result="applied"}'
assert_ge "DHCPACKs applied on h2" 1 "$(m 2 "$ack")"
assert_ge "DHCPACKs applied on h1" 2 "$(m 1 "$ack")"

log "h3 asks for both addresses: answered by its daemon, no broadcast on any underlay leg"
hits4='overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="hit"}'
h0=$(m 3 "$hits4")
bcast=(udp port 4789 and 'udp[16:4] = 0xffffffff and udp[20:2] = 0xffff')
for i in 1 2 3; do capture_start "u$i" "${H[i]}" "${PREFIX}u$i" "${bcast[@]}"; done
for ip in "$IP2" "$IP1"; do
  out=$(ns_exec "${H[3]}" arping -c 1 -w 2 -I "$BR" "$ip" 2>&1) || { echo "$out" >&2; die "no answer to h3's ARP request for $ip"; }
  grep -qi "$([[ $ip == "$IP2" ]] && echo "$CMAC2" || echo "$CMAC1")" <<<"$out" || { echo "$out" >&2; die "the answer for $ip names the wrong MAC"; }
done
capture_stop u1 u2 u3
for i in 1 2 3; do
  n=$(capture_count "u$i")
  ((n == 0)) || capture_show "u$i"
  assert_eq "VXLAN packets carrying a broadcast on h$i's underlay leg" 0 "$n"
done
assert_ge "ipv4 suppression hits on h3 (was $h0)" $((h0 + 2)) "$(m 3 "$hits4")"
capture_stop a1 a2
assert_eq "ARP frames c1 sent" 0 "$(capture_count a1)"
assert_eq "ARP frames c2 sent" 0 "$(capture_count a2)"
ok "the clients never sent ARP: their addresses came from the DHCPACKs alone"

log "c2 releases its lease (udhcpc -R, stopped)"
rel='overlayd_neigh_dhcp_total{message="release",network="blue",result="applied"}'
# c2 learns the server's MAC first (its first ARP: the proof above is done), so its release
# goes out at once, not from a queue the exiting client's deconfiguration may race with
ns_exec "$C2" ping -c 1 -W 2 "${O[1]}" >/dev/null || die "c2 cannot reach the DHCP server"
kill -TERM "$C2PID"
wait_exit "$C2PID" 10 || die "udhcpc in c2 did not stop"
gone2() {
  ! binding 2 "$IP2" "$CMAC2" local && ! binding 1 "$IP2" "$CMAC2" snooped && [[ -z $(record_ips h2 "$CMAC2") ]]
}
wait_until -t 10 gone2 || { cat "$WORK/c2.log" >&2; ovl fdb --admin "$WORK/h2.sock"; ectl get --prefix "$K" >&2; die "c2's released address is still bound or advertised"; }
assert_ge "DHCPRELEASEs applied on h2" 1 "$(m 2 "$rel")"
ok "the release removed c2's binding on h2 and h1, and its record no longer carries $IP2"

log "c1's 12 s lease ends without a renewal"
binding 1 "$IP1" "$CMAC1" local || die "c1's binding went before its lease ended"
left=$((t_c1 + L1 - SECONDS))
info "about ${left} s of c1's lease left"
wait_until -t $((left + 10)) eval '! binding 1 $IP1 $CMAC1 local && [[ -z $(record_ips h1 $CMAC1) ]]' ||
  { ovl fdb --admin "$WORK/h1.sock"; ectl get --prefix "$K" >&2; die "c1's binding outlived its lease"; }
((SECONDS - t_c1 >= L1 - 2)) || die "c1's binding went after $((SECONDS - t_c1)) s, before its ${L1} s lease ended"
ectl get --print-value-only "$K/h1/$CMAC1" | grep -q . || die "c1's record went altogether (its MAC is still on h1's port)"
ok "c1's binding ended with its lease ($((SECONDS - t_c1)) s after the ACK); its record stays, without the address"
log "PASS: addresses granted by DHCP are bound from the DHCPACK, advertised, answered locally with no flood, released, and end with their lease"
