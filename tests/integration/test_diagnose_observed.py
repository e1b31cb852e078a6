"""Findings built from kernel observations: startup refusals dated by the datapath itself
(finding 1: N refused between T1 and T2, the proxy listened at T3), packets the kernel dropped
(finding 9: reason, where, counts, first/last), and the verify hops that probe inbound steering,
the no-loop rule and the fast-path state."""
import json
import os
import signal
import time

from harness import proc, util
from harness.topology import APP_PORT

from test_diagnose import check, codes, diagnose, finding, verify


def test_startup_refusals_are_dated_by_the_kernel(topo, agent):
    agent.enroll_ok(topo.b)
    topo.b.start_app(ports=(APP_PORT,))
    topo.a.start_app(ports=(APP_PORT,))
    before_ms = time.time() * 1000
    inbound = [topo.a.client(topo.b.ip4, APP_PORT, timeout=2) for _ in range(3)]
    outbound = [topo.b.client(topo.a.ip4, APP_PORT, timeout=2) for _ in range(2)]
    assert not any(r["ok"] for r in inbound + outbound), inbound + outbound
    after_ms = time.time() * 1000
    topo.b.start_sidecar(kind="haproxy")

    def dated():
        f = finding(diagnose(agent, topo.b), "connection_refused_proxy_not_listening")
        return f if "outbound_refused" in f["data"] else None
    f = util.wait_until(dated, timeout=5, interval=0.5,
                        message="outbound refusals reach the observer")
    data = f["data"]
    # Inbound: counted and dated by sk_lookup; T3 by sockops when HAProxy listened.
    assert data["inbound_refused"] == 3, f
    t1, t2, t3 = (data["inbound_refused_first_unix_ms"], data["inbound_refused_last_unix_ms"],
                  data["listener_registered_unix_ms"])
    assert before_ms - 1000 <= t1 <= t2 < t3, f
    assert t2 <= after_ms + 1000, f
    # Outbound: the app's connects redirected to 127.0.0.1:15001 with nothing listening.
    assert data["outbound_refused"] == 2, f
    assert before_ms - 1000 <= data["outbound_refused_first_unix_ms"] <= \
        data["outbound_refused_last_unix_ms"] < t3, f
    text = " ".join(f["evidence"])
    assert "3 inbound connection(s) refused" in text and "first at" in text, text
    assert "2 outbound connect(s) by the app refused" in text, text
    assert "registered at" in text, text
    # The proxy listens now and nothing was refused since: resolved, info.
    assert f["severity"] == "info" and f["status"] == "resolved", f
    assert f["resolved_at_unix_ms"] == t3, f
    assert "kernel_dropped_packets" not in [x["code"] for x in diagnose(agent, topo.b)["findings"]]


