#!/usr/bin/env bash
# 72-interop-ovs.sh - overlayd and Open vSwitch (userspace datapath) share one L2 segment, over
# GRE with a key and over VXLAN.
#
#   netns h1                                 netns h2 (Open vSwitch, our own ovsdb + vswitchd)
#   <P>u1 192.0.2.1/24 <==== veth ====> <P>u2 in bridge <P>bp (netdev), 192.0.2.2/24 on <P>bp
#   overlayd: tap <P>tap                     bridge <P>bi (netdev): tunnel port + internal
#     198.51.100.1/24 (GRE key 42)            port <P>vm 198.51.100.2/24
#
# Phases (one overlayd network, one OVS tunnel port each):
#   gre:      overlayd encap gre, vni 42                 <-> OVS type=gre options:key=42
#   gre-csum: overlayd encap gre, vni 42, gre_checksum    <-> OVS type=gre options:key=42
#             options:csum=true (OVS verifies our checksums and drops bad ones; we verify its)
#   gre-nokey: overlayd encap gre, key = false            <-> OVS type=gre (no key option)
#   vxlan:    overlayd encap vxlan, vni 42               <-> OVS type=vxlan options:key=42
# Each phase proves: ping both ways, DF pings that fill the MTU both ways; a 10 MB TCP transfer (random data) arrives byte-identical
# each way; the daemon counted no tunnel drops (overlayd_drops_total from its /metrics). Rates
# are printed, never asserted.
#
# OVS runs from $WORK/ovs (database, sockets, logs): the system's service is never touched, and
# both OVS processes are children of this lab, stopped by PID in cleanup. The underlay veth
# keeps its default offloads: OVS reads it with a packet socket, so what overlayd sends must not
# rely on the kernel finishing it (overlayd sends OVS, not an overlayd peer, one datagram per
# segment with a zero UDP checksum over IPv4). The OVS internal ports, inside OVS's host, have tx
# checksum offload off: the userspace datapath (without userspace-tso) cannot finish what the
# host's own stack leaves partial.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
for _t in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl ovs-appctl; do
  command -v "$_t" >/dev/null || die "missing $_t (apt package openvswitch-switch, see .ci/run)"
done

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2
O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap BP=${PREFIX}bp BI=${PREFIX}bi VM=${PREFIX}vm

log "underlay: $H1 ${PREFIX}u1 $U1/24 <-> $H2 ${PREFIX}u2 (an OVS port)"
add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" -

log "h2: ovsdb-server and ovs-vswitchd (userspace datapath) under $WORK/ovs"
OVS=$WORK/ovs
mkdir -p "$OVS"
export OVS_RUNDIR=$OVS OVS_DBDIR=$OVS OVS_LOGDIR=$OVS OVS_SYSCONFDIR=$OVS
ovsdb-tool create "$OVS/conf.db" /usr/share/openvswitch/vswitch.ovsschema || die "ovsdb-tool create failed"
start_bg "$H2" "$OVS/ovsdb.out" ovsdb-server "$OVS/conf.db" --remote="punix:$OVS/db.sock" \
  --unixctl="$OVS/ovsdb.ctl" --log-file="$OVS/ovsdb.log" --pidfile="$OVS/ovsdb.pid"
wait_until -t 10 test -S "$OVS/db.sock" || die "ovsdb-server did not open $OVS/db.sock"
vsctl() { ovs-vsctl --db="unix:$OVS/db.sock" --timeout=10 "$@"; }
vsctl --no-wait init
start_bg "$H2" "$OVS/vswitchd.out" ovs-vswitchd "unix:$OVS/db.sock" \
  --unixctl="$OVS/vswitchd.ctl" --log-file="$OVS/vswitchd.log" --pidfile="$OVS/vswitchd.pid"
wait_until -t 15 test -S "$OVS/vswitchd.ctl" || die "ovs-vswitchd did not start (see $OVS/vswitchd.log)"
appctl() { ip netns exec "$H2" ovs-appctl -t "$OVS/vswitchd.ctl" "$@"; }
info "$(vsctl --version | head -n 1)"

# the tunnel endpoint: an internal port of a netdev bridge holding the veth
vsctl add-br "$BP" -- set bridge "$BP" datapath_type=netdev -- add-port "$BP" "${PREFIX}u2"
wait_until -t 10 link_exists "$H2" "$BP" || die "OVS did not create the internal port $BP"
ip -n "$H2" addr add "$U2/24" dev "$BP"
ip -n "$H2" link set "$BP" up
ping_ok "$H1" "$U2" 2
# the overlay side: a netdev bridge with an internal port carrying the overlay address
vsctl add-br "$BI" -- set bridge "$BI" datapath_type=netdev \
  -- add-port "$BI" "$VM" -- set interface "$VM" type=internal
