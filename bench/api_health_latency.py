#!/usr/bin/python3
"""REST /v1/health latency on the unix socket while four verifies and a diagnose run (issue 17:
blocking work never on the API's io thread). Two pods with HAProxy sidecars, an agent, both pods
enrolled; first health alone, then health every 20 ms while four threads loop
`POST /v1/workloads/{a,b}/verify` and one loops `GET .../diagnose`.

    bench/api_health_latency.py [--seconds S]

Root; uses the integration harness (tests/integration/harness) for the netns, cgroups, sidecars
and agent, all removed on exit. MESHLANE_BIN picks the agent binary. Prints p50/p99/max of each
phase and how many verifies and diagnoses completed; not a test (docs/api.md quotes a run)."""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from harness import cleanup  # noqa: E402
from harness.meshlane import Agent, meshlane_bin  # noqa: E402
from harness.topology import APP_PORT, Topology  # noqa: E402


def request(agent, method, path, timeout=60.0):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(agent.api_socket)
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, time.monotonic() - started


def health_samples(agent, seconds, interval=0.02):
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        status, elapsed = request(agent, "GET", "/v1/health", timeout=10)
        if status != 200:
            raise RuntimeError(f"/v1/health answered {status}")
        samples.append(elapsed * 1000)
        time.sleep(interval)
    return samples


def describe(name, samples):
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{name:28} n={len(samples):4}  p50 {statistics.median(samples):6.2f} ms  "
          f"p99 {p99:6.2f} ms  max {samples[-1]:6.2f} ms")
    return samples[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    topo = Topology()
    try:
        topo.create()
        agent = Agent(meshlane_bin()).start()
        for pod in topo.pods:
            agent.enroll_ok(pod)
            pod.start_sidecar(kind="haproxy", inbound_bind="dual")
        topo.b.start_app(ports=(APP_PORT,))
        rev = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        print(f"meshlane {rev}, load average {os.getloadavg()[0]:.1f}, {args.seconds:.0f} s "
              "per phase")
        describe("health alone", health_samples(agent, args.seconds / 2))

        stop = threading.Event()
        done = {"verify": [], "diagnose": []}

        def loop(kind, method, path):
            while not stop.is_set():
                status, elapsed = request(agent, method, path)
                done[kind].append((status, elapsed))

        workers = [threading.Thread(target=loop, args=("verify", "POST",
                                                       f"/v1/workloads/{pod.name}/verify"))
                   for pod in (topo.a, topo.b, topo.a, topo.b)]
        workers.append(threading.Thread(target=loop, args=(
            "diagnose", "GET", f"/v1/workloads/{topo.b.name}/diagnose")))
        for w in workers:
            w.start()
        time.sleep(0.5)
        try:
            worst = describe("health, 4 verify + diagnose",
                             health_samples(agent, args.seconds))
        finally:
            stop.set()
            for w in workers:
                w.join()
        for kind, results in done.items():
            statuses = sorted({status for status, _ in results})
            mean = statistics.mean(e for _, e in results) if results else 0
            print(f"{kind:28} {len(results)} completed, statuses {statuses}, "
                  f"mean {mean:.2f} s")
        print(f"max health latency under load {worst:.1f} ms: "
              f"{'within' if worst < 50 else 'OVER'} the 50 ms goal")
        agent.destroy()
    finally:
        topo.destroy()
        cleanup.REGISTRY.run_all()


if __name__ == "__main__":
    main()