def test_kernel_drops_name_reason_and_place(meshed, agent):
    a, b = meshed.a, meshed.b
    assert a.client(b.ip4, APP_PORT)["ok"]
    # The fault: B's netns drops every SYN to the app port.
    b.exec("iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(APP_PORT), "--syn", "-j", "DROP")
    result = a.client(b.ip4, APP_PORT, timeout=5)
    assert not result["ok"], result

    f = util.wait_until(
        lambda: next((x for x in diagnose(agent, b)["findings"]
                      if x["code"] == "kernel_dropped_packets"), None),
        timeout=10, interval=0.5, message="drop finding on the server")
    assert f["data"]["drops.NETFILTER_DROP"] >= 1, f
    assert f["data"]["drops_total.NETFILTER_DROP"] >= 1  # map snapshot, may lag the events
    assert f["data"]["drops_first_unix_ms.NETFILTER_DROP"] <= \
        f["data"]["drops_last_unix_ms.NETFILTER_DROP"]
    evidence = "\n".join(f["evidence"])
    assert f"-> {b.ip4}:{APP_PORT} (inbound to the pod)" in evidence, evidence
    assert "iptables" in f["fix"] and b.netns_path in f["fix"], f["fix"]

    # The client side: its proxy's upstream connects failed, and the drop is found in B.
    def client_finding():
        report = diagnose(agent, a)
        return next((x for x in report["findings"] if x["code"] == "kernel_dropped_packets"),
                    None)
    f = util.wait_until(client_finding, timeout=15, interval=0.5,
                        message="drop finding on the client")
    assert f["severity"] == "critical" and f["data"]["failed_connects"] >= 1, f
    assert f["data"]["peer_drops.NETFILTER_DROP"] >= 1, f
    evidence = "\n".join(f["evidence"])
    assert f"dropped in workload {b.name}" in evidence, evidence
    assert b.netns_path in f["fix"], f["fix"]

    b.exec("iptables", "-D", "INPUT", "-p", "tcp", "--dport", str(APP_PORT), "--syn", "-j", "DROP")
    assert a.client(b.ip4, APP_PORT)["ok"]


def test_verify_probes_inbound_steering_loop_and_fast_path(meshed, agent):
    meshed.b.client(meshed.a.ip4, APP_PORT)  # some real traffic for the evidence
    before = {c: v for c, v in agent.cli_json("workload", meshed.b.name)["counters"].items()}
    report, elapsed = verify(agent, meshed.b)
    assert report["passed"], json.dumps(report, indent=1)
    inbound = " ".join(check(report, "inbound")["evidence"])
    assert f"SYN 192.0.2.1:40000 -> {meshed.b.ip4}:{APP_PORT}" in inbound, inbound
    assert ("to the proxy's listener" in inbound or "the proxy's listener is one" in inbound) \
        and "no NAT" in inbound, inbound
    no_loop = " ".join(check(report, "no_loop")["evidence"])
    assert "uid 1337" in no_loop and "192.0.2.1:15002" in no_loop, no_loop
    assert "passed as the proxy's own traffic" in no_loop, no_loop
    fast = " ".join(check(report, "fast_path")["evidence"])
    assert "fast path" in fast, fast
    after = agent.cli_json("workload", meshed.b.name)["counters"]
    assert after["outbound_pass_proxy_owner"] > before["outbound_pass_proxy_owner"]
    assert elapsed < 10


def test_verify_names_a_loop_without_starting_it(topo, agent):
    agent.enroll_ok(topo.b)
    topo.b.start_sidecar(kind="haproxy", uid=1000, gid=1000)
    report, _ = verify(agent, topo.b)
    assert not report["passed"]
    no_loop = " ".join(check(report, "no_loop")["evidence"])
    assert "LOOP" in no_loop and "uid 1000" in no_loop, no_loop
    outbound = " ".join(check(report, "outbound")["evidence"])
    assert "probe not sent" in outbound, outbound


# -- issue 19: findings true in every word ---------------------------------------------------------

CONNECT_LOOP = """
import socket, sys
refused = 0
for _ in range(int(sys.argv[3])):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except ConnectionRefusedError:
        refused += 1
    except OSError:
        pass
    s.close()
print(refused)
"""


def connect_loop(pod, host, port, count):
    """`count` bare TCP connects from pod's app cgroup; returns how many were refused."""
    result = pod.run([util.PYTHON, "-c", CONNECT_LOOP, host, str(port), str(count)], timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def test_outbound_only_startup_refusals_name_the_outbound_port(topo, agent):
    """Item 1: the app's connects refused at 127.0.0.1:15001 before the proxy listened are
    described as the OUTBOUND side, not as the proxy's inbound port 15006."""
    agent.enroll_ok(topo.b)
    topo.a.start_app(ports=(APP_PORT,))
    assert connect_loop(topo.b, topo.a.ip4, APP_PORT, 2) == 2

    def dated():
        f = finding(diagnose(agent, topo.b), "connection_refused_proxy_not_listening")
        return f if f["data"].get("outbound_refused") == 2 else None
    f = util.wait_until(dated, timeout=5, interval=0.5, message="outbound refusals counted")
    assert "outbound port 127.0.0.1:15001" in f["cause"], f["cause"]
    assert "15006" not in f["cause"] and "inbound_refused" not in f["data"], f
    assert "started before the proxy" in f["cause"], f["cause"]
    assert "holdApplicationUntilProxyStarts" in f["fix"], f["fix"]


def test_crashed_proxy_is_not_a_startup_problem(meshed, agent):
    """Item 2: A's proxy is killed mid-traffic; the app's connects refused afterwards are a
    stopped proxy (not "the app started before the proxy"), counted exactly past the 256-event
    ring, dated by the kernel; after the restart the finding is resolved (info, exit 0)."""
    a, b = meshed.a, meshed.b
    assert a.client(b.ip4, APP_PORT)["ok"]
    os.kill(a.sidecar.process.pid, signal.SIGKILL)
    proc.stop(a.sidecar.process)
    before_ms = time.time() * 1000
    refused = connect_loop(a, b.ip4, APP_PORT, 300)
    after_ms = time.time() * 1000
    assert refused == 300

    last = {}

    def counted():
        report = last["report"] = diagnose(agent, a)
        f = next((x for x in report["findings"] if x["code"] == "proxy_stopped_listening"), None)
        return (report, f) if f and f["data"].get("outbound_refused") == refused else None
    try:
        report, f = util.wait_until(counted, timeout=10, interval=0.5,
                                    message="all refusals counted")
    except TimeoutError as e:
        raise AssertionError(f"{e}: {json.dumps(last.get('report'), indent=1)}") from None
    print(f"\n$ meshlane diagnose {a.name}\n{agent.cli('diagnose', a.name).stdout}")
    assert f["severity"] == "critical" and report["critical"] >= 1, f
    data = f["data"]
    assert before_ms - 1000 <= data["outbound_refused_first_unix_ms"] <= \
        data["outbound_refused_last_unix_ms"] <= after_ms + 1000, (before_ms, data, after_ms)
    assert data["listener_registered_first_unix_ms"] < data["outbound_refused_first_unix_ms"]
    assert f"{refused} outbound connect(s)" in " ".join(f["evidence"]), f["evidence"]
    assert "crashed, was killed or restarted" in f["cause"], f["cause"]
    assert "started before the proxy" not in f["cause"], f["cause"]
    assert "holdApplicationUntilProxyStarts" not in f["fix"] and "--previous" in f["fix"], f

    a.start_sidecar(kind="haproxy")
    assert a.client(b.ip4, APP_PORT)["ok"]
    report = diagnose(agent, a)
    f = finding(report, "proxy_stopped_listening")
    assert f["severity"] == "info" and f["status"] == "resolved", f
    assert data["outbound_refused_last_unix_ms"] < f["resolved_at_unix_ms"], f
    assert report["critical"] == 0, json.dumps(report, indent=1)


def test_client_is_not_blamed_for_the_servers_startup_refusals(topo, agent):
    """Item 3: B's app listens but B's proxy does not yet: A's requests are refused by B's
    sk_lookup (NO_SOCKET in B's netns). A gets no critical kernel_dropped_packets with "start
    the server", but a peer_proxy_not_listening naming B; resolved once B's proxy listens."""
    agent.enroll_ok(topo.a)
    agent.enroll_ok(topo.b)
    topo.a.start_sidecar(kind="haproxy")
    topo.b.start_app(ports=(APP_PORT,))
    assert not topo.a.client(topo.b.ip4, APP_PORT, timeout=3)["ok"]

    def peer_finding():
        report = diagnose(agent, topo.a)
        f = next((x for x in report["findings"] if x["code"] == "peer_proxy_not_listening"), None)
        return (report, f) if f else None
    report, f = util.wait_until(peer_finding, timeout=10, interval=0.5,
                                message="A names B's proxy")
    print(f"\n$ meshlane diagnose {topo.a.name}\n{agent.cli('diagnose', topo.a.name).stdout}")
    assert "kernel_dropped_packets" not in codes(report), json.dumps(report, indent=1)
    assert report["critical"] == 0 and f["severity"] == "warning", f
    assert topo.b.name in f["cause"] and "start the server" not in f["fix"], f
    assert f"meshlane diagnose {topo.b.name}" in f["fix"], f["fix"]

    topo.b.start_sidecar(kind="haproxy")
    for _ in range(5):
        assert topo.a.client(topo.b.ip4, APP_PORT)["ok"]
    report = diagnose(agent, topo.a)
    f = finding(report, "peer_proxy_not_listening")
    assert f["severity"] == "info" and f["status"] == "resolved", f
    assert report["critical"] == 0 and "kernel_dropped_packets" not in codes(report), report
    assert agent.cli("diagnose", topo.a.name).returncode == 0
