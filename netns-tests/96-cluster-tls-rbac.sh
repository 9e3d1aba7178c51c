#!/usr/bin/env bash
# 96-cluster-tls-rbac.sh - cluster membership over TLS with client certificates, and etcd RBAC
# set up with the README's recipe (a node may write only its own keys and read the prefix).
#
#   netns e  192.0.2.10 (etcd, https, --client-cert-auth) ─┐
#   netns h1..h3 192.0.2.1..3                              ─┴─ bridge in netns sw
#
# Proves:
#   - h1 and h2 (client certificates CN=h1, CN=h2, each granted its own keys) register over TLS
#     and ping each other with `peers = []`; h1 runs as nobody, its key file is root's (0600):
#     the daemon reads it before it drops privileges;
#   - h3 (CN=h3, a user with read access and no grant on its keys) cannot register: etcd refuses
#     it, it never becomes a peer of h1 or h2, and its daemon keeps running;
#   - a node cannot overwrite another node's record (etcdctl as h2 on h1's key is refused).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"
command -v openssl >/dev/null || die "openssl is needed to make the lab's certificates"

SW=$PREFIX-sw
E=$PREFIX-e
EA=192.0.2.10
TAP=${PREFIX}tap
U=(- 192.0.2.1 192.0.2.2 192.0.2.3)
O=(- 198.51.100.1 198.51.100.2 198.51.100.3)
H=(- "$PREFIX-h1" "$PREFIX-h2" "$PREFIX-h3")
export ETCDCTL_API=3
PKI=$WORK/pki
mkdir -p "$PKI"

log "certificates: a lab CA, etcd's server certificate (IP $EA), client certificates root, h1, h2, h3"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.pem" -days 1 -subj /CN=overlayd-lab-ca 2>/dev/null
cert() { # cert NAME CN EXT
  openssl req -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "$3" >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
    -out "$PKI/$1.pem" -days 1 -extfile "$PKI/$1.ext" 2>/dev/null
}
cert server etcd "subjectAltName=IP:$EA
extendedKeyUsage=serverAuth,clientAuth"
for n in root h1 h2 h3; do cert "$n" "$n" "extendedKeyUsage=clientAuth"; done
ok "certificates made"

log "underlay and etcd (https, client certificates required)"
bridged_underlay "$SW" "${H[1]}" "${U[1]}/24" "${H[2]}" "${U[2]}/24" "${H[3]}" "${U[3]}/24" "$E" "$EA/24"
etcd_start "$E" "$EA" https --cert-file "$PKI/server.pem" --key-file "$PKI/server.key" --trusted-ca-file "$PKI/ca.pem" --client-cert-auth
as() { local who=$1; shift; ns_exec "$E" etcdctl --endpoints "https://$EA:2379" --cacert "$PKI/ca.pem" --cert "$PKI/$who.pem" --key "$PKI/$who.key" "$@"; }
etcd_wait as root
ok "etcd up with TLS"

log "RBAC (README recipe): each node writes only its own keys and reads the prefix; h3 only reads"
as root user add root --no-password >/dev/null
as root role add root >/dev/null 2>&1 || true
as root user grant-role root root >/dev/null
for n in h1 h2 h3; do
  as root role add "overlayd-$n" >/dev/null
  as root role grant-permission "overlayd-$n" read --prefix=true /overlayd/v1/ >/dev/null
  if [[ $n != h3 ]]; then
    as root role grant-permission "overlayd-$n" readwrite "/overlayd/v1/nodes/$n" >/dev/null
    as root role grant-permission "overlayd-$n" readwrite "/overlayd/v1/networks/blue/members/$n" >/dev/null
  fi
  as root user add "$n" --no-password >/dev/null
  as root user grant-role "$n" "overlayd-$n" >/dev/null
done
as root auth enable >/dev/null
ok "auth enabled"

cfg() {
  local i=$1 f=$WORK/h$1.toml
  write_config "$f" "${U[i]}"
  printf '\n[cluster]\nendpoints = ["https://%s:2379"]\nnode_name = "h%s"\nlease_ttl_secs = 5\nca_file = "%s"\ncert_file = "%s"\nkey_file = "%s"\n' \
    "$EA" "$i" "$PKI/ca.pem" "$PKI/h$i.pem" "$PKI/h$i.key" >>"$f"
  add_network "$f" blue 42 "$TAP" "${O[i]}/24" "" cluster=true
  # h1 runs as nobody: its key (mode 0600, root's) is read before the switch
  [[ $i != 1 ]] || sed -i "s/^underlay = .*/&\nuser = \"nobody\"\ngroup = \"nogroup\"/" "$f"
}
is_peer() { "$OVERLAYD_BIN" peers --admin "$WORK/h$1.sock" --json | jq -e --arg a "$2" '.[0].peers | any(.peer == $a)' >/dev/null; }

log "h1 and h2 join over TLS"
for i in 1 2 3; do cfg "$i"; start_daemon "${H[i]}" "d$i" "$WORK/h$i.toml"; done
for i in 1 2 3; do wait_ready "d$i"; done
wait_until -t 30 ns_exec "${H[1]}" ping -n -c 1 -W 1 "${O[2]}" || die "h1 and h2 did not find each other over TLS"
ok "h1 pings h2 (peers found through etcd over TLS with client certificates)"
assert_eq "mode of h1's key file" 600 "$(stat -c %a "$PKI/h1.key")"
assert_eq "user d1 runs as" "$(id -u nobody)" "$(awk '/^Uid:/ { print $2 }' "/proc/${_DAEMON_PID[d1]}/status")"

log "h3 has no grant on its keys: it cannot register"
wait_until -t 20 grep -q 'permission denied' "$WORK/d3.log" || { tail -n 5 "$WORK/d3.log" >&2; die "d3 did not log etcd's refusal"; }
sleep 2
for i in 1 2; do
  if is_peer "$i" "${U[3]}"; then die "h$i has the unauthorised h3 as a peer"; fi
done
[[ -z $(as root get --prefix --keys-only /overlayd/v1/networks/blue/members/h3) ]] || die "h3's record was written"
kill -0 "${_DAEMON_PID[d3]}" || die "d3 exited because etcd refused it"
ok "h3 refused by etcd, not a peer of anyone, its daemon keeps running"

log "a node cannot overwrite another node's record"
if as h2 put /overlayd/v1/networks/blue/members/h1 forged >/dev/null 2>&1; then die "h2 could write h1's record"; fi
ok "etcdctl as h2 on h1's key: permission denied"
for i in 1 2 3; do stop_daemon "d$i"; done
