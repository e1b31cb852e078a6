"""Findings built from kernel observations: startup refusals dated by the datapath itself
(finding 1: N refused between T1 and T2, the proxy listened at T3), packets the kernel dropped
(finding 9: reason, where, counts, first/last), and the verify hops that probe inbound steering,
the no-loop rule and the fast-path state."""
import json
import time

from harness import util
from harness.topology import APP_PORT

from test_diagnose import check, diagnose, finding, verify


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
    assert f["severity"] == "warning"  # the proxy listens now
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
