#!/usr/bin/python3
"""meshlane observation overhead: agent CPU and BPF run time per program at a sustained rate of
new connections from enrolled pods, every observer on.

Reuses the benchmark's topology (bench/meshlane_bench.py): pair 1 (pods a -> b, HAProxy sidecars
as uid 1337, meshlane_crr server in b) and pair 2 (another a -> b) whose "sidecar" is
meshlane_connrate's trivial accept/close server on the outbound port, so one client can reach
10k new connections/s on 2 cores while every interception and observation hook still runs.
  1. idle window: agent CPU with no load (the reader's poll and map snapshots alone);
  2. connrate window: meshlane_connrate client paced to --rate (default 10000/s) in pair 2's a;
  3. haproxy_crr window: meshlane_crr through both HAProxy sidecars (skip: --skip-crr).
Per load window: agent CPU from /proc/PID/stat (utime+stime), machine busy from /proc/stat (the
box is shared: recorded, not subtracted), per BPF program the run_time_ns / run_cnt deltas from
`bpftool prog show --json` with kernel.bpf_stats_enabled set only during the window, and the
observer's delivered-event counters. Programs are the agent's own (fds it holds); tracepoint
programs run for every socket on the machine, so their counts include other traffic on the box.
Writes bench/results/<date>-overhead.md (and .json). Not a test: nothing depends on these numbers.
"""
import argparse
import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshlane_bench as mb  # noqa: E402  (the shared topology; not modified here)

BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def thread_cpu(pid):
    """{tid: (comm, cpu seconds)} of the process's threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            out[int(tid)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICKS)
        except (OSError, IndexError, ValueError):
            continue
    return out


def busiest_threads(before, after, seconds, n=4):
    rows = [(after[t][0], t, 100 * (after[t][1] - before.get(t, (None, 0))[1]) / seconds)
            for t in after]
    return [{"comm": c, "tid": t, "cpu_percent": round(p, 2)}
            for c, t, p in sorted(rows, key=lambda r: -r[2])[:n]]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def held_program_ids(pid):
    """Program ids behind the process's BPF fds (prog and link fds name them in fdinfo)."""
    ids = set()
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def agent_programs(agent_pid):
    """{prog id: {name, type, run_time_ns, run_cnt}} of programs the agent holds."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    held = held_program_ids(agent_pid)
    progs = {}
    for p in json.loads(out):
        if p["id"] in held or any(o.get("pid") == agent_pid for o in p.get("pids", [])):
            progs[p["id"]] = {"name": p.get("name", "?"), "type": p.get("type", "?"),
                              "run_time_ns": p.get("run_time_ns", 0),
                              "run_cnt": p.get("run_cnt", 0)}
    return progs


def program_deltas(before, after, seconds):
    rows = {}
    for pid, a in after.items():
        b = before.get(pid, {"run_time_ns": 0, "run_cnt": 0})
        row = rows.setdefault(a["name"], {"type": a["type"], "instances": 0, "run_time_ns": 0,
                                          "run_cnt": 0})
        row["instances"] += 1
        row["run_time_ns"] += a["run_time_ns"] - b["run_time_ns"]
        row["run_cnt"] += a["run_cnt"] - b["run_cnt"]
    for row in rows.values():
        row["ns_per_run"] = row["run_time_ns"] / row["run_cnt"] if row["run_cnt"] else 0
        row["percent_of_core"] = 100.0 * row["run_time_ns"] / 1e9 / seconds
    return rows


def observer_state(bench):
    p = bench.cli("drops", "--json", check=False)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        return {}
    state = data.get("observer", {})
    state["drops_by_reason"] = {w["name"]: {r["reason"]: r["count"] for r in w["by_reason"]}
                                for w in data.get("workloads", [])}
    return state


def render(result):
    lines = [f"# meshlane observation overhead — {result['started']}", "",
             f"git {result['git']}, kernel {result['kernel']}, {os.cpu_count()} CPUs; "
             f"`bench/overhead.sh --seconds {result['seconds']:g} --rate {result['rate']:g}`; "
             f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}",
             "", "Windows (both pairs enrolled, connect, drop and TLS observation on):", "",
             "- **connrate**: `meshlane_connrate client` in pair 2's pod a (app cgroup) connects to "
             "10.231.2.2:8080; the redirect (connect4) sends it to `meshlane_connrate server` "
             "standing in for the sidecar on 127.0.0.1:15001 (uid 1337, sidecar cgroup), which "
             "calls getsockopt(SO_ORIGINAL_DST), reads 64 B, writes 64 B and closes. Hooks that "
             "run per connection: redirect_connect4, redirect_sockops (both ends), "
             "redirect_getsockopt, observe_sock_set_state, observe_tls_egress/ingress (every "
             "loopback segment of the pod cgroup) and observe_kfree_skb for any drop; no HAProxy.",
             "- **haproxy_crr**: meshlane_crr through both HAProxy sidecars (pod A -> pod B), "
             "the realistic path, at whatever rate the proxies reach on this machine.", "",
             "| window | seconds | new connections/s | agent CPU (% of one core) | "
             "agent CPU µs/connection | machine busy (% of all CPUs) | agent RSS KiB | "
             "events delivered (connect/drop) |", "|---|---|---|---|---|---|---|---|"]
    for w in result["windows"]:
        rate = w.get("conn_per_s", 0)
        per_conn = (f"{w['agent_cpu_percent'] * 1e4 / rate:.2f}" if rate else "")
        ev = w.get("events", {})
        lines.append(f"| {w['name']} | {w['seconds']:.1f} | {rate:.0f} | "
                     f"{w['agent_cpu_percent']:.2f} | {per_conn} | "
                     f"{w.get('machine_busy_percent', 0):.0f} | {w['agent_rss_kib']} | "
                     f"{ev.get('connect_events', 0)}/{ev.get('drop_events', 0)} |")
    for w in result["windows"]:
        if "bpf" not in w:
            continue
        seconds = w["seconds"]
        lines += ["", f"BPF run time, window **{w['name']}** (kernel.bpf_stats_enabled=1; "
                  "programs held by the agent; tracepoints count every socket on the box):", "",
                  "| program | type | instances | runs | runs/s | ns/run | % of one core |",
                  "|---|---|---|---|---|---|---|"]
        total = 0.0
        for name, r in sorted(w["bpf"].items(), key=lambda kv: -kv[1]["run_time_ns"]):
            if not r["run_cnt"]:
                continue
            total += r["percent_of_core"]
            lines.append(f"| {name} | {r['type']} | {r['instances']} | {r['run_cnt']} | "
                         f"{r['run_cnt'] / seconds:.0f} | {r['ns_per_run']:.0f} | "
                         f"{r['percent_of_core']:.3f} |")
        lines += [f"| **all** | | | | | | **{total:.3f}** |"]
    lines.append("")
    for w in result["windows"]:
        if w["name"] == "idle":
            continue
        goal = "met" if w["agent_cpu_percent"] <= 1.0 else "NOT met"
        lines.append(f"- {w['name']}: agent {w['agent_cpu_percent']:.2f}% of one core at "
                     f"{w.get('conn_per_s', 0):.0f} new connections/s (goal ≤ 1% at 10k/s: "
                     f"{goal}{'' if w.get('conn_per_s', 0) >= 9500 else ', rate below 10k/s'}); "
                     f"client errors {w.get('errors', 0)}"
                     f"{' (' + w['first_error'] + ')' if w.get('first_error') else ''}.")
    lines += ["", "Busiest agent threads per window (% of one core; the observer's reader is "
              "`ml-observe`): " + "; ".join(
                  f"{w['name']}: " + ", ".join(f"{t['comm']}/{t['tid']} {t['cpu_percent']}"
                                               for t in w.get("threads", []))
                  for w in result["windows"])]
    lines += ["", f"Observer after the run: {json.dumps(result['observer'], sort_keys=True)}", ""]
    return "\n".join(lines)


def observer_counts(bench):
    state = observer_state(bench)
    return {k: state.get(k, 0) for k in ("connect_events", "drop_events", "tls_events",
                                         "lost_events_total")}


def load_window(name, bench, run_client, seconds_hint):
    """Agent CPU, machine CPU, BPF run time and observer event counts around run_client()."""
    agent = bench.agent.pid
    with open(BPF_STATS) as f:
        stats_before = f.read().strip()
    with open(BPF_STATS, "w") as f:
        f.write("1")
    try:
        events0 = observer_counts(bench)
        before = agent_programs(agent)
        threads0 = thread_cpu(agent)
        cpu0, busy0, t0 = cpu_seconds(agent), mb.machine_busy_seconds(), time.monotonic()
        out = run_client()
        cpu1, busy1, t1 = cpu_seconds(agent), mb.machine_busy_seconds(), time.monotonic()
        threads1 = thread_cpu(agent)
        after = agent_programs(agent)
    finally:
        with open(BPF_STATS, "w") as f:
            f.write(stats_before)
    time.sleep(0.6)  # two snapshot intervals: the views catch up with the kernel
    events1 = observer_counts(bench)
    seconds = t1 - t0
    return {"name": name, "seconds": seconds,
            "agent_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
            "machine_busy_percent": 100 * (busy1 - busy0) / seconds / os.cpu_count(),
            "agent_rss_kib": rss_kib(agent), "bpf": program_deltas(before, after, seconds),
            "threads": busiest_threads(threads0, threads1, seconds),
            "events": {k: events1[k] - events0[k] for k in events0}, **out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="each load window (default 10)")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=10000,
                    help="connrate target new connections/s (default 10000; 0 = unpaced)")
    ap.add_argument("--threads", type=int, default=4, help="client threads per window")
    ap.add_argument("--skip-crr", action="store_true", help="no HAProxy window")
    ap.add_argument("--meshlane-bin", default=os.environ.get("MESHLANE_BIN",
                                                             f"{mb.REPO}/build/meshlane"))
    ap.add_argument("--crr-bin", default=f"{mb.REPO}/build-bench/bench/meshlane_crr")
    ap.add_argument("--connrate-bin", default=f"{mb.REPO}/build-bench/bench/meshlane_connrate")
    ap.add_argument("--results-dir", default=os.path.join(mb.BENCH_DIR, "results"))
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--cleanup-only", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("overhead: needs root (netns, cgroups, BPF, sysctl)")
    run_id = args.run_id or secrets.token_hex(3)
    if args.cleanup_only:
        mb.cleanup(run_id)
        return 0
    for binary in (args.meshlane_bin, args.crr_bin, args.connrate_bin):
        if not os.access(binary, os.X_OK):
            sys.exit(f"overhead: {binary} not found (build it first; bench/overhead.sh does)")

    def on_signal(signum, _frame):
        raise mb.Interrupted(signal.Signals(signum).name)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    bench = mb.Run(run_id, args.meshlane_bin, args.crr_bin)
    rev, dirty = mb.git_rev()
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "git": rev + ("-dirty" if dirty else ""), "kernel": os.uname().release,
              "seconds": args.seconds, "rate": args.rate, "threads": args.threads,
              "loadavg_before": open("/proc/loadavg").read().split()[0], "windows": []}
    try:
        bench.create()
        bench.start_agent()
        # Pair 1 (A -> B): HAProxy sidecars, meshlane_crr server in B.
        pair = mb.Pair(bench, "meshlane", 1)
        pair.create()
        pair.enroll()
        pair.start_sidecars()
        pair.start_servers()
        smoke = mb.measure_crr(pair, 0.5, 1)
        if smoke["errors"] or not smoke["conn_per_s"]:
            raise RuntimeError(f"smoke connection failed: {smoke}")
        # Pair 2: a trivial accept/close "proxy" on C's outbound port instead of HAProxy.
        fast = mb.Pair(bench, "connrate", 2)
        fast.create()
        fast.enroll()
        proxy = bench.spawn([args.connrate_bin, "server", "--listen",
                             f"127.0.0.1:{mb.OUTBOUND_PORT}", "--threads", "2", "--original-dst"],
                            "connrate-proxy", netns=fast.ns["a"],
                            cgroup=fast.cgroup("a", "sidecar"), uid=mb.PROXY_UID,
                            gid=mb.PROXY_GID)
        fast.wait_listening("a", (mb.OUTBOUND_PORT,), proxy)
        # ... and on its inbound port, as a sidecar does: without an inbound listener the agent's
        # reconcile looks for one every 2 s by reading /proc/PID/net/tcp, whose size grows with
        # the TIME_WAIT sockets of 10k connections/s (measured: ~10% of a core).
        inbound = bench.spawn([args.connrate_bin, "server", "--listen",
                               f"0.0.0.0:{mb.INBOUND_PORT}", "--threads", "1"],
                              "connrate-inbound", netns=fast.ns["a"],
                              cgroup=fast.cgroup("a", "sidecar"), uid=mb.PROXY_UID,
                              gid=mb.PROXY_GID)
        fast.wait_listening("a", (mb.INBOUND_PORT,), inbound)
        target = f"{fast.ip['b']}:{mb.CRR_PORT}"  # nothing listens there: only the redirect
        probe = fast.client([args.connrate_bin, "client", "--connect", target, "--threads", "1",
                             "--seconds", "0.5"], timeout=30)
        probe_out = json.loads(probe.stdout)
        if probe_out["errors"] or not probe_out["count"]:
            raise RuntimeError(f"connrate smoke failed (is the redirect on?): {probe_out}")

        agent = bench.agent.pid
        time.sleep(1.0)
        threads0 = thread_cpu(agent)
        cpu0, busy0, t0 = cpu_seconds(agent), mb.machine_busy_seconds(), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1, busy1, t1 = cpu_seconds(agent), mb.machine_busy_seconds(), time.monotonic()
        result["windows"].append({"name": "idle", "seconds": t1 - t0,
                                  "threads": busiest_threads(threads0, thread_cpu(agent), t1 - t0),
                                  "agent_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
                                  "machine_busy_percent":
                                      100 * (busy1 - busy0) / (t1 - t0) / os.cpu_count(),
                                  "agent_rss_kib": rss_kib(agent)})

        def connrate():
            p = fast.client([args.connrate_bin, "client", "--connect", target, "--threads",
                             str(args.threads), "--seconds", str(args.seconds), "--rate",
                             str(args.rate), "--timeout-ms", "2000"], timeout=args.seconds + 60)
            out = json.loads(p.stdout)
            return {"conn_per_s": out["rate"], "connections": out["count"],
                    "errors": out["errors"], "first_error": out["first_error"]}

        def crr():
            p = pair.client([args.crr_bin, "client", "--connect", f"{pair.ip['b']}:{mb.CRR_PORT}",
                             "--threads", str(args.threads), "--seconds", str(args.seconds),
                             "--request", "64", "--response", "64", "--timeout-ms", "2000"],
                            timeout=args.seconds + 60)
            out = json.loads(p.stdout)
            return {"conn_per_s": out["rate"], "connections": out["transactions"],
                    "errors": out["errors"]}

        result["windows"].append(load_window("connrate", bench, connrate, args.seconds))
        if not args.skip_crr:
            result["windows"].append(load_window("haproxy_crr", bench, crr, args.seconds))
        result["observer"] = {k: v for k, v in observer_state(bench).items()
                              if k in ("connect_events", "drop_events", "lost_events_total",
                                       "memory_bytes", "memory_limit_bytes", "bpf_map_bytes",
                                       "drops_by_reason", "drop_count_only_reasons",
                                       "tls_destinations_limit", "tls_memory_limit_bytes")}
        result["loadavg_after"] = open("/proc/loadavg").read().split()[0]
    finally:
        mb.cleanup(run_id, bench)
    os.makedirs(args.results_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(args.results_dir, f"{stamp}-overhead")
    text = render(result)
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(text)
    print(f"wrote {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
