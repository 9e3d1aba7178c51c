# netns-tests/profile.sh - PROFILE=1 for netns-tests/bench.sh (sourced by it, not run alone).
#
# With PROFILE=1, bench.sh
#   - builds overlayd with frame pointers and line tables and runs every system with it:
#       RUSTFLAGS="-C force-frame-pointers=yes" cargo build --profile profiling --target-dir target/fp
#     (a cargo profile cannot set rustflags on stable Rust; the separate target directory keeps
#     target/release untouched). OVERLAYD_BIN, if set, wins.
#   - after the last repetition of every system, runs one more single-stream iperf3 and, for
#     PROFILE_SECONDS (default DURATION) inside it, after OMIT + 1 s of warm-up:
#       perf record -a -e cpu-clock -g --call-graph fp     (the VM has no hardware PMU)
#       perf stat --per-thread -e sched:sched_switch,sched:sched_wakeup,raw_syscalls:sys_enter
#         on the lab's processes (overlay daemons, iperf3 client and server)
#     both switched on and off through perf's control FIFOs, so that the bytes counted on the
#     server's overlay interface (rx) cover exactly the sampled window.
#   - folds the samples of the daemons (and, for every system, of the whole lab: daemons, iperf3,
#     ksoftirqd) into categories by function name along the frame-pointer stack, and by the
#     system call they ran under, and prints counts per GB moved.
# Per system, in $OUTDIR/SYSTEM/: profile-daemons.txt and profile-lab.txt (categories, system
# calls, then the top leaf symbols of each category), perf-stat.csv, perf-{daemons,lab}-sym.txt
# (perf report --sort sym), perf-daemons-threads.txt (per thread), profile-pids.txt and perf.data
# (perf report -i perf.data --pid PIDS -g). At the end: $OUTDIR/profile.md, one table for all.
#
# Caveat of cpu-clock in a guest: time spent with interrupts off is charged to the instruction
# that turns them back on (_raw_spin_unlock_irqrestore, handle_softirqs, ...), not to its callee.

PROFILE_SECONDS=${PROFILE_SECONDS:-}
PROFILE_EVENTS=sched:sched_switch,sched:sched_wakeup,raw_syscalls:sys_enter

# profile_build - the profiling binary; prints its path
profile_build() {
  log "cargo build --profile profiling (frame pointers) into target/fp"
  (cd "$REPO_DIR" && RUSTFLAGS="-C force-frame-pointers=yes" \
    cargo build --profile profiling --target-dir target/fp >&2) || die "profiling build failed"
  echo "$REPO_DIR/target/fp/profiling/overlayd"
}

# profile_rx_bytes NS DEV - bytes received on DEV
profile_rx_bytes() { ip -n "$1" -j -s link show dev "$2" | jq '.[0].stats64.rx.bytes'; }

# profile_ctl FD_CTL FD_ACK CMD - send enable/disable to a perf control FIFO, wait for its ack
profile_ctl() {
  local a=""
  echo "$3" >&"$1"
  read -t 10 -r a <&"$2" || log "perf did not acknowledge '$3'"
}

