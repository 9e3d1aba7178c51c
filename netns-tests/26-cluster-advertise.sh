#!/usr/bin/env bash
# 26-cluster-advertise.sh - MAC/IP advertisement through a real etcd, ARP/ND suppression from it.
#
#   netns e  192.0.2.10 (etcd) ─┐
#   netns h1..h4 192.0.2.1..4  ─┴─ bridge in netns sw (the L3 underlay)
#
# On every host i the daemon's TAP is a port of a Linux bridge br (MAC 02:00:00:00:00:0i) that
# holds the host's overlay addresses 198.51.100.i/24 and 2001:db8:42::i/64; a "VM" namespace can
# join a host's bridge over a veth. Every network: cluster = true, advertise = "macs+ips",
# arp_suppress = true, peers = [].
# Proves:
#   - each host's MAC and addresses (snooped from its gratuitous ARP and unsolicited NA) are
#     published in etcd (macs/<node>/<mac>, seq 0) and become FDB entries of type "cluster" and
#     neighbour bindings of source "cluster" on the others, before any ping;
#   - h1's tables are flushed: the bindings come back from the cluster alone (without
#     advertisement they do not, and h1's requests flood);
#   - then ARP requests and IPv6 neighbour solicitations of every host are answered locally:
#     ZERO broadcast frames and ZERO solicitations reach any of the four underlay legs while h1
#     pings h2, h3, h4 over IPv4 and IPv6 (both directions resolve: the answers come from
#     bindings); overlayd_neigh_suppressed_total counts the hits;
#   - a VM's MAC/IP moves from h2 to h3: h3 publishes it with seq 1, h2 withdraws its record,
#     h1's and h2's tables have it behind h3 as type cluster, and pings from h1 follow it (loss
#     printed);
#   - h4 stops (SIGTERM): its records go and h1 forgets its MAC and addresses;
#   - unknown_unicast = "drop" (reloaded in place on h1): a unicast frame to a MAC nobody
#     advertises is flooded to the underlay before, and not at all after (counted as a drop
#     with reason unknown_unicast), while pings to the advertised hosts still pass.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
TAP=${PREFIX}tap
BR=${PREFIX}br0
TTL=5
U=(- 192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.4)
O=(- 198.51.100.1 198.51.100.2 198.51.100.3 198.51.100.4)
O6=(- 2001:db8:42::1 2001:db8:42::2 2001:db8:42::3 2001:db8:42::4)
MAC=(- 02:00:00:00:00:01 02:00:00:00:00:02 02:00:00:00:00:03 02:00:00:00:00:04)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3" "$PREFIX-h4")
export ETCDCTL_API=3

log "underlay: h1..h4 and the etcd host on a bridge in $SW"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24" "${H[4]}" "${U[4]}/24" "$E" "$EA/24"

etcd_up "$E" "$EA"
ectl() { ns_exec "$E" etcdctl --endpoints "http://$EA:2379" "$@"; }
K=/overlayd/v1/networks/blue/macs