wait_until -t 10 link_exists "$H2" "$VM" || die "OVS did not create the internal port $VM"
ip -n "$H2" addr add "$O2/24" dev "$VM"
ip -n "$H2" link set "$VM" up
make_random_file "$WORK/payload" 10

# no_tunnel_drops NS URL - overlayd counted no drop of a tunnel packet (all reasons but the
# local ones) in its metrics
no_tunnel_drops() {
  local text bad
  text=$(scrape "$1" "$2")
  bad=$(awk '$1 ~ /^overlayd_drops_total\{/ && $2 != "0" && $1 !~ /reason="(hairpin|mtu_exceeded)"/' <<<"$text")
  [[ -z $bad ]] || die "overlayd counted drops:"$'\n'"$bad"
  ok "overlayd counted no drops (overlayd_drops_total all zero)"
}

mtu_is() { [[ $(link_mtu "$1" "$2") == "$3" ]]; }   # mtu_is NS DEV MTU (read anew at each poll)

# phase NAME "OVERLAYD_KEY=VALUE..." "OVS_OPTION=VALUE..." - one overlayd network and one OVS
# tunnel port (interface <P>t<n>), vni/key 42 unless the options say otherwise
phase() {
  local encap=$1 kvs=$2 ovs_opts=$3 d=d-$1 rates port=${PREFIX}t$((++PHASE)) o args=() gso
  log "$encap: overlayd $kvs <-> OVS $ovs_opts"
  for o in $ovs_opts; do args+=("options:$o"); done
  # shellcheck disable=SC2086 # word splitting of kvs is wanted
  vsctl add-port "$BI" "$port" -- set interface "$port" type="${encap%%-*}" "${args[@]}" options:remote_ip="$U1"
  write_config "$WORK/$d.toml" "$U1"
  # shellcheck disable=SC2086
  add_network "$WORK/$d.toml" blue 42 "$TAP" "$O1/24" "$U2" $kvs
  start_daemon "$H1" "$d" "$WORK/$d.toml"
  wait_ready "$d"
  mtu=$(link_mtu "$H1" "$TAP")
  # both ends of the segment get the same MTU, as in a real deployment
  vsctl set interface "$VM" mtu_request="$mtu"
  wait_until -t 10 mtu_is "$H2" "$VM" "$mtu" || die "OVS did not set the MTU of $VM to $mtu (it is $(link_mtu "$H2" "$VM"))"
  info "overlayd TAP MTU $mtu; OVS tunnel port status: $(vsctl get interface "$port" status 2>/dev/null || true)"
  wait_ping "$H1" "$O2" 20
  ping_ok "$H1" "$O2" 5
  ping_ok "$H2" "$O1" 5
  ping_ok "$H1" "$O2" 3 -M "do" -s $((mtu - 28))
  ping_ok "$H2" "$O1" 3 -M "do" -s $((mtu - 28))
  tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "$encap overlayd->OVS"
  rates="overlayd->OVS $TRANSFER_MBIT Mbit/s"
  tcp_transfer "$H2" "$H1" "$O1" 5002 "$WORK/payload" "$encap OVS->overlayd"
  rates+=", OVS->overlayd $TRANSFER_MBIT Mbit/s"
  no_tunnel_drops "$H1" http://127.0.0.1:9477/metrics
  if [[ $encap == vxlan ]]; then
    gso=$(ns_exec "$H1" "$OVERLAYD_BIN" peers --config "$WORK/$d.toml" --json | jq -r '.[0].peers[0].gets_gso')
    assert_eq "the OVS peer gets no UDP GSO (one datagram per segment, zero UDP checksum)" false "$gso"
  fi
  info "$encap rates, 10 MB, socat (not asserted): $rates"
  stop_daemon "$d"
  vsctl del-port "$BI" "$port"
}

PHASE=0
phase gre 'encap="gre"' "key=42"
phase gre-csum 'encap="gre" gre_checksum=true' "key=42 csum=true"
phase gre-nokey 'encap="gre" key=false' ""
phase vxlan 'encap="vxlan"' "key=42"
log "PASS: overlayd and Open vSwitch interoperate over GRE and VXLAN"
