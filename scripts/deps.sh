#!/usr/bin/env bash
# scripts/deps.sh - install the Debian packages overlayd's labs and demos need, quietly and only
# those that are missing. Nothing is printed when everything is there.
#
#   bash scripts/deps.sh SET|PACKAGE...
#
# Sets (a name that is not a set is taken as a package name):
#   demo  examples/two-hosts.sh: iproute2 iputils-ping tcpdump socat
#   vm    examples/vms.sh and the QEMU labs: demo, plus qemu-system-x86 (with qemu-utils from
#         bookworm when the archive has it: a newer qemu-utils does not fit bookworm's QEMU),
#         busybox-static and linux-image-amd64 (the guest's kernel)
#   labs  every namespace lab (.ci/run): demo, plus iperf3 tshark python3-scapy ethtool
#         netcat-openbsd arping jq prometheus curl cpio xz-utils openvswitch-switch systemd
#
# Installing needs root and apt (Debian or a derivative). While it installs, no packaged
# service may start (a policy-rc.d that forbids it): prometheus and Open vSwitch would
# otherwise start system services; the labs start their own copies. The policy is removed
# afterwards unless it was there before (KEEP_POLICY_RC=1 keeps it, as CI does).
set -euo pipefail

declare -A SETS=(
  [demo]="iproute2 iputils-ping tcpdump socat"
  [vm]="@demo qemu-system-x86 busybox-static linux-image-amd64"
  [labs]="@demo iperf3 tshark python3-scapy ethtool netcat-openbsd arping jq prometheus curl cpio xz-utils openvswitch-switch systemd"
)

deps_expand() {   # deps_expand NAME... - package names, sets expanded
  local n p
  for n; do
    if [[ -n ${SETS[$n]:-} ]]; then
      for p in ${SETS[$n]}; do
        if [[ $p == @* ]]; then deps_expand "${p#@}"; else echo "$p"; fi
      done
    else
      echo "$n"
    fi
  done
}

deps_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

deps_fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# apt_quiet LOGFILE ARGS... - apt-get with its chatter in LOGFILE, shown only on failure
apt_quiet() {
  local logf=$1; shift
  if ! apt-get "$@" >>"$logf" 2>&1; then
    tail -n 20 "$logf" >&2
    deps_fail "apt-get $* failed"
  fi
}

main() {
  (($#)) || deps_fail "usage: scripts/deps.sh SET|PACKAGE... (sets: ${!SETS[*]})"
  local missing=() p seen=" "
  for p in $(deps_expand "$@"); do
    [[ $seen == *" $p "* ]] && continue
    seen+="$p "
    deps_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null && command -v dpkg-query >/dev/null ||
    deps_fail "missing packages (${missing[*]}) and no apt-get to install them: install them by hand"
  ((EUID == 0)) || deps_fail "missing packages: ${missing[*]}; run as root (sudo) to install them"

  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local policy=/usr/sbin/policy-rc.d made_policy=0 logf
  if [[ ! -e $policy ]]; then
    # 101 = "action forbidden" for invoke-rc.d: no packaged service starts while we install
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  logf=$(mktemp "${TMPDIR:-/tmp}/overlayd-deps.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the values are fixed
  trap "rm -f '$logf'; [[ $made_policy == 1 && \${KEEP_POLICY_RC:-0} != 1 ]] && rm -f '$policy'; true" EXIT
  apt_quiet "$logf" update -qq
  local args=(install -y -qq --no-install-recommends)
  local pkgs=("${missing[@]}")
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] &&
    apt-cache madison qemu-utils 2>/dev/null | grep -q ' bookworm[/ -]'; then
    # qemu-system-x86 from bookworm wants bookworm's qemu-utils, older than some images ship
    pkgs+=(qemu-utils/bookworm)
    args+=(--allow-downgrades)
  fi
  apt_quiet "$logf" "${args[@]}" "${pkgs[@]}"
  for p in "${missing[@]}"; do
    deps_installed "$p" || deps_fail "package $p is still not installed after apt-get install"
  done
}

main "$@"