# profile_run - one extra tcp1 run under perf (called by run_system, in the system's subshell)
profile_run() {
  command -v perf >/dev/null || { log "perf not installed: PROFILE skipped"; return 0; }
  local secs=${PROFILE_SECONDS:-$DURATION} v dpids="" targets client dev2 b0 b1 t0 t1 labpids kpids
  local rec_pid stat_pid d=$WORK
  for v in "${DAEMONS[@]}"; do dpids+="${dpids:+,}${v#*:}"; done
  dev2=$(overlay_dev "$NS2" "$O2")
  rm -f "$d"/perf-{rc,ra,sc,sa}.fifo
  mkfifo "$d"/perf-{rc,ra,sc,sa}.fifo
  ip netns exec "$NS1" iperf3 -c "$O2" -p "$IPERF_PORT" -t $((secs + OMIT + 3)) -J \
    >"$d/tcp1-profile.json" 2>&1 </dev/null &
  client=$!
  PIDS+=("$client")
  targets="${dpids:+$dpids,}$IPERF_SRV,$client"
  # the FIFOs are opened read-write here so that neither side blocks on open
  exec 7<>"$d/perf-rc.fifo" 8<>"$d/perf-ra.fifo" 9<>"$d/perf-sc.fifo" 6<>"$d/perf-sa.fifo"
  perf record -a -e cpu-clock -g --call-graph fp -D -1 \
    --control "fifo:$d/perf-rc.fifo,$d/perf-ra.fifo" -o "$d/perf.data" >"$d/perf-record.log" 2>&1 &
  rec_pid=$!
  perf stat --per-thread -x, -e "$PROFILE_EVENTS" -p "$targets" -D -1 \
    --control "fifo:$d/perf-sc.fifo,$d/perf-sa.fifo" -o "$d/perf-stat.csv" >"$d/perf-stat.log" 2>&1 &
  stat_pid=$!
  PERF_PID="$rec_pid $stat_pid"
  sleep $((OMIT + 1))          # connection, slow start, perf set up
  b0=$(profile_rx_bytes "$NS2" "$dev2") t0=$(date +%s.%N)
  profile_ctl 7 8 enable; profile_ctl 9 6 enable
  sleep "$secs"
  labpids=$(ip netns pids "$NS1"; ip netns pids "$NS2")
  profile_ctl 9 6 disable; profile_ctl 7 8 disable
  b1=$(profile_rx_bytes "$NS2" "$dev2") t1=$(date +%s.%N)
  kill -INT "$rec_pid" "$stat_pid" 2>/dev/null || true
  wait "$rec_pid" "$stat_pid" || true
  exec 7>&- 8>&- 9>&- 6>&-
  PERF_PID=""
  wait "$client" || true
  rm -f "$d"/perf-{rc,ra,sc,sa}.fifo
  kpids=$(grep -l '^ksoftirqd/' /proc/[0-9]*/comm 2>/dev/null | cut -d/ -f3 || true)
  uptime >"$d/profile-load.txt"
  local gb
  gb=$(awk -v a="$b0" -v b="$b1" 'BEGIN {printf "%.4f", (b - a) / 1e9}')
  {
    echo "system=$CUR_SYS seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') gb=$gb" \
      "gbps=$(awk -v g="$gb" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", 8 * g / (b - a)}')" \
      "load=\"$(sed 's/.*load average: //' "$d/profile-load.txt")\""
  } >"$d/profile-window.txt"
  # per-thread counts -> daemons / iperf3, per GB
  profile_stat_per_gb "$d/perf-stat.csv" "$dpids" "$gb" >"$d/profile-counts.txt"
  if [[ -n $dpids ]]; then
    profile_fold "$d/perf.data" "$dpids" "$gb" "$d/perf-daemons-sym.txt" >"$d/profile-daemons.txt"
    perf report -i "$d/perf.data" --stdio --no-children -g none --sort comm --pid "$dpids" \
      >"$d/perf-daemons-threads.txt" 2>/dev/null || true
  fi
  echo "daemons=$dpids lab=$(echo $labpids $kpids | tr ' ' ',')" >"$d/profile-pids.txt"
  profile_fold "$d/perf.data" "$(echo $labpids $kpids | tr ' ' ',')" "$gb" "$d/perf-lab-sym.txt" >"$d/profile-lab.txt"
  rm -f "$d/perf.data.old"    # perf.data stays: perf report -i ... -g for call graphs
  log "profile of $CUR_SYS: $(cat "$d/profile-window.txt")"
  cat "$d/profile-counts.txt" "$d/profile-daemons.txt" 2>/dev/null | sed 's/^/#   /' >&2 || true
}

# profile_stat_per_gb CSV DAEMON_PIDS GB - "scope event count per_gb" lines; scope daemons
# (threads of the daemon processes) or iperf3
profile_stat_per_gb() {
  local tids="" p t
  for p in ${2//,/ }; do
    for t in /proc/"$p"/task/*; do tids+=" ${t##*/}"; done
  done
  awk -F, -v tids="$tids" -v gb="$3" '
    BEGIN { n = split(tids, x, " "); for (i = 1; i <= n; i++) isd[x[i]] = 1 }
    /^#/ || NF < 3 { next }
    { th = $1; sub(/^ +/, "", th); tid = th; sub(/.*-/, "", tid)
      scope = (tid in isd) ? "daemons" : "iperf3"
      if ($2 ~ /^[0-9]+$/) c[scope, $4] += $2; seen[scope] = 1 }
    END { split("sched:sched_switch sched:sched_wakeup raw_syscalls:sys_enter", ev, " ")
      for (s in seen) for (k = 1; k <= 3; k++)
        printf "%s %s %d %.0f\n", s, ev[k], c[s, ev[k]], (gb > 0) ? c[s, ev[k]] / gb : 0 }' "$1" | sort
}

