#!/usr/bin/env bash
# Observation overhead (issue 4): agent CPU and BPF run time per program under a sustained rate of
# new connections through an enrolled pod pair, every observer on. Root only. Not a test.
#   bench/overhead.sh [--seconds S] [--threads N]      MESHLANE_BIN=/path/to/meshlane to pick a build
# Writes bench/results/<date>-<time>-overhead.md/.json. kernel.bpf_stats_enabled is set only for
# the load window and restored afterwards.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
[[ $EUID -eq 0 ]] || { echo "bench/overhead.sh: run as root" >&2; exit 1; }
for tool in haproxy bpftool ip iperf3 sockperf; do
  command -v "$tool" >/dev/null || { echo "bench/overhead.sh: missing $tool" >&2; exit 1; }
done

build="$repo/build-bench"
crr="$build/bench/meshlane_crr"
if [[ ! -x "$crr" || "$repo/bench/crr.cpp" -nt "$crr" ]]; then
  echo "bench/overhead.sh: building meshlane_crr into $build" >&2
  cmake -S "$repo" -B "$build" -DMESHLANE_BUILD_TESTS=OFF >/dev/null
  cmake --build "$build" -j2 --target meshlane_crr >/dev/null
fi

run_id="$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
driver=(/usr/bin/python3 "$here/overhead.py" --run-id "$run_id" --crr-bin "$crr")
stats_before="$(cat /proc/sys/kernel/bpf_stats_enabled)"
cleanup() {
  "${driver[@]}" --cleanup-only >/dev/null 2>&1 || true
  echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
timeout --kill-after=10 600 "${driver[@]}" "$@"
