"""Issue 19's faults from the field, each injected for real in the namespace harness and named
by `meshlane diagnose`, plus the healthy pair that must stay silent (0 false alarms)."""
import json
import os
import time

from harness import proc, util
from harness.topology import APP_GID, APP_PORT, APP_UID

from test_diagnose import codes, diagnose, finding

SLOW_PORT = 9099

# A server that listens with backlog 1 and never calls accept(): its accept queue fills after
# two connections, and the kernel drops further SYNs (TcpExt ListenOverflows).
NEVER_ACCEPTS = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
time.sleep(300)
"""

# `count` non-blocking connects held open for `hold` seconds, then closed.
MANY_CONNECTS = """
import socket, sys, time
socks = []
for _ in range(int(sys.argv[3])):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except BlockingIOError:
        pass
    socks.append(s)
time.sleep(float(sys.argv[4]))
"""


def test_accept_queue_overflow_at_the_app_listener(meshed, agent):
    """B's app listens with backlog 1 and never accepts; connects from inside B fill its accept
    queue and the kernel drops the rest: accept_queue_overflow names that listener, critical
    while its queue is full."""
    b = meshed.b
    err = open(os.path.join(b.workdir, "never-accepts.err"), "ab")
    try:
        server = proc.spawn([util.PYTHON, "-c", NEVER_ACCEPTS, str(SLOW_PORT)],
                            netns_path=b.netns_path, cgroup_dir=b.cgroup("app"), uid=APP_UID,
                            gid=APP_GID, groups=[], stdout=err, stderr=err,
                            description="never-accepting server")
    finally:
        err.close()
    util.wait_until(lambda: b.listening((SLOW_PORT,), pid=server.pid), timeout=5,
                    message="never-accepting server listening")
    assert "accept_queue_overflow" not in codes(diagnose(agent, b))
    result = b.run([util.PYTHON, "-c", MANY_CONNECTS, "127.0.0.1", str(SLOW_PORT), "6", "1.5"],
                   timeout=20)
    assert result.returncode == 0, result.stderr
    report = diagnose(agent, b)
    f = finding(report, "accept_queue_overflow")
    print(f"\n$ meshlane diagnose {b.name}\n{agent.cli('diagnose', b.name).stdout}")
    assert f["data"]["listen_overflows"] >= 1, f
    assert f["severity"] == "critical" and f["data"]["full_listeners"] == 1, f
    assert "the app's listener" in f["cause"], f["cause"]
    evidence = "\n".join(f["evidence"])
    assert "accept queue FULL now: 2 of 1 waiting" in evidence, evidence  # backlog + 1 fit
    assert f"0.0.0.0:{SLOW_PORT}" in evidence, evidence
    assert f"pid {server.pid} " in evidence, evidence
    proc.stop(server)
    # The queue is gone: the counters stay (no time in them), the finding is no longer critical.
    f = finding(diagnose(agent, b), "accept_queue_overflow")
    assert f["severity"] == "warning" and "No accept queue is full now" in f["cause"], f


# `count` connects held open for `hold` seconds, each bound to its own explicit source port
# (outside the pod's narrowed ephemeral range), so only the proxy's upstream side runs out.
BOUND_CONNECTS = """
import socket, sys, time
socks = []
for i in range(int(sys.argv[3])):
    s = socket.socket()
    s.bind(("0.0.0.0", 50001 + i))
    s.settimeout(3)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass
    socks.append(s)
time.sleep(float(sys.argv[4]))
"""


def test_ephemeral_port_exhaustion_on_the_proxy_upstream(meshed, agent):
    """A's netns gets a 4-port ip_local_port_range; A's app holds 8 connections to B at once
    (each from its own explicit port): A's proxy needs 8 upstream ports to B and gets 4, the
    rest fail with EADDRNOTAVAIL. ephemeral_port_exhaustion names the side, the range and the
    TIME_WAIT count; resolved once connects succeed again."""
    a, b = meshed.a, meshed.b
    assert a.client(b.ip4, APP_PORT)["ok"]
    a.exec("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40003")
    result = a.run([util.PYTHON, "-c", BOUND_CONNECTS, b.ip4, str(APP_PORT), "8", "2"],
                   timeout=30)
    assert result.returncode == 0, result.stderr
    report = diagnose(agent, a)
    f = finding(report, "ephemeral_port_exhaustion")
    print(f"\n$ meshlane diagnose {a.name}\n{agent.cli('diagnose', a.name).stdout}")
    assert f["severity"] == "critical" and f["data"]["no_local_port.upstream"] >= 4, f
    assert f["data"]["no_local_port.app"] == 0, f
    evidence = "\n".join(f["evidence"])
    assert "by the proxy to its upstreams" in evidence, evidence
    assert "ip_local_port_range in the pod netns: 40000\t40003" in evidence, evidence
    assert "TIME_WAIT in the pod netns now" in evidence, evidence
    assert f"e.g. connect to {b.ip4}:{APP_PORT}" in evidence, evidence
    assert "ip_local_port_range" in f["fix"] and "keep-alive" in f["fix"], f["fix"]

    a.exec("sysctl", "-w", "net.ipv4.ip_local_port_range=32768 60999")
    assert a.client(b.ip4, APP_PORT)["ok"]
    # The kernel totals reach the agent with its next snapshot (about a second).
    f = util.wait_until(
        lambda: next((x for x in diagnose(agent, a)["findings"]
                      if x["code"] == "ephemeral_port_exhaustion" and x["status"] == "resolved"),
                     None), timeout=5, interval=0.5, message="resolved after a good connect")
    assert f["severity"] == "info", f


def test_healthy_pair_has_no_fault_finding(meshed, agent):
    """Real traffic both ways, many connections: none of the faults fires."""
    a, b = meshed.a, meshed.b
    for _ in range(20):
        assert a.client(b.ip4, APP_PORT)["ok"]
    for pod in meshed.pods:
        report = diagnose(agent, pod)
        assert report["findings"] == [], json.dumps(report, indent=1)
