#!/usr/bin/env bash
# 71-prometheus-alerts.sh - a real Prometheus loads the shipped dashboards/alerts.yml (not a
# copy, `for` durations as shipped) and its alerts fire and resolve on a live lab.
#
#   netns h1                                            netns h2
#   <P>u1 192.0.2.1/24  <======= veth underlay =======>  <P>u2 192.0.2.2/24 (+ 192.0.2.9, a non-peer)
#   overlayd d1, blue VXLAN 42, metrics 192.0.2.1:9477   overlayd d2, blue, metrics 192.0.2.2:9477
#   prometheus (127.0.0.1:9090 in h1 only, scrape and rule evaluation every 1 s, tsdb in $WORK)
#
# Proves:
#   - Prometheus loads every rule of alerts.yml with no evaluation error, and its recording rules
#     produce series from the live daemons;
#   - healthy under load (iperf3 h1 -> h2 over blue for LOAD_SECS, pings both ways): no alert
#     is pending or firing at any poll (every second) during the load and just after it;
#   - d2 stopped (SIGTERM): OverlaydPeerDown{instance=d1, network=blue, peer=192.0.2.2} is
#     firing in the Prometheus API within its `for` (1m) + the daemon's 3 s keepalive timeout
#     (+1 s control tick) + two scrape intervals + one evaluation interval (+1 s for the lab's
#     poll of the API) of the stop, and not before `for` has passed;
#     OverlaydDown{instance=192.0.2.2:9477} fires too;
#   - d2 started again: both alerts resolve (gone from the API) within 15 s;
#   - VXLAN 42 packets from 192.0.2.9 (scapy, 5 per second from the stop on):
#     OverlaydForeignTunnelPackets{instance=d1, network=blue, reason=unknown_peer} fires within
#     its `for` (2m) + a few intervals, with a summary naming the network and a runbook_url;
#   - nothing else fires meanwhile: ALERTS{alertstate="firing"} since the stop holds exactly
#     those three.
# Printed, not asserted: the time each alert took from the stop, the iperf3 rate.
# Environment: LOAD_SECS [20].
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
for _t in curl jq iperf3; do command -v "$_t" >/dev/null || die "missing tool: $_t"; done
/usr/bin/python3 -c 'import scapy.all' 2>/dev/null ||
  die "python3-scapy is needed to send tunnel packets from a non-peer (apt-get install python3-scapy)"
RULES=$REPO_DIR/dashboards/alerts.yml
[[ -r $RULES ]] || die "no rule file at $RULES"
LOAD_SECS=${LOAD_SECS:-20}

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2 O1=198.51.100.1 O2=198.51.100.2
STRANGER=192.0.2.9
TAP=${PREFIX}tap
API=http://127.0.0.1:9090/api/v1
SCRAPE=1        # seconds: scrape and evaluation interval of the lab's Prometheus
PEER_DOWN_FOR=60 FOREIGN_FOR=120 KEEPALIVE_TIMEOUT=3
# the `for` of the alerts this lab waits for must be the shipped ones
grep -A2 -- '- alert: OverlaydPeerDown$' "$RULES" | grep -q "for: 1m" || die "OverlaydPeerDown's for is no longer 1m: update the lab"
grep -A2 -- '- alert: OverlaydForeignTunnelPackets$' "$RULES" | grep -q "for: 2m" || die "OverlaydForeignTunnelPackets's for is no longer 2m: update the lab"

add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
ip -n "$H2" addr add "$STRANGER/24" dev "${PREFIX}u2"
write_config "$WORK/h1.toml" "$U1"
set_metrics_listen "$WORK/h1.toml" "$U1:9477"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$U2"
write_config "$WORK/h2.toml" "$U2"
set_metrics_listen "$WORK/h2.toml" "$U2:9477"
add_network "$WORK/h2.toml" blue 42 "$TAP" "$O2/24" "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2

log "prometheus in $H1: scrapes both daemons and evaluates $RULES every ${SCRAPE} s"
start_prometheus "$H1" "$SCRAPE" "$RULES" "$U1:9477" "$U2:9477"

api() { ns_exec "$H1" curl -fsS --max-time 5 "$API/$1"; }
query() { prom_query "$H1" "$1"; }
value() { query "$1" | jq -r '.data.result[0].value[1] // "none"'; }
# alerts - "name state labels" per active alert (pending or firing), sorted
alerts() { api alerts | jq -r '.data.alerts[] | "\(.labels.alertname) \(.state) \(.labels | del(.alertname, .severity) | tostring)"' | sort; }
# alert_state NAME JQ_FILTER - the state of the alert NAME whose labels match the filter, or "none"
alert_state() {
  api alerts | jq -r --arg n "$1" "[.data.alerts[] | select(.labels.alertname == \$n) | select(.labels | $2) | .state][0] // \"none\""
}