# category(SYMBOL, IS_KERNEL) in awk: the category of one function, by name
PROFILE_CATEGORY_AWK='
    function category(s, k) {
      if (s ~ /csum|checksum|do_csum/) return "checksums"
      if (s ~ /memcpy|memmove|copy_user|rep_movs|copy_to_iter|copy_from_iter|copy_to_user|copy_from_user|copy_page|skb_copy_bits|copy_mc/) return "copies"
      if (!k && s ~ /[Ff]db|neigh|papaya|hash|Hash|arc_swap|lookup/) return "lookups"
      if (s ~ /^(entry_SYSCALL|syscall_|do_syscall|x64_sys_call|__x64_sys|__do_sys|__sys_|___sys_|____sys_|ksys_|vfs_read|vfs_write|do_iter_|import_iovec|iovec_from_user|copy_msghdr|__copy_msghdr|__fget|fdget|fput|__fdget|rw_verify_area|security_|sock_sendmsg|sock_recvmsg|sock_write_iter|sock_read_iter|__import_iovec|__check_object_size|__virt_addr_valid|check_heap_object|__get_user|__put_user|syscall_return|restore_regs|fpregs_|switch_fpu|exit_to_user|arch_exit_to_user)/) return "syscalls"
      if (!k && s ~ /^(__libc_|__GI_|__sendmmsg|sendmmsg|__recvmmsg|recvmmsg|__sendmsg|sendmsg|recvmsg|__recvmsg|read|write|readv|writev|__read|__write|__readv|__writev|syscall|__poll|poll|ppoll|__ppoll)$|::sys::|libc::|nix::/) return "syscalls"
      if (s ~ /^schedule|^__schedule|^preempt_schedule|^schedule_|__switch_to|switch_mm|finish_task_switch|futex|wake_up|ttwu|^enqueue_|^dequeue_|pick_next|pick_task|update_curr|update_load|update_cfs|select_task_rq|psi_|sched_|set_next_entity|put_prev|task_tick|^do_poll|^do_sys_poll|poll_|pollwake|^ep_|epoll|hrtimer|prepare_to_wait|finish_wait|autoremove_wake|__wake|idle|^pthread_cond|^__pthread|parking_lot|^tun_chr_poll|dl_server|avg_vruntime|reweight|place_entity|__calc_delta|vruntime|account_|cpuacct|rcu_note/) return "scheduler"
      if (k && s ~ /^(tun_|tap_|__tun_|virtio_net|tun$)/) return "tap_kernel"
      if (k && s ~ /^(tcp_|__tcp_|tcp4_|tcp6_|inet_csk|inet_ehash|__inet_lookup_established|__inet_lookup|inet_sendmsg|inet_recvmsg|bictcp|cubictcp|tcp$)/) return "tcp_kernel"
      if (k && s ~ /udp|^ip_|^__ip_|^ipv4_|^ip6|^ipv6|^inet_|^__inet|^raw_|^skb_segment|gso|gro|^veth|^netif_|^__netif_|napi|dev_queue_xmit|dev_hard_start|^validate_xmit|net_rx_action|process_backlog|^__dev_|^dev_|^sk_|^__sk_|^sock_|^skb_|^__skb_|^pskb_|^___pskb|^fib|^dst_|^rt_|^__rt_|^neigh_|^nf_|^iptunnel|vxlan|^gre|^eth_|^__dev|^netdev_|^qdisc|^sch_|^__qdisc|^rps_|^enqueue_to_backlog|^__netdev|^packet_|^tpacket|^lock_sock|^release_sock|^__release_sock|^__build_skb|^build_skb|^napi_/) return "udp_ip_kernel"
      if (s ~ /kmem_cache|kmalloc|kfree|__alloc|alloc_pages|page_frag|^free_|^__free|malloc|_int_free|_int_malloc|^cfree|slab|rmqueue|get_page_from_freelist|clear_page|memset|page_pool|folio|__rmqueue|__kmalloc|mod_objcg|obj_cgroup|memcg|__mod_|refill_obj|__refill_stock|^alloc_/) return "memory"
      if (k && s ~ /^(handle_softirqs|__do_softirq|do_softirq|__local_bh_enable_ip|irq_exit|_raw_spin_unlock_irqrestore|_raw_spin_unlock_bh|_raw_spin_unlock_irq|sysvec_|asm_sysvec|__irq_exit|local_bh_enable)/) return "softirq_irqoff"
      if (!k && s ~ /overlayd|^<overlayd/) return "overlayd_other"
      return k ? "other_kernel" : "other_user" }
