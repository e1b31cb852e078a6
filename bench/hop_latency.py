#!/usr/bin/python3
"""One accelerated hop, nothing else: sockperf ping-pong between an app and a sockperf server
that sits where the proxy would (127.0.0.1:15001, uid 1337, the pod's sidecar cgroup), over
loopback TCP (meshlane, no fast path) and over the sk_msg redirect (meshlane --fast-path), rounds
interleaved so the machine's load hits both alike. No HAProxy: this isolates the per-message
cost of the redirect against loopback TCP, which the full bench (meshlane_bench.py) cannot
separate from the proxies' own scheduling.

    bench/hop_latency.py [--rounds N] [--seconds S] [--sizes 14,1024,65506]

Root; uses meshlane_bench.py's setup and cleanup (netns, cgroups, agent, pins named after a run
id, all removed on exit). Prints medians and the fast/TCP ratio; not a test."""
import argparse
import os
import signal
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshlane_bench as mb  # noqa: E402

PORT = mb.OUTBOUND_PORT


def ping_pong(pair, size, seconds):
    p = pair.client(["sockperf", "pp", "--tcp", "-i", "127.0.0.1", "-p", str(PORT), "-m",
                     str(size), "-t", str(max(1, int(seconds))), "--full-rtt"],
                    timeout=seconds + 20)
    text = p.stdout + p.stderr
    pct = {float(k): float(v) for k, v in mb.SOCKPERF_PCT.findall(text)}
    if p.returncode != 0 or 50.0 not in pct:
        raise mb.MetricError(f"sockperf -m {size}: exit {p.returncode} {text[-400:]}")
    return pct[50.0], pct[99.0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default="14,1024,65506")
    ap.add_argument("--meshlane-bin", default=os.environ.get("MESHLANE_BIN",
                                                             f"{mb.REPO}/build/meshlane"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("hop_latency: needs root")
    sizes = [int(s) for s in args.sizes.split(",")]
    run_id = mb.secrets.token_hex(3)
    bench = mb.Run(run_id, args.meshlane_bin, crr_bin=None)
    configs = ("meshlane", "meshlane_fast")
    samples = {c: {s: [] for s in sizes} for c in configs}
    loadavg = open("/proc/loadavg").read().split()[:3]

    def on_signal(signum, _frame):
        raise mb.Interrupted(signal.Signals(signum).name)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        bench.create()
        bench.start_agent()
        pairs = {c: mb.Pair(bench, c, i + 1) for i, c in enumerate(configs)}
        for pair in pairs.values():
            pair.create()
            pair.enroll()
            server = bench.spawn(["sockperf", "sr", "--tcp", "-i", "127.0.0.1", "-p", str(PORT)],
                                 f"sockperf-{pair.config}", netns=pair.ns["a"],
                                 cgroup=pair.cgroup("a", "sidecar"), uid=mb.PROXY_UID,
                                 gid=mb.PROXY_GID)
            pair.wait_listening("a", (PORT,), server)
            ping_pong(pair, 14, 1)  # warm-up
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for size in sizes:
                for c in order:
                    samples[c][size].append(ping_pong(pairs[c], size, args.seconds))
            mb.log(f"round {r + 1}/{args.rounds}")
        counters = {c: pairs[c].evidence()["workloads"]["a"].get("fast_path", {})
                    for c in configs}
    finally:
        mb.cleanup(run_id, bench)
    print(f"one hop, app <-> 127.0.0.1:{PORT} (sockperf server in the sidecar's place), "
          f"{args.rounds} rounds x {args.seconds:g} s, load average {' '.join(loadavg)} before, "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])} after, kernel "
          f"{os.uname().release}, rev {mb.git_rev()[0]}")
    print(f"{'size':>6}  {'TCP p50':>8}  {'fast p50':>8}  {'ratio':>6}  {'TCP p99':>8}  "
          f"{'fast p99':>8}  {'ratio':>6}   (µs, median over rounds)")
    for size in sizes:
        tcp50 = statistics.median(x[0] for x in samples["meshlane"][size])
        tcp99 = statistics.median(x[1] for x in samples["meshlane"][size])
        f50 = statistics.median(x[0] for x in samples["meshlane_fast"][size])
        f99 = statistics.median(x[1] for x in samples["meshlane_fast"][size])
        print(f"{size:>6}  {tcp50:>8.1f}  {f50:>8.1f}  {f50 / tcp50:>5.2f}x  {tcp99:>8.1f}  "
              f"{f99:>8.1f}  {f99 / tcp99:>5.2f}x")
    fast = counters["meshlane_fast"].get("counters", {})
    print(f"fast path evidence: redirected_msgs={fast.get('redirected_msgs')} "
          f"conns_accelerated={fast.get('conns_accelerated')}; no-fast-path pod: "
          f"redirected_msgs={counters['meshlane'].get('counters', {}).get('redirected_msgs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
