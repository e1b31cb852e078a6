#!/usr/bin/env bash
# ctest deploy.systemd_security: `systemd-analyze security` (offline, systemd 252's
# --offline=yes) on deploy/systemd/meshlane.service must rate it at most MAX (default 4.5; 10 is
# fully exposed). The same check on the unit stripped of its hardening must rate above MAX, so a
# pass means the directives are what gets the score, not a lenient analyzer.
# Usage: security-score.sh <source dir> <meshlane binary> [MAX]
set -euo pipefail
src=${1:?source dir}
binary=${2:?meshlane binary}
max=${3:-4.5}
unit=$src/deploy/systemd/meshlane.service
fail() { echo "deploy.systemd_security: $*" >&2; exit 1; }
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (apt-get install systemd)"
work=$(mktemp -d /tmp/meshlane-security-XXXXXX)
trap 'rm -rf "$work"' EXIT

score() {  # unit file -> the overall exposure number
  local out
  out=$(systemd-analyze security --offline=yes --no-pager "$1" 2>&1) || true
  sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1
}
sed "s|^ExecStart=/usr/local/sbin/meshlane |ExecStart=$binary |" "$unit" > "$work/meshlane.service"
hardened=$(score "$work/meshlane.service")
[[ -n $hardened ]] || fail "no score from systemd-analyze security for $unit"
mkdir "$work/plain"
grep -E '^(\[|Description=|Type=|ExecStart=|RuntimeDirectory=)' "$work/meshlane.service" \
  > "$work/plain/meshlane.service"
plain=$(score "$work/plain/meshlane.service")
awk -v p="$plain" -v m="$max" 'BEGIN { exit !(p > m) }' ||
  fail "the unhardened unit scores $plain <= $max: the check is not effective"
awk -v h="$hardened" -v m="$max" 'BEGIN { exit !(h <= m) }' ||
  fail "meshlane.service scores $hardened, more than $max (systemd-analyze security --offline=yes $unit)"
echo "deploy.systemd_security: meshlane.service exposure $hardened <= $max (unhardened: $plain)"
