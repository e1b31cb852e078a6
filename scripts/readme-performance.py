#!/usr/bin/env python3
"""Writes README.md's Performance section from the newest full bench run in bench/results.

usage: readme-performance.py [--check]

The section between the `bench:begin` and `bench:end` markers is generated, never typed: the
newest `bench/results/<timestamp>-<rev>.json` by name that is neither a --quick run nor an
overhead or prototype run. --check exits 1 when README.md differs from what would be written
(ctest style.readme_performance), so the README always quotes the latest results.
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bench:begin (scripts/readme-performance.py) -->", "<!-- bench:end -->"
LABELS = {"meshlane": "meshlane", "meshlane_default": "meshlane (default)",
          "meshlane_noobs": "observers off", "meshlane_fast": "fast path app-proxy",
          "meshlane_fast_pp": "fast path app-proxy,proxy-proxy"}
# (row label, workload key, metric key, lower is better)
ROWS = [("bulk throughput (iperf3, 1 stream)", "iperf", "gbit_s", False),
        ("CPU per GB moved", "iperf", "cpu_ms_per_gb", True),
        ("req/resp 14 B RTT p50", "rr_14", "p50_us", True),
        ("req/resp 14 B RTT p99", "rr_14", "p99_us", True),
        ("req/resp 1 KiB RTT p50", "rr_1024", "p50_us", True),
        ("req/resp 1 KiB RTT p99", "rr_1024", "p99_us", True),
        ("req/resp 64 KiB RTT p50", "rr_65506", "p50_us", True),
        ("req/resp 64 KiB RTT p99", "rr_65506", "p99_us", True),
        ("new connections/s", "crr", "conn_per_s", False),
        ("CPU per connection", "crr", "cpu_us_per_txn", True)]


def newest_run():
    runs = [p for p in glob.glob(os.path.join(ROOT, "bench", "results", "*.json"))
            if not re.search(r"-(quick|overhead|prototypes)\.json$", p)]
    return max(runs, key=os.path.basename) if runs else None


def ratio(medians, config, workload, metric):
    try:
        value = medians[config][workload][metric]
        base = medians["iptables"][workload][metric]
    except (KeyError, TypeError):
        return None
    if value is None or not base:
        return None
    return value / base


def render(path):
    run = json.load(open(path))
    medians = run["medians"]
    configs = [c for c in run["configs"] if c in LABELS]
    rel = os.path.relpath(path, ROOT)
    md = os.path.splitext(rel)[0] + ".md"
    lines = [BEGIN,
             f"Latest full run: [{md}]({md}) — {run['title']}.",
             "Ratios to Istio's iptables capture with the same HAProxy sidecars, medians of "
             f"{run['rounds']} rounds measured side by side in one run (lower is better for "
             "latency and CPU, higher for throughput and rate; **bold** = better than iptables):",
             "",
             "| metric | " + " | ".join(LABELS[c] for c in configs) + " |",
             "|---|" + "---|" * len(configs)]
    for label, workload, metric, lower_better in ROWS:
        cells = []
        for c in configs:
            r = ratio(medians, c, workload, metric)
            if r is None:
                cells.append("n/a")
                continue
            better = r < 0.995 if lower_better else r > 1.005  # as printed: 1.00x is a tie
            cells.append(f"**{r:.2f}x**" if better else f"{r:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Where these numbers come from, what limits them and where meshlane loses: "
              "[bench/README.md](bench/README.md) and [docs/fastpath-measurements.md](docs/fastpath-measurements.md).",
              END]
    return "\n".join(lines)


def main():
    readme_path = os.path.join(ROOT, "README.md")
    readme = open(readme_path).read()
    path = newest_run()
    if path is None:
        sys.exit("readme-performance: no bench run in bench/results")
    if BEGIN not in readme or END not in readme:
        sys.exit(f"readme-performance: README.md has no '{BEGIN}' ... '{END}' block")
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    updated = readme[:start] + render(path) + readme[end:]
    if "--check" in sys.argv[1:]:
        if updated != readme:
            print("README.md's Performance section does not quote the newest bench run "
                  f"({os.path.relpath(path, ROOT)}): run scripts/readme-performance.py")
            return 1
        print(f"README.md quotes {os.path.relpath(path, ROOT)}")
        return 0
    open(readme_path, "w").write(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