log "the rules are loaded and healthy"
api rules >"$WORK/rules.json"
n_alerts=$(jq '[.data.groups[].rules[] | select(.type == "alerting")] | length' "$WORK/rules.json")
n_shipped=$(grep -c -- '- alert: ' "$RULES")
assert_eq "alerting rules loaded by prometheus" "$n_shipped" "$n_alerts"
assert_eq "recording rules loaded by prometheus" "$(grep -c -- '- record: ' "$RULES")" \
  "$(jq '[.data.groups[].rules[] | select(.type == "recording")] | length' "$WORK/rules.json")"

both_up() { [[ $(value 'count(up{job="overlayd"} == 1)') == 2 ]]; }
wait_until -t 40 both_up || die "prometheus does not see both daemons up: $(query up | jq -c '.data.result')"
ok "up == 1 for both daemons"
peers_up() { [[ $(value 'count(overlayd_peer_up == 1)') == 2 ]]; }
wait_until -t 20 peers_up || die "the daemons do not see each other up: $(query overlayd_peer_up | jq -c '.data.result')"
ok "overlayd_peer_up == 1 on both sides"
unhealthy() { api rules | jq -r '[.data.groups[].rules[] | select(.health != "ok") | "\(.name): \(.health) \(.lastError // "")"] | join("; ")'; }
evaluated() { [[ -z $(unhealthy) ]] && [[ $(value 'count(instance_network:overlayd_fdb_usage:ratio)') == 2 ]]; }
wait_until -t 20 evaluated || die "rules not evaluated cleanly: $(unhealthy)"
ok "every rule evaluated with health ok; instance_network:overlayd_fdb_usage:ratio has both daemons"

log "healthy under load: iperf3 $O1 -> $O2 for ${LOAD_SECS} s, pings both ways; no alert pending or firing"
wait_ping "$H1" "$O2"
start_bg "$H1" "$WORK/ping1.log" ping -n -i 0.2 "$O2"
start_bg "$H2" "$WORK/ping2.log" ping -n -i 0.2 "$O1"
start_bg "$H2" "$WORK/iperf3-server.log" iperf3 -s -1 -B "$O2" -p 5201
iperf_srv=$BG_PID
wait_until -t 10 _tcp_listening "$H2" 5201 || die "iperf3 server did not start"
start_bg "$H1" "$WORK/iperf3.json" iperf3 -c "$O2" -p 5201 -t "$LOAD_SECS" -J --connect-timeout 5000
iperf_cli=$BG_PID
polls=0
end=$((SECONDS + LOAD_SECS + 5))   # and 5 s after: rate windows still hold the load
while ((SECONDS < end)); do
  active=$(alerts)
  [[ -z $active ]] || die "alert active on a healthy lab under load:"$'\n'"$active"
  polls=$((polls + 1))
  sleep 1
done
wait_exit "$iperf_cli" 30 || die "iperf3 client did not finish"
((EXIT_STATUS == 0)) || die "iperf3 failed (status $EXIT_STATUS): $(cat "$WORK/iperf3.json")"
wait_exit "$iperf_srv" 15 || die "iperf3 server did not finish"
rate=$(jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | floor / 100' "$WORK/iperf3.json")
ok "no alert pending or firing in $polls polls over $((LOAD_SECS + 5)) s"
info "iperf3 over blue: $rate Gbit/s"
# every drop reason an alert watches would have made it pending above; the others are shown
info "drop reasons of either daemon with a rate > 0 under load: $(query 'instance_network_reason:overlayd_drops:rate1m > 0' |
  jq -r '[.data.result[].metric | "\(.instance) \(.network) \(.reason)"] | if length == 0 then "none" else join(", ") end')"

# now_ms - wall clock in milliseconds (SECONDS is whole seconds: too coarse for the deadline)
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

log "d2 stopped; VXLAN 42 packets from $STRANGER (a peer of nothing) to d1, 5 per second"
t_stop=$SECONDS
t_stop_ms=$(now_ms)
stop_daemon d2
ns_exec "$H2" /usr/bin/python3 - "$STRANGER" "$U1" >"$WORK/stranger.log" 2>&1 <<'EOF' &
import logging, sys
logging.getLogger('scapy').setLevel(logging.ERROR)
from scapy.all import ARP, Ether, IP, UDP, Raw, send
src, dst = sys.argv[1:]
mac = '02:71:00:00:00:09'
inner = Ether(src=mac, dst='ff:ff:ff:ff:ff:ff') / ARP(hwsrc=mac, psrc='198.51.100.71', pdst='198.51.100.1')
vxlan = Raw(bytes.fromhex('08000000') + (42).to_bytes(3, 'big') + b'\0')   # I flag, VNI 42
# bounded: 5 per second for at most 200 s; the lab stops it once the alert fired
send(IP(src=src, dst=dst) / UDP(sport=40071, dport=4789) / vxlan / inner, inter=0.2, count=1000, verbose=False)
EOF
STRANGER_PID=$!
_PIDS+=("$STRANGER_PID")

