#!/usr/bin/env bash
# netns-tests/run.sh - run the privileged overlayd labs (root; network namespaces).
#
# Usage: netns-tests/run.sh [FILTER...]
#   Runs every scenario netns-tests/[0-9][0-9]-*.sh in order (only those whose file name contains
#   one of the FILTERs, if any are given), one after the other, each in its own bash with its own
#   namespaces.
#   Prints PASS/FAIL per scenario and ends with the line `netns: N passed, N failed`; exits 1 if
#   any scenario failed, or if none matched FILTER.
#
# Builds the release binary first (`cargo build --release`) unless OVERLAYD_BIN is set.
# Environment: OVERLAYD_BIN, SCENARIO_TIMEOUT [300 s per scenario], and those of lib.sh
# (KEEP_WORK=1, VERBOSE=1, READY_TIMEOUT, OVERLAYD_DATAPATH).
#   OVERLAYD_DATAPATHS="userspace ebpf"  run the scenarios once per data path (each daemon's
#                  [node] datapath overridden); the closing line counts every run.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
filters=("$@")
timeout_s=${SCENARIO_TIMEOUT:-300}

if [[ -z ${OVERLAYD_BIN:-} ]]; then
  echo "== cargo build --release"
  (cd "$repo" && cargo build --release) || {
    echo "FAIL: cargo build --release failed"
    echo "netns: 0 passed, 1 failed"
    exit 1
  }
  export OVERLAYD_BIN=$repo/target/release/overlayd
fi
echo "== overlayd binary: $OVERLAYD_BIN"

passed=0 failed=0 failures=()
read -r -a datapaths <<<"${OVERLAYD_DATAPATHS:-${OVERLAYD_DATAPATH:--}}"
for dp in "${datapaths[@]}"; do
if [[ $dp != - ]]; then export OVERLAYD_DATAPATH=$dp; fi
for script in "$here"/[0-9][0-9]-*.sh; do
  [[ -e $script ]] || continue
  name=$(basename "$script" .sh)
  if ((${#filters[@]})); then
    match=0
    for f in "${filters[@]}"; do [[ $name == *"$f"* ]] && match=1; done
    ((match)) || continue
  fi
  [[ $dp == - ]] || name="$name [datapath $dp]"
  echo
  echo "=== $name"
  start=$SECONDS
  # timeout signals the whole process group: the scenario's EXIT trap still tears its lab down
  timeout --kill-after=20 "$timeout_s" bash "$script"
  rc=$?
  if ((rc == 0)); then
    passed=$((passed + 1))
    echo "PASS $name ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)) failures+=("$name")
    ((rc == 124)) && echo "(timed out after ${timeout_s} s)"
    echo "FAIL $name (exit status $rc, $((SECONDS - start)) s)"
  fi
done
done

echo
((${#failures[@]} == 0)) || echo "failed: ${failures[*]}"
((passed + failed > 0)) || echo "no scenario matches '${filters[*]}'"
echo "netns: $passed passed, $failed failed"
((failed == 0 && passed > 0))
