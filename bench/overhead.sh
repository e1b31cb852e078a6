#!/usr/bin/env bash
# Observation overhead (issue 4): agent CPU and BPF run time per program under a sustained rate of
# new connections from enrolled pods (10k/s through a trivial stand-in proxy, then through HAProxy),
# every observer on. Root only. Not a test. One command, about a minute, bounded to 3 minutes,
# removes everything it created (netns, cgroups, pins, processes) even when interrupted.
#   bench/overhead.sh [--seconds S] [--rate R] [--threads N] [--skip-crr]
#   MESHLANE_BIN=/path/to/meshlane picks the agent; MESHLANE_BENCH_BUILD=<build dir> the bench
#   tools' build (default build-bench, configured and built on demand).
# Writes bench/results/<date>-<time>-overhead.md/.json. kernel.bpf_stats_enabled is set only for
# the load window and restored afterwards.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
[[ $EUID -eq 0 ]] || { echo "bench/overhead.sh: run as root" >&2; exit 1; }
for tool in haproxy bpftool ip iperf3 sockperf; do
  command -v "$tool" >/dev/null || { echo "bench/overhead.sh: missing $tool" >&2; exit 1; }
done

build="${MESHLANE_BENCH_BUILD:-$repo/build-bench}"
crr="$build/bench/meshlane_crr"
connrate="$build/bench/meshlane_connrate"
if [[ ! -x "$crr" || "$repo/bench/crr.cpp" -nt "$crr" || ! -x "$connrate" ||
      "$repo/bench/connrate.cpp" -nt "$connrate" ]]; then
  echo "bench/overhead.sh: building meshlane_crr and meshlane_connrate into $build" >&2
  [[ -f "$build/CMakeCache.txt" ]] || cmake -S "$repo" -B "$build" -DMESHLANE_BUILD_TESTS=OFF >/dev/null
  cmake --build "$build" -j2 --target meshlane_crr meshlane_connrate >/dev/null
fi

run_id="$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
driver=(/usr/bin/python3 "$here/overhead.py" --run-id "$run_id" --crr-bin "$crr"
        --connrate-bin "$connrate")
stats_before="$(cat /proc/sys/kernel/bpf_stats_enabled)"
cleanup() {
  "${driver[@]}" --cleanup-only >/dev/null 2>&1 || true
  echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
timeout --kill-after=10 180 "${driver[@]}" "$@"