'
PROFILE_CATEGORIES="copies checksums syscalls scheduler lookups tap_kernel udp_ip_kernel tcp_kernel memory softirq_irqoff overlayd_other other_kernel other_user"

# profile_fold PERF_DATA PIDS GB SYMFILE - where the samples of PIDS went, printed as
#   "category pct cpu_s_per_gb self_pct" lines: a sample goes to the category of the nearest
#     frame, leaf first, that is not generic (softirq/irq-off, other): _raw_spin_unlock_irqrestore
#     inside tcp_write_xmit is TCP; self_pct is the leaf symbol alone (perf report --sort sym)
#   "path NAME pct cpu_s_per_gb" lines: the system call (outermost) the sample ran under; a TAP
#     write includes the host stack the kernel runs inside it (the receiving TCP, its ACKs...)
#   then the top leaf symbols of every category (from SYMFILE, perf report --sort sym)
profile_fold() {
  local data=$1 pids=$2 gb=$3 symf=$4
  # (sort by pid too: with --sort sym alone, perf merges a symbol over all processes before
  # filtering by pid and drops it when another process hit it first)
  perf report -i "$data" --stdio --no-children -g none --sort pid,sym --pid "$pids" >"$symf" 2>/dev/null || true
  perf script -i "$data" --pid "$pids" -F period,ip,sym 2>/dev/null |
  awk -v gb="$gb" -v cats="$PROFILE_CATEGORIES" "$PROFILE_CATEGORY_AWK"'
    BEGIN { ncat = split(cats, order, " ")
      np = split("tap_write tap_read socket_send socket_receive wait_poll_futex other_syscall irq_softirq userspace", porder, " ") }
    # perf script: a header line with the period, then one line per frame (leaf first), blank
    /^[ \t]*[0-9]+[ \t]*$/ { if (nf) sample(); period = $1 + 0; nf = 0; next }
    NF >= 2 && $1 ~ /^[0-9a-f]+$/ { nf++; fk[nf] = ($1 ~ /^ffff/); fs[nf] = $0
      sub(/^[ \t]*[0-9a-f]+ /, "", fs[nf]); sub(/\+0x[0-9a-f]+$/, "", fs[nf]); next }
    NF == 0 { if (nf) sample(); nf = 0; next }
    function sample(   i, c, c0, p, k) {
      c0 = ""; c = ""
      for (i = 1; i <= nf; i++) {
        c = category(fs[i], fk[i]); if (i == 1) c0 = c
        if (c != "softirq_irqoff" && c != "other_kernel" && c != "other_user") break
        c = "" }
      if (c == "") c = c0
      cat_ns[c] += period; tot_ns += period
      # the leaf alone ("self")
      self[c0] += period; k = c0 SUBSEP fs[1]
      if (!(k in lx)) { lx[k] = ++nl[c0]; ln[c0, nl[c0]] = substr(fs[1], 1, 100) }
      lp[c0, lx[k]] += period
      p = ""
      for (i = nf; i >= 1 && p == ""; i--) {
        if (!fk[i]) continue
        if (fs[i] ~ /^tun_chr_write_iter/) p = "tap_write"
        else if (fs[i] ~ /^tun_chr_read_iter/) p = "tap_read"
        else if (fs[i] ~ /^(__sys_sendmmsg|__sys_sendmsg|__sys_sendto|sock_write_iter|___sys_sendmsg)/) p = "socket_send"
        else if (fs[i] ~ /^(__sys_recvmmsg|__sys_recvmsg|__sys_recvfrom|sock_read_iter|___sys_recvmsg|do_recvmmsg)/) p = "socket_receive"
        else if (fs[i] ~ /^(do_sys_poll|__x64_sys_poll|__x64_sys_ppoll|do_epoll_wait|__x64_sys_epoll|__x64_sys_futex|do_futex|__x64_sys_select|do_select|__x64_sys_pselect)/) p = "wait_poll_futex"
      }
      if (p == "") {
        for (i = 1; i <= nf; i++) if (fk[i] && fs[i] ~ /^(do_syscall_64|entry_SYSCALL)/) { p = "other_syscall"; break }
        if (p == "") { p = fk[1] ? "irq_softirq" : "userspace" }
      }
      path_ns[p] += period; nf = 0 }
    END {
      if (nf) sample()
      if (tot_ns <= 0) tot_ns = 1
      printf "# category pct cpu_s_per_gb self_pct (cpu s: %.2f; GB: %s)\n", tot_ns / 1e9, gb
      for (i = 1; i <= ncat; i++) { c = order[i]
        printf "%s %.1f %.3f %.1f\n", c, 100 * cat_ns[c] / tot_ns, (gb > 0) ? cat_ns[c] / 1e9 / gb : 0, 100 * self[c] / tot_ns }
      printf "# path pct cpu_s_per_gb: the system call a sample ran under\n"
      for (i = 1; i <= np; i++) { c = porder[i]
        printf "path %s %.1f %.3f\n", c, 100 * path_ns[c] / tot_ns, (gb > 0) ? path_ns[c] / 1e9 / gb : 0 }
      printf "# top leaf symbols (self) per category, %% of these samples\n"
      for (i = 1; i <= ncat; i++) if (nl[order[i]]) { c = order[i]; printf "## %s\n", c
        for (k = 1; k <= 8 && k <= nl[c]; k++) {
          b = 0; for (j = 1; j <= nl[c]; j++) if (!used[c, j] && (b == 0 || lp[c, j] > lp[c, b])) b = j
          used[c, b] = 1
          if (100 * lp[c, b] / tot_ns < 0.1) break
          printf "  %5.2f%% %s\n", 100 * lp[c, b] / tot_ns, ln[c, b] } } }'
}

