#!/usr/bin/env bash
# 70-prometheus-dashboard.sh - a real Prometheus scrapes two clustered daemons (membership from
# a real etcd); every dashboard query returns data.
#
#   netns e   192.0.2.10 etcd (started here) ─┐
#   netns h1  192.0.2.1  overlayd d1 ─────────┼─ bridge in netns sw (the L3 underlay)
#   netns h2  192.0.2.2  overlayd d2 ─────────┘
#   metrics on <underlay>:9477; prometheus in h1 (127.0.0.1:9090, 1 s scrape of both, tsdb in $WORK)
#
# Both daemons run `cluster = true` with `peers = []`: they find each other through etcd, so the
# dashboard's cluster row has real data like the rest.
# Proves:
#   - /usr/bin/prometheus, started by the lab inside h1 (never the packaged service), scrapes
#     both daemons: `up == 1` for both targets (polled: the first scrape takes a few seconds);
#   - through Prometheus, both daemons are connected to etcd and each knows the other as the
#     one member of blue;
#   - with traffic on the overlay (ping both ways, a TCP transfer), every PromQL expression of
#     dashboards/overlayd.json ($network = blue, $__rate_interval = 10s) returns a non-empty
#     result through the Prometheus HTTP API, and so does the network variable's query.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v curl >/dev/null || die "curl not installed"
DASHBOARD=$REPO_DIR/dashboards/overlayd.json
[[ -r $DASHBOARD ]] || die "no dashboard at $DASHBOARD"

command -v etcd >/dev/null || die "the etcd binary is needed (apt-get install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is needed (apt-get install etcd-client)"

SW=$PREFIX-sw H1=$PREFIX-h1 H2=$PREFIX-h2 E=$PREFIX-e
U1=192.0.2.1 U2=192.0.2.2 EA=192.0.2.10 O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap
API=http://127.0.0.1:9090/api/v1

bridged_underlay "$SW" "$H1" "$U1/24" "$H2" "$U2/24" "$E" "$EA/24"
log "etcd in $E"
etcd_up "$E" "$EA"

# cfg FILE UNDERLAY NODE TAP_ADDRESS - a clustered daemon: blue has no static peer
cfg() {
  write_config "$1" "$2"
  set_metrics_listen "$1" "$2:9477"
  printf '\n[cluster]\nendpoints = ["http://%s:2379"]\nnode_name = "%s"\nlease_ttl_secs = 10\nstate_file = "%s"\n' \
    "$EA" "$3" "$WORK/$3-state.json" >>"$1"
  add_network "$1" blue 42 "$TAP" "$4" "" cluster=true
}
cfg "$WORK/h1.toml" "$U1" h1 "$O1/24"
cfg "$WORK/h2.toml" "$U2" h2 "$O2/24"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

log "prometheus in $H1, scraping both daemons every second"
start_prometheus "$H1" 1 "" "$U1:9477" "$U2:9477"

# query EXPR - the JSON answer of an instant query
query() { prom_query "$H1" "$1"; }
both_up() { [[ $(query 'count(up{job="overlayd"} == 1)' | jq -r '.data.result[0].value[1] // 0') == 2 ]]; }
t0=$SECONDS
wait_until -t 40 both_up || die "prometheus does not see both daemons up: $(query 'up' | jq -c '.data.result')"
ok "up == 1 for $U1:9477 and $U2:9477 (after ~$((SECONDS - t0)) s)"

log "the daemons found each other through etcd"
members() { query 'sum(overlayd_cluster_members{network="blue"} == 1) + sum(overlayd_cluster_connected == 1)' | jq -r '.data.result[0].value[1] // 0'; }
wait_until -t 30 eval '[[ $(members) == 4 ]]' ||
  die "prometheus does not see both daemons connected with one member each: $(query '{__name__=~"overlayd_cluster_(members|connected)"}' | jq -c '[.data.result[] | [.metric.instance, .metric.__name__, .value[1]]]')"
ok "overlayd_cluster_connected == 1 and overlayd_cluster_members{network=\"blue\"} == 1 on both"

log "traffic over the overlay"
wait_ping "$H1" "$O2"
start_bg "$H1" "$WORK/ping1.log" ping -n -i 0.2 "$O2"
start_bg "$H2" "$WORK/ping2.log" ping -n -i 0.2 "$O1"
make_random_file "$WORK/payload" 10
tcp_transfer "$H1" "$H2" "$O2" 5001 "$WORK/payload" "overlay h1->h2"
sleep 2   # two more scrapes after the transfer, so rate windows hold it

log "every query of the dashboard through the Prometheus API"
ns_exec "$H1" /usr/bin/python3 - "$DASHBOARD" "$API" <<'PY' || die "dashboard queries failed"
import json, sys, time, urllib.parse, urllib.request
dash, api = sys.argv[1], sys.argv[2]
d = json.load(open(dash))
subst = {"$__rate_interval": "10s", "${network}": "blue", "$network": "blue"}
def fill(e):
    for k, v in subst.items():
        e = e.replace(k, v)
    return e
def query(e):
    url = api + "/query?" + urllib.parse.urlencode({"query": e})
    with urllib.request.urlopen(url, timeout=5) as r:
        a = json.load(r)
    if a.get("status") != "success":
        raise SystemExit(f"query failed: {e}: {a}")
    return a["data"]["result"]
panels = []
for p in d["panels"]:
    panels.append(p)
    panels.extend(p.get("panels", []))
exprs = [(p["title"], fill(t["expr"])) for p in panels for t in p.get("targets", [])]
var = next(v for v in d["templating"]["list"] if v["name"] == "network")
metric = var["definition"].split("(", 1)[1].split(",")[0].strip()
exprs.append(("variable network", f"count by (network) ({metric})"))
failed = 0
for title, e in exprs:
    deadline = time.time() + 20
    while True:
        res = query(e)
        if res or time.time() > deadline:
            break
        time.sleep(1)
    if res:
        print(f"   ok: {title}: {len(res)} series  [{e[:90]}{'...' if len(e) > 90 else ''}]")
    else:
        print(f"FAIL: {title}: empty result for {e}", file=sys.stderr)
        failed += 1
vals = sorted({r["metric"].get("network") for r in query(f"count by (network) ({metric})")})
print(f"   ok: network variable values: {vals}")
if "blue" not in vals:
    raise SystemExit("the network variable does not offer blue")
print(f"   {len(exprs)} queries, {failed} empty")
sys.exit(1 if failed else 0)
PY

log "shutdown"
kill -TERM "$PROM_PID"
wait_exit "$PROM_PID" 20 || die "prometheus did not stop"
stop_daemon d1
stop_daemon d2
log "PASS: prometheus scrapes both clustered daemons; every dashboard query has data"
