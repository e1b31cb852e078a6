"""Connection and drop observation end to end (bpf/observe_*.bpf.c, agent/observe/): real
connects between two enrolled pods, faults injected with iptables inside a pod's netns, read back
through `meshlane conns` / `meshlane drops` (REST /v1/connections, /v1/drops)."""
import pytest

from harness import util
from harness.topology import APP_PORT

CLOSED_PORT = 9  # nothing listens on discard in the pods


def conns(agent, pod):
    data = agent.cli_json("conns", "--workload", pod.name)
    assert [w["name"] for w in data["workloads"]] == [pod.name], data
    return data["workloads"][0], data["observer"]


def drops(agent, pod, *args):
    data = agent.cli_json("drops", "--workload", pod.name, *args)
    assert [w["name"] for w in data["workloads"]] == [pod.name], data
    return data["workloads"][0], data["observer"]


def wait_for_conns(agent, pod, predicate, what, timeout=5.0):
    """Polls `meshlane conns` until predicate(workload) holds; returns that workload view."""
    seen = {}

    def check():
        seen["w"], _ = conns(agent, pod)
        return predicate(seen["w"])
    try:
        util.wait_until(check, timeout=timeout, interval=0.1, message=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last view of {pod.name}: {seen.get('w')}") from None
    return seen["w"]


def test_observer_is_running(meshed, agent):
    _, observer = conns(agent, meshed.a)
    assert observer["connect_tracking"] and observer["drop_tracking"], observer
    assert observer["problems"] == [], observer
    assert 0 < observer["memory_bytes"] <= observer["memory_limit_bytes"], observer


def test_local_connect_to_closed_port_is_refused_with_reset(meshed, agent):
    """A's app dials 127.0.0.1:9 (loopback is never captured): the kernel answers RST, the
    connect is recorded as refused on the upstream side, not lost, with the app's pid/comm."""
    topo = meshed
    result = topo.a.client("127.0.0.1", CLOSED_PORT)
    assert not result["ok"] and result.get("errno") == 111, result  # ECONNREFUSED
    w = wait_for_conns(agent, topo.a, lambda w: w["upstream"]["refused"] >= 1
                       and w["tcp"]["resets_sent"] >= 1, "a refused upstream connect in A")
    assert w["tcp"]["resets_received"] >= 1, w["tcp"]
    assert w["tcp"]["resets_sent"] >= 1, w["tcp"]  # A's own kernel answered for port 9
    refused = [e for e in w["recent"] if e["outcome"] == "refused"
               and e["destination"] == f"127.0.0.1:{CLOSED_PORT}"]
    assert refused, w["recent"]
    event = refused[-1]
    assert event["side"] == "upstream" and event["error"] == 111, event
    assert event["pid"] > 0 and event["comm"].startswith("python"), event
    assert event["latency_ms"] < 1000, event


def test_meshed_connect_to_closed_port_is_refused_in_server_pod(meshed, agent):
    """A's app dials B:9 through both proxies: B's proxy forwards to the closed local port, and
    B records its (upstream) connect as refused with a reset; A's app-side connect to its own
    proxy succeeded."""
    topo = meshed
    topo.a.client(topo.b.ip4, CLOSED_PORT)
    b = wait_for_conns(agent, topo.b, lambda w: w["upstream"]["refused"] >= 1
                       and w["tcp"]["resets_sent"] >= 1, "a refused upstream connect in B")
    assert b["tcp"]["resets_received"] >= 1 and b["tcp"]["resets_sent"] >= 1, b["tcp"]
    assert any(e["outcome"] == "refused" and e["destination"].endswith(f":{CLOSED_PORT}")
               for e in b["recent"]), b["recent"]
    a = wait_for_conns(agent, topo.a, lambda w: w["app"]["established"] >= 1,
                       "A's app connect to its proxy")
    assert a["app"]["refused"] == 0, a["app"]


def test_first_syn_dropped_shows_one_second_connect_and_netfilter_drop(meshed, agent):
    """B drops the first SYN arriving on its veth for the app port: A's proxy retransmits the
    SYN after the 1 s initial RTO. A records a ~1 s upstream connect with a SYN retransmit;
    B records a NETFILTER_DROP attributed by device."""
    topo = meshed
    topo.b.exec("iptables", "-A", "INPUT", "-i", topo.b.veth, "-p", "tcp", "--syn", "--dport",
                str(APP_PORT), "-m", "statistic", "--mode", "nth", "--every", "2", "--packet",
                "0", "-j", "DROP")
    result = topo.a.client(topo.b.ip4, APP_PORT, timeout=8.0)
    assert result.get("ok"), result

    # Events arrive at once; totals with the next map snapshot (250 ms): wait for both.
    a = wait_for_conns(agent, topo.a, lambda w: w["tcp"]["syn_retransmits"] >= 1 and any(
        e["side"] == "upstream" and e["outcome"] == "established" for e in w["recent"]),
        "A's slow upstream connect event and its SYN retransmit")
    slow = [e for e in a["recent"] if e["side"] == "upstream" and e["outcome"] == "established"
            and e["destination"] == f"{topo.b.ip4}:{APP_PORT}"]
    assert slow, a["recent"]
    event = slow[-1]
    assert 900 <= event["latency_ms"] <= 1600, event
    assert event["syn_retransmits"] == 1, event
    assert a["tcp"]["syn_retransmits"] >= 1, a["tcp"]
    assert a["upstream"]["syn_retransmits"] >= 1, a["upstream"]
    latency = a["upstream"]["latency"]
    # The ~1 s sample lives in the log2 bucket [524.288 ms, 1048.576 ms) or the next one.
    assert latency["count"] >= 1 and latency["p99_ms"] >= 524, latency
    assert any(lower <= 1000 < upper or lower <= event["latency_ms"] < upper
               for lower, upper, _ in latency["buckets"]), latency

    def netfilter_drop():
        w, _ = drops(agent, topo.b, "--reason", "NETFILTER_DROP")
        return w if w["total"] >= 1 and w["recent"] else None
    b = util.wait_until(netfilter_drop, timeout=5, interval=0.1,
                        message="a NETFILTER_DROP attributed to B")
    assert [r["reason"] for r in b["by_reason"]] == ["NETFILTER_DROP"], b
    drop = b["recent"][-1]
    assert drop["reason"] == "NETFILTER_DROP" and drop["protocol"] == "tcp", drop
    assert drop["destination"] == f"{topo.b.ip4}:{APP_PORT}", drop
    assert drop["source"].startswith(f"{topo.a.ip4}:"), drop
    assert drop["attributed_by"] == "device", drop
    # Nothing of B's drop is charged to A.
    a_drops, observer = drops(agent, topo.a, "--reason", "NETFILTER_DROP")
    assert a_drops["total"] == 0, a_drops
    assert observer["lost_events_total"] == 0, observer

    text = agent.cli_ok("drops", "--workload", topo.b.name).stdout
    assert "NETFILTER_DROP" in text, text
    text = agent.cli_ok("conns", "--workload", topo.a.name).stdout
    assert "upstream" in text and "established" in text, text


def test_views_reject_bad_queries(meshed, agent):
    result = agent.cli("drops", "--reason", "NOT_A_REASON")
    assert result.returncode == 1 and "not a drop reason" in result.stderr, result.stderr
    result = agent.cli("conns", "--workload", "no-such-workload")
    assert result.returncode == 1, result


@pytest.mark.parametrize("view", ["conns", "drops"])
def test_views_list_every_workload(meshed, agent, view):
    data = agent.cli_json(view)
    assert sorted(w["name"] for w in data["workloads"]) == sorted(
        [meshed.a.name, meshed.b.name]), data


def test_drop_flood_counts_exactly_and_reports_lost_events(meshed, agent):
    """5000 UDP datagrams dropped by netfilter in B within a fraction of a second: the per-reason
    count is exact, events beyond the kernel's per-CPU token bucket are reported as lost
    (drops.rate_limited), and the agent stays within its memory bound."""
    topo = meshed
    count, port = 5000, 9999
    topo.b.exec("iptables", "-A", "INPUT", "-i", topo.b.veth, "-p", "udp", "--dport", str(port),
                "-j", "DROP")
    sender = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for _ in range({count}): s.sendto(b'x' * 32, ('{topo.b.ip4}', {port}))\n")
    result = topo.a.run([util.PYTHON, "-c", sender], timeout=30)
    assert result.returncode == 0, result.stderr

    def counted():
        w, observer = drops(agent, topo.b, "--reason", "NETFILTER_DROP", "--limit", "10000")
        return (w, observer) if w["total"] >= count else None
    w, observer = util.wait_until(counted, timeout=10, interval=0.2,
                                  message=f"{count} NETFILTER_DROP in B")
    assert w["total"] == count, w["by_reason"]
    assert 0 < len(w["recent"]) < count, len(w["recent"])
    assert observer["lost_events"]["drops.rate_limited"] > 0, observer
    assert observer["lost_events_total"] >= observer["lost_events"]["drops.rate_limited"]
    # Every drop is either delivered as an event or counted as lost, never silently missing.
    delivered = observer["drop_events"]
    lost = observer["lost_events"]["drops.rate_limited"] + observer["lost_events"][
        "drops.ringbuf_full"]
    assert delivered + lost >= count, observer
    assert observer["memory_bytes"] <= observer["memory_limit_bytes"], observer
