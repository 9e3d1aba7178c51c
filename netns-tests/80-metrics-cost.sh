#!/usr/bin/env bash
# 80-metrics-cost.sh - what scraping /metrics every second costs the data path.
#
#   netns h1 <P>u1 192.0.2.1/24  <== veth ==>  netns h2 <P>u2 192.0.2.2/24
#   blue: vni 42, 198.51.100.1 <-> 198.51.100.2; iperf3 h1 -> h2 over the overlay
#
# Runs REPEATS (default 4) pairs of TCP transfers of SECS (default 3) seconds each, in the same
# lab run, alternating: one without scraping, one while both daemons are scraped every second
# (the interval of the Prometheus lab); the same curl loop runs in both, aimed at a closed port
# in the first, so the client processes weigh the same on the machine. Prints the medians and
# the daemon's CPU time per scrape: information only, never asserted (timings vary).
#
# Proves (asserted):
#   - every scrape during the loaded runs answered 200 (scraping works under full load);
#   - h1's tap rx byte counter grew by at least the bytes h2's iperf3 received (nothing
#     uncounted). Received, not sent: iperf3's sent count includes what was still in the socket
#     buffer when the server closed, which never reached the TAP.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_daemon
command -v iperf3 >/dev/null || die "iperf3 not installed"
command -v jq >/dev/null || die "jq not installed"
REPEATS=${REPEATS:-4} SECS=${SECS:-3}

H1=$PREFIX-h1 H2=$PREFIX-h2
U1=192.0.2.1 U2=192.0.2.2 O1=198.51.100.1 O2=198.51.100.2
TAP=${PREFIX}tap
URL=http://127.0.0.1:9477/metrics

add_ns "$H1" "$H2"
add_veth "$H1" "${PREFIX}u1" "$U1/24" "$H2" "${PREFIX}u2" "$U2/24"
write_config "$WORK/h1.toml" "$U1"
add_network "$WORK/h1.toml" blue 42 "$TAP" "$O1/24" "$U2"
write_config "$WORK/h2.toml" "$U2"
add_network "$WORK/h2.toml" blue 42 "$TAP" "$O2/24" "$U1"
start_daemon "$H1" d1 "$WORK/h1.toml"
start_daemon "$H2" d2 "$WORK/h2.toml"
wait_ready d1
wait_ready d2
wait_ping "$H1" "$O2"

iperf_listening() { ns_exec "$H2" ss -Hltn "sport = :5201" | grep -q .; }

rx_bytes() { metric "$(scrape "$H1" "$URL")" 'overlayd_tap_bytes_total{direction="rx",network="blue"}'; }
before=$(rx_bytes)
# run LABEL - one iperf3 transfer to a fresh one-shot server (a reused server can still be busy
# with the previous test and refuse the next); its rate in Mbit/s in $RATE, the bytes h2
# received added to $WORK/received
run() {
  local out srv
  start_bg "$H2" "$WORK/iperf3-server-${1// /-}.log" iperf3 -s -1 -B "$O2" -p 5201
  srv=$BG_PID
  wait_until -t 10 iperf_listening || die "iperf3 server for $1 did not start"
  out=$(ns_exec "$H1" iperf3 -c "$O2" -p 5201 -t "$SECS" -J) || die "iperf3 $1 failed: $(jq -r '.error // empty' <<<"$out")"
  wait_exit "$srv" 10 || die "iperf3 server for $1 did not exit after its test"
  jq -r '.end.sum_received.bytes' <<<"$out" >>"$WORK/received"
  RATE=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' <<<"$out")
}
# scraper NS NAME URL - curl URL once a second; one line per try: "ok SECONDS" or "fail"
scraper() {
  start_bg "$1" "$WORK/scrape-$2.log" bash -c "while :; do curl -fsS -o /dev/null -w 'ok %{time_total}\\n' --max-time 10 $3 2>/dev/null || echo fail; sleep 1; done"
}
# The runs "without scraping" run the same curl loop against a closed port, so both kinds of
# run carry the same client processes and only the daemon's share differs.
NOWHERE=http://127.0.0.1:9/metrics

log "$REPEATS x (${SECS} s without scraping, ${SECS} s with a 1 s scrape of both daemons)"
plain=() scraped=()
for ((i = 1; i <= REPEATS; i++)); do
  scraper "$H1" "control-h1-$i" "$NOWHERE"; s1=$BG_PID
  scraper "$H2" "control-h2-$i" "$NOWHERE"; s2=$BG_PID
  run "plain $i"; plain+=("$RATE")
  kill -TERM "$s1" "$s2"
  wait_exit "$s1" 5 && wait_exit "$s2" 5 || die "control scraper did not stop"
  scraper "$H1" "h1-$i" "$URL"; s1=$BG_PID
  scraper "$H2" "h2-$i" "$URL"; s2=$BG_PID
  run "scraped $i"; scraped+=("$RATE")
  kill -TERM "$s1" "$s2"
  wait_exit "$s1" 5 && wait_exit "$s2" 5 || die "scraper did not stop"
  info "pair $i: ${plain[-1]} Mbit/s without, ${scraped[-1]} Mbit/s with scraping"
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
m_plain=$(median "${plain[@]}") m_scraped=$(median "${scraped[@]}")
info "median without scraping: $m_plain Mbit/s; with a 1 s scrape: $m_scraped Mbit/s ($(awk -v a="$m_plain" -v b="$m_scraped" 'BEGIN { printf "%+.1f%%", (b - a) / a * 100 }'); not asserted)"

# the daemon's own CPU time per scrape (utime + stime from /proc, in clock ticks), idle overlay
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/${_DAEMON_PID[d1]}/stat"; }
K=300 c0=$(cpu_ticks)
ns_exec "$H1" bash -c "for ((i = 0; i < $K; i++)); do curl -fsS -o /dev/null --max-time 10 $URL || exit 1; done" ||
  die "a back-to-back scrape failed"
c1=$(cpu_ticks) hz=$(getconf CLK_TCK)
info "daemon CPU per scrape: $(awk -v t=$((c1 - c0)) -v hz="$hz" -v k=$K 'BEGIN { printf "%.2f ms (%d scrapes, %d ticks of 1/%d s); at one scrape a second: %.3f%% of a core", t / hz / k * 1000, k, t, hz, t / hz / k * 100 }')"

scrapes=$(cat "$WORK"/scrape-h*.log | wc -l)
fails=$(cat "$WORK"/scrape-h*.log | grep -vc '^ok ' || true)
info "scrape time under load, median: $(median $(awk '$1 == "ok" { print $2 * 1000 }' "$WORK"/scrape-h*.log)) ms"
assert_ge "scrapes during the loaded runs" "$REPEATS" "$scrapes"
assert_eq "scrapes that failed" 0 "$fails"
received=$(awk '{ s += $1 } END { printf "%.0f", s }' "$WORK/received")
counted=$(($(rx_bytes) - before))
awk -v c="$counted" -v r="$received" 'BEGIN { exit !(c >= r) }' ||
  die "h1 counted $counted tap rx bytes, fewer than the $received bytes of TCP payload h2 received"
ok "h1 tap rx bytes: $counted counted for $received bytes of TCP payload h2 received"

stop_daemon d1
stop_daemon d2
log "PASS: metrics cost measured"