# profile_summary OUTDIR - one markdown table over all profiled systems (printed, profile.md)
profile_summary() {
  local out=$1 f sys v cols=() c
  for f in "$out"/*/profile-window.txt; do
    [[ -r $f ]] || continue
    sys=$(basename "$(dirname "$f")")
    for v in daemons lab; do [[ -r $out/$sys/profile-$v.txt ]] && cols+=("$sys/$v"); done
  done
  ((${#cols[@]})) || return 0
  {
    echo "Profile windows (PROFILE=1): seconds, GB received on the server's overlay interface, rate, load average"
    echo
    for f in "$out"/*/profile-window.txt; do [[ -r $f ]] && sed 's/^/    /' "$f"; done
    echo
    echo "Where the CPU went (cpu-clock samples; a sample counts for the nearest frame of a known category):"
    echo "% of the scope's samples, and CPU seconds per GB moved. daemons = the overlay daemons;"
    echo "lab = daemons + iperf3 client and server + ksoftirqd."
    echo
    printf '| category |'; for c in "${cols[@]}"; do printf ' %s %% | s/GB |' "$c"; done; echo
    printf '|---|'; for c in "${cols[@]}"; do printf -- '---|---|'; done; echo
    for v in $PROFILE_CATEGORIES total "path tap_write" "path tap_read" "path socket_send" \
        "path socket_receive" "path wait_poll_futex" "path other_syscall" "path irq_softirq" "path userspace"; do
      printf '| %s |' "$v"
      for c in "${cols[@]}"; do
        awk -v want="$v" '
          !/^#/ && !/^##/ && !/^ / {
            if ($1 == "path") { k = $1 " " $2; p = $3; g = $4 } else { k = $1; p = $2; g = $3 }
            if (k == want || (want == "total" && $1 != "path")) { sp += p; sg += g; hit = 1 } }
          END { if (hit) printf " %.1f | %.3f |", sp, sg; else printf " - | - |" }' \
          "$out/${c%%/*}/profile-${c##*/}.txt"
      done
      echo
    done
    echo
    echo "Counts per GB moved (perf stat over the same window; daemons = the overlay daemons' threads)"
    echo
    echo "| system | scope | sched_switch/GB | sched_wakeup/GB | syscalls/GB |"
    echo "|---|---|---|---|---|"
    for f in "$out"/*/profile-counts.txt; do sys=$(basename "$(dirname "$f")")
      awk -v s="$sys" '{ v[$1, $2] = $4; sc[$1] = 1 }
        END { for (x in sc) printf "| %s | %s | %s | %s | %s |\n", s, x, v[x, "sched:sched_switch"],
          v[x, "sched:sched_wakeup"], v[x, "raw_syscalls:sys_enter"] }' "$f" | sort
    done
  } | tee "$out/profile.md"
}