ovl() { "$OVERLAYD_BIN" "$@"; }
m() { metric "$(scrape "${H[$1]}" "http://${U[$1]}:9477/metrics")" "$2"; }

log "four daemons: cluster = true, advertise = \"macs+ips\", arp_suppress = true, peers = []"
for i in 1 2 3 4; do
  f=$WORK/h$i.toml
  write_config "$f" "${U[i]}"
  set_metrics_listen "$f" "${U[i]}:9477"
  printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "h%s"\nlease_ttl_secs = %s\n' "$EA" "$i" "$TTL" >>"$f"
  add_network "$f" blue 42 "$TAP" - "" cluster=true 'advertise="macs+ips"' arp_suppress=true 'unknown_unicast="flood"'
  start_daemon "${H[i]}" "d$i" "$f"
done
for i in 1 2 3 4; do wait_ready "d$i"; done
for i in 1 2 3 4; do
  ip -n "${H[i]}" link add "$BR" type bridge
  ip -n "${H[i]}" link set "$BR" address "${MAC[i]}"
  ns_exec "${H[i]}" sysctl -qw "net.ipv6.conf.$BR.disable_ipv6=0" "net.ipv6.conf.$BR.accept_dad=0"
  ip -n "${H[i]}" addr add "${O[i]}/24" dev "$BR"
  ip -n "${H[i]}" addr add "${O6[i]}/64" dev "$BR" nodad
  ip -n "${H[i]}" link set "$TAP" master "$BR" up
  ip -n "${H[i]}" link set "$BR" up
done
peers_of() { ovl peers --admin "$WORK/h$1.sock" --json | jq '.[0].peers | length'; }
for i in 1 2 3 4; do
  wait_until -t 30 eval "(( \$(peers_of $i) == 3 ))" || die "h$i does not have the three others as peers"
done
ok "every daemon has the three others as peers"

# announce NS DEV MAC IPV4 [IPV6] - a gratuitous ARP and an unsolicited neighbour advertisement
announce() {
  local nsn=$1 dev=$2 mac=$3 ip4=$4 ip6=${5:-}
  send_frame "$nsn" "$dev" "Ether(src='$mac', dst='ff:ff:ff:ff:ff:ff') / ARP(op=1, hwsrc='$mac', psrc='$ip4', pdst='$ip4')"
  [[ -z $ip6 ]] || send_frame "$nsn" "$dev" "Ether(src='$mac', dst='33:33:00:00:00:01') / IPv6(src='$ip6', dst='ff02::1', hlim=255) / ICMPv6ND_NA(tgt='$ip6', R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr='$mac')"
}

log "each host announces itself once (GARP + unsolicited NA): published, and bound on the others"
for i in 1 2 3 4; do announce "${H[i]}" "$BR" "${MAC[i]}" "${O[i]}" "${O6[i]}"; done
fdb1() { ovl fdb --admin "$WORK/h1.sock" --network blue --json; }
# cluster_entry I MAC PEER - host I's FDB has MAC behind PEER as type cluster
cluster_entry() {
  ovl fdb --admin "$WORK/h$1.sock" --network blue --json |
    jq -e --arg m "$2" --arg p "$3" '.[0].entries | any(.mac == $m and .port == $p and .type == "cluster")' >/dev/null
}
# cluster_binding I IP MAC - host I's neighbour table binds IP to MAC from the cluster
cluster_binding() {
  ovl fdb --admin "$WORK/h$1.sock" --network blue --json |
    jq -e --arg ip "$2" --arg m "$3" '.[0].neighbours | any(.ip == $ip and .mac == $m and .source == "cluster")' >/dev/null
}
all_bound() {
  local i j
  for i in 1 2 3 4; do for j in 1 2 3 4; do
    ((i == j)) && continue
    cluster_entry "$i" "${MAC[j]}" "${U[j]}" && cluster_binding "$i" "${O[j]}" "${MAC[j]}" &&
      cluster_binding "$i" "${O6[j]}" "${MAC[j]}" || return 1
  done; done
}
wait_until -t 20 all_bound || { fdb1 | jq . >&2; ectl get --prefix "$K" >&2; die "the bindings did not reach every daemon"; }
ok "every host has every other host's MAC as type cluster behind its peer, and its two addresses"
rec2=$(ectl get --print-value-only "$K/h2/${MAC[2]}")
info "h2's record: $rec2"
assert_eq "h2's record (seq, addresses)" "0 ${O[2]} ${O6[2]}" "$(jq -r '"\(.seq) \(.ips | sort | join(" "))"' <<<"$rec2")"
ovl fdb --admin "$WORK/h1.sock" --network blue
ovl cluster --admin "$WORK/h1.sock"
assert_ge "overlayd_cluster_macs remote on h1" 3 "$(m 1 'overlayd_cluster_macs{network="blue",origin="remote"}')"
assert_ge "overlayd_cluster_adverts_total published on h1" 1 "$(m 1 'overlayd_cluster_adverts_total{network="blue",op="published"}')"

log "h1's tables flushed (overlayd fdb flush): what comes back comes from the cluster alone"
# (the announcements above also crossed the tunnels, so h1 had snooped bindings too)
ovl fdb flush --admin "$WORK/h1.sock" --network blue
h1_bound() {
  local j
  for j in 2 3 4; do
    cluster_entry 1 "${MAC[j]}" "${U[j]}" && cluster_binding 1 "${O[j]}" "${MAC[j]}" && cluster_binding 1 "${O6[j]}" "${MAC[j]}" || return 1
  done
}
wait_until -t 5 h1_bound || { fdb1 | jq . >&2; die "h1 did not get the others' bindings back from the cluster"; }
ok "h1 has the others' MACs (type cluster) and addresses back from the cluster"

log "ARP and ND with bindings known: answered locally, nothing broadcast or solicited on the underlay"
hits4='overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="hit"}'
hits6='overlayd_neigh_suppressed_total{family="ipv6",network="blue",result="hit"}'
for i in 1 2 3 4; do ip -n "${H[i]}" neigh flush dev "$BR"; ip -n "${H[i]}" -6 neigh flush dev "$BR"; done
h40=$(m 1 "$hits4") h60=$(m 1 "$hits6")
# VXLAN packets whose inner frame is a broadcast (inner destination at UDP payload bytes 16..21)
# or an IPv6 neighbour solicitation (ethertype 0x86dd at 28, next header 58 at 36, type 135 at 70)
flooded=(udp port 4789 and '((udp[16:4] = 0xffffffff and udp[20:2] = 0xffff) or (udp[28:2] = 0x86dd and udp[36] = 58 and udp[70] = 135))')
for i in 1 2 3 4; do capture_start "u$i" "${H[i]}" "${PREFIX}u$i" "${flooded[@]}"; done
for j in 2 3 4; do
  ping_ok "${H[1]}" "${O[j]}" 2
  ping_ok "${H[1]}" "${O6[j]}" 2
done
capture_stop u1 u2 u3 u4
for i in 1 2 3 4; do
  n=$(capture_count "u$i")
  ((n == 0)) || capture_show "u$i"
  assert_eq "VXLAN packets carrying a broadcast or a solicitation on h$i's underlay leg" 0 "$n"
done
assert_ge "ipv4 suppression hits on h1 (was $h40)" $((h40 + 3)) "$(m 1 "$hits4")"
assert_ge "ipv6 suppression hits on h1 (was $h60)" $((h60 + 3)) "$(m 1 "$hits6")"

log "a VM moves from h2 to h3 (same MAC and address)"
VMAC=02:00:00:00:99:01 VIP=198.51.100.50
add_ns "$PREFIX-vm2" "$PREFIX-vm3"
ip link add "${PREFIX}vm" netns "$PREFIX-vm2" address "$VMAC" type veth peer name "${PREFIX}vp" netns "${H[2]}"
_if_addr_up "$PREFIX-vm2" "${PREFIX}vm" "$VIP/24"
ip -n "${H[2]}" link set "${PREFIX}vp" master "$BR" up
announce "$PREFIX-vm2" "${PREFIX}vm" "$VMAC" "$VIP"
wait_until -t 10 cluster_entry 1 "$VMAC" "${U[2]}" || die "h1 did not get the VM's MAC behind h2 from the cluster"
wait_until -t 10 cluster_binding 1 "$VIP" "$VMAC" || die "h1 did not get the VM's address from the cluster"
assert_eq "seq of h2's record of the VM" 0 "$(ectl get --print-value-only "$K/h2/$VMAC" | jq .seq)"
ping_ok "${H[1]}" "$VIP" 2
ping_start mv "${H[1]}" "$VIP" 100 -i 0.05 -c 100
sleep 1
ip -n "${H[2]}" link del "${PREFIX}vp"
ip link add "${PREFIX}vm" netns "$PREFIX-vm3" address "$VMAC" type veth peer name "${PREFIX}vp" netns "${H[3]}"
_if_addr_up "$PREFIX-vm3" "${PREFIX}vm" "$VIP/24"
ip -n "${H[3]}" link set "${PREFIX}vp" master "$BR" up
announce "$PREFIX-vm3" "${PREFIX}vm" "$VMAC" "$VIP"
moved_to_h3() {
  [[ $(ectl get --print-value-only "$K/h3/$VMAC" | jq .seq 2>/dev/null) == 1 ]] &&
    [[ -z $(ectl get --print-value-only "$K/h2/$VMAC") ]] && cluster_entry 1 "$VMAC" "${U[3]}" && cluster_entry 2 "$VMAC" "${U[3]}"
}
wait_until -t 10 moved_to_h3 || { ectl get --prefix "$K" >&2; fdb1 | jq . >&2; die "the move to h3 was not advertised with seq 1 (and h2's record withdrawn)"; }
ok "h3 advertises the VM with seq 1, h2 withdrew its record, h1 and h2 have it behind h3 as type cluster"
wait_exit "${_PING_PID[mv]}" 30 || die "the ping across the move did not end"
read -r rx missing < <(ping_answered 1 100 <"$WORK/ping-mv.log")
info "pings from h1 to the VM every 50 ms across the move: $rx/100 answered (~$(((100 - rx) * 50)) ms lost; unanswered:$missing)"
ping_ok "${H[1]}" "$VIP" 3

log "h4 stops (SIGTERM): its records go, and the others forget its MAC and addresses"
stop_daemon d4
h4_gone() {
  [[ -z $(ectl get --prefix --keys-only "$K/h4/") ]] &&
    ! fdb1 | jq -e --arg m "${MAC[4]}" '.[0].entries | any(.mac == $m)' >/dev/null &&
    ! fdb1 | jq -e --arg ip "${O[4]}" '.[0].neighbours | any(.ip == $ip)' >/dev/null
}
wait_until -t 10 h4_gone || { fdb1 | jq . >&2; die "h4's bindings did not go after it left"; }
ok "h4's records are gone from etcd and its MAC and addresses from h1"

log "unknown_unicast: a unicast frame to a MAC nobody advertises floods, then (\"drop\") does not"
DEAD=02:00:00:00:de:ad
to_dead=(udp port 4789 and 'udp[16:4] = 0x02000000' and 'udp[20:2] = 0xdead')
send_dead() {
  send_frame "${H[1]}" "$BR" "Ether(src='${MAC[1]}', dst='$DEAD') / IP(src='${O[1]}', dst='198.51.100.99') / ICMP()"
}
capture_start d0 "${H[1]}" "${PREFIX}u1" "${to_dead[@]}"
send_dead
capture_stop d0
assert_ge "VXLAN packets to $DEAD on h1's underlay leg (flood)" 2 "$(capture_count d0)"
sed -i 's/^unknown_unicast = .*/unknown_unicast = "drop"/' "$WORK/h1.toml"
kill -HUP "${_DAEMON_PID[d1]}"
wait_until -t 10 grep -q "reload applied" "${_DAEMON_LOG[d1]}" || die "h1 did not apply the reload"
grep "reload applied" "${_DAEMON_LOG[d1]}" | grep -q 'updated=\["blue"\]' || die "unknown_unicast was not applied in place: $(grep 'reload applied' "${_DAEMON_LOG[d1]}")"
dr0=$(m 1 'overlayd_drops_total{network="blue",reason="unknown_unicast"}')
capture_start d1 "${H[1]}" "${PREFIX}u1" "${to_dead[@]}"
send_dead
send_dead
capture_stop d1
assert_eq "VXLAN packets to $DEAD on h1's underlay leg with unknown_unicast = \"drop\"" 0 "$(capture_count d1)"
assert_ge "unknown_unicast drops on h1" $((dr0 + 2)) "$(m 1 'overlayd_drops_total{network="blue",reason="unknown_unicast"}')"
for j in 2 3; do ping_ok "${H[1]}" "${O[j]}" 2; done
ping_ok "${H[1]}" "$VIP" 2
log "PASS: MACs and addresses advertised through etcd; ARP/ND answered locally with no flood; moves follow the sequence; a leaving host's bindings go; unknown unicast dropped"
