#!/usr/bin/env bash
# One command for the meshlane benchmark: direct vs Istio iptables vs meshlane (vs fast path),
# same HAProxy sidecars, same tools, in namespaces created for this run and removed afterwards.
#   bench/run.sh [--quick] [--rounds N] [--seconds S] [--configs direct,iptables,meshlane,...]
#                [--paced-rates 1,1.25,...] [--one-pod direct,iptables,meshlane,meshlane_fast]
#                [--haproxy single|threaded-log]   (threaded-log: nbthread = cores, tcplog per connection)
# Root only. Writes bench/results/<date>-<rev>.md/.json. Not a test: never gate CI on it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
[[ $EUID -eq 0 ]] || { echo "bench/run.sh: run as root" >&2; exit 1; }
for tool in iperf3 sockperf haproxy iptables-restore ip; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: missing $tool (apt-get install -y sockperf iperf3 haproxy iptables iproute2)" >&2; exit 1; }
done

build="$repo/build-bench"
crr="$build/bench/meshlane_crr"
if [[ ! -x "$crr" || "$repo/bench/crr.cpp" -nt "$crr" ]]; then
  echo "bench/run.sh: building meshlane_crr into $build" >&2
  cmake -S "$repo" -B "$build" -DMESHLANE_BUILD_TESTS=OFF >/dev/null
  cmake --build "$build" -j2 --target meshlane_crr >/dev/null
fi

run_id="$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
driver=(/usr/bin/python3 "$here/meshlane_bench.py" --run-id "$run_id" --crr-bin "$crr")
# The driver cleans up after itself; this catches what a SIGKILLed driver left (idempotent).
cleanup() { "${driver[@]}" --cleanup-only >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# timeout: the run stops by itself even if a tool hangs (the default run is ~11 minutes).
timeout --kill-after=10 1200 "${driver[@]}" "$@"