peer_down() { [[ $(alert_state OverlaydPeerDown ".instance == \"$U1:9477\" and .network == \"blue\" and .peer == \"$U2\"") == "$1" ]]; }
# the deadline: for, then the daemon's own detection (3 s of silence, checked every second), two
# scrape intervals and one evaluation for Prometheus to see it, and one poll of the API (0.2 s
# plus the curl) for this lab to see it
deadline_ms=$(((PEER_DOWN_FOR + KEEPALIVE_TIMEOUT + 1 + 2 * SCRAPE + SCRAPE + 1) * 1000))
wait_until -t 30 peer_down pending || die "OverlaydPeerDown not even pending 30 s after the stop: $(alerts)"
ok "OverlaydPeerDown pending $(($(now_ms) - t_stop_ms)) ms after the stop"
wait_until -t $((deadline_ms / 1000 + 10)) peer_down firing || die "OverlaydPeerDown not firing $((deadline_ms / 1000 + 10)) s after the stop: $(alerts)"
t_fired=$(($(now_ms) - t_stop_ms))
((t_fired >= PEER_DOWN_FOR * 1000)) || die "OverlaydPeerDown fired ${t_fired} ms after the stop, before its for (${PEER_DOWN_FOR} s)"
((t_fired <= deadline_ms)) ||
  die "OverlaydPeerDown fired ${t_fired} ms after the stop, later than for + detection + 2 scrapes + 1 evaluation + 1 poll (${deadline_ms} ms)"
ok "OverlaydPeerDown{network=blue,peer=$U2} firing ${t_fired} ms after the stop (for ${PEER_DOWN_FOR} s, limit ${deadline_ms} ms)"
api alerts | jq -r '.data.alerts[] | select(.labels.alertname == "OverlaydPeerDown") | "     summary: \(.annotations.summary)"'
target_down() { [[ $(alert_state OverlaydDown ".instance == \"$U2:9477\"") == firing ]]; }
wait_until -t 10 target_down || die "OverlaydDown{instance=$U2:9477} not firing: $(alerts)"
ok "OverlaydDown{instance=$U2:9477} firing $((SECONDS - t_stop)) s after the stop"

log "d2 started again: both alerts resolve"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d2
t_start=$SECONDS
resolved() { ! alerts | grep -qE '^(OverlaydPeerDown|OverlaydDown) '; }
wait_until -t 15 resolved || die "alerts still active 15 s after d2 came back: $(alerts)"
ok "OverlaydPeerDown and OverlaydDown resolved $((SECONDS - t_start)) s after d2 was ready"

log "the non-peer's packets: OverlaydForeignTunnelPackets"
foreign() { [[ $(alert_state OverlaydForeignTunnelPackets ".instance == \"$U1:9477\" and .network == \"blue\" and .reason == \"unknown_peer\"") == firing ]]; }
_is_ours "$STRANGER_PID" || die "the scapy sender stopped early: $(cat "$WORK/stranger.log")"
limit=$((FOREIGN_FOR + 15))
wait_until -t $((limit - (SECONDS - t_stop))) foreign ||
  die "OverlaydForeignTunnelPackets not firing ${limit} s after the first packet: $(alerts)"
t_foreign=$((SECONDS - t_stop))
((t_foreign >= FOREIGN_FOR)) || die "OverlaydForeignTunnelPackets fired after ${t_foreign} s, before its for (${FOREIGN_FOR} s)"
ok "OverlaydForeignTunnelPackets{network=blue,reason=unknown_peer} firing ${t_foreign} s after the first packet"
api alerts >"$WORK/alerts.json"
summary=$(jq -r '[.data.alerts[] | select(.labels.alertname == "OverlaydForeignTunnelPackets")][0].annotations.summary' "$WORK/alerts.json")
[[ $summary == *"network blue"* ]] || die "the summary does not name the network: $summary"
ok "summary: $summary"
assert_eq "its runbook_url" "docs/runbook.md#overlaydforeigntunnelpackets" \
  "$(jq -r '[.data.alerts[] | select(.labels.alertname == "OverlaydForeignTunnelPackets")][0].annotations.runbook_url' "$WORK/alerts.json")"
kill "$STRANGER_PID" 2>/dev/null || true
wait_exit "$STRANGER_PID" 10 || die "the scapy sender did not stop"

log "nothing else fired since the stop"
window=$((SECONDS - t_stop + 2))
fired=$(query "group by (alertname) (max_over_time(ALERTS{alertstate=\"firing\"}[${window}s]))" |
  jq -r '[.data.result[].metric.alertname] | sort | join(" ")')
assert_eq "alerts that fired in the last ${window} s" "OverlaydDown OverlaydForeignTunnelPackets OverlaydPeerDown" "$fired"
assert_eq "alerts firing now" "OverlaydForeignTunnelPackets" \
  "$(jq -r '[.data.alerts[] | select(.state == "firing") | .labels.alertname] | unique | join(" ")' "$WORK/alerts.json")"

log "shutdown"
kill -TERM "$PROM_PID"
wait_exit "$PROM_PID" 20 || die "prometheus did not stop"
stop_daemon d1
stop_daemon d2
log "PASS: the shipped alerts stay quiet under load, fire on a dead peer, a dead daemon and a non-peer, and resolve"
