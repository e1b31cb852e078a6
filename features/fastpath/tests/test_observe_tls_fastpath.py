"""TLS-handshake latency on the sk_msg fast path (docs/tls-latency.md, docs/fastpath.md): bytes
that fastpath_msg redirects never reach an skb, so fastpath_msg tail-calls observe_tls_msg
(bpf/observe_tls_wire.bpf.c), which feeds them to the same parser state the egress SYN created.

- `--fast-path app-proxy` on A: the app's hop to its proxy is redirected (the fast path's
  counters prove it: every byte redirected, none passed to TCP), the proxy's upstream stays on
  TCP; the delayed-handshake server is measured on both hops in [D, D + 20 ms], TLS 1.2 and 1.3,
  OpenSSL s_client and GnuTLS gnutls-cli, exactly once per hop (kernel totals exact).
- `--fast-path app-proxy,proxy-proxy` on both pods with mTLS between the HAProxy sidecars: A's
  proxy's upstream handshake to B's proxy is measured on that hop, once, while
  proxy_proxy_redirected_bytes proves its bytes went through sk_msg.
- observers off (`observe = false`): the fast path works as before, its observer slot empty."""
import json
import os

import pytest

from conftest import start_mesh
from harness import util
from harness.tls import (SNI, all_keys, make_ca_certs, new_events, run_client, self_signed_cert,
                         start_mtls_sidecar, start_tls_server, wait_attached, workload_tls)
from harness.tls import gnutls_client as tls_gnutls_client
from harness.tls import openssl_client as tls_openssl_client
from harness.topology import APP_PORT
from test_observe_tls import (DELAY_MS, TLS_PORT, assert_upstream_mtls_handshake,
                              assert_within_delay_window)
from test_fastpath_integrity import app_sockets_accelerated  # noqa: F401 (autouse)

CLIENTS = [("openssl", "1.3"), ("openssl", "1.2"), ("gnutls", "1.3"), ("gnutls", "1.2")]


def fast_path(agent, pod):
    return agent.cli_json("workload", pod.name)["fast_path"]


def observer_slots(agent):
    """fastpath_msg_observers' entries (bpftool: [] when the slot is empty)."""
    return json.loads(util.run(["bpftool", "-j", "map", "dump", "pinned",
                                os.path.join(agent.pin_path, "maps",
                                             "fastpath_msg_observers")]).stdout)


def counters_delta(after, before):
    return {k: v - before["counters"].get(k, 0) for k, v in after["counters"].items()}


@pytest.fixture
def fast_tls_pods(topo, agent):
    """A with --fast-path app-proxy, B plain; HAProxy sidecars; B's app is a TLS server on 8443
    delaying every handshake by DELAY_MS."""
    start_mesh(topo, agent, a={"fast_path": "app-proxy"}, b={}, b_ports=())
    cert, key = self_signed_cert(topo.workdir)
    start_tls_server(topo.b, TLS_PORT, cert, key, delay_ms=DELAY_MS)
    wait_attached(agent)
    status = fast_path(agent, topo.a)
    assert status["active"], f"fast path not active on A: {status}"
    return topo


def test_app_hop_on_the_fast_path_is_measured(fast_tls_pods, agent):
    topo = fast_tls_pods
    seen = all_keys(agent, topo.a)
    measured = []
    for client, version in CLIENTS:
        before = fast_path(agent, topo.a)
        if client == "openssl":
            run_client(topo.a, tls_openssl_client(topo.b.ip4, TLS_PORT, version))
        else:
            run_client(topo.a, tls_gnutls_client(topo.b.ip4, TLS_PORT, version))
        events, _ = new_events(agent, topo.a, seen,
                               lambda e: e["source"] == "wire" and e["sni"] == SNI, 2,
                               f"{client} TLS {version}: wire handshakes on both hops")
        # One per hop: the app's (redirected by sk_msg) and the proxy's upstream (TCP).
        assert sorted(e["side"] for e in events) == ["app", "upstream"], events
        for e in events:
            assert e["outcome"] == "ok" and e["version"] == f"TLS{version}", (client, e)
            assert e["peer"] == ("127.0.0.1:15001" if e["side"] == "app"
                                 else f"{topo.b.ip4}:{TLS_PORT}"), e
            if e["side"] == "app":
                assert e["original_destination"] == f"{topo.b.ip4}:{TLS_PORT}", e
            measured.append((client, version, e["side"], e["latency_ms"]))
        moved = counters_delta(fast_path(agent, topo.a), before)
        # The app's hop really went through sk_msg, both directions, none of it on TCP.
        assert moved["conns_accelerated"] == 1 and moved["redirected_bytes"] > 0, moved
        assert moved["passed_bytes"] == 0, moved
    assert_within_delay_window(measured, "wire handshake latency on the fast path")

    # Nothing counted twice: exactly one handshake per hop and client in the kernel totals.
    expected = 2 * len(CLIENTS)
    util.wait_until(lambda: workload_tls(agent, topo.a)["wire"]["completed"] >= expected,
                    timeout=5, message="kernel totals of every handshake")
    w = workload_tls(agent, topo.a)
    assert w["wire"]["completed"] == expected and w["wire"]["failures"] == 0, w["wire"]
    wire_recent = [e for e in w["recent"] if e["source"] == "wire"]
    assert len(wire_recent) == expected, wire_recent


def test_rejected_certificate_on_the_fast_path_is_a_failure(fast_tls_pods, agent):
    """An alert sent on the redirected hop is a failure of the app's hop, as on TCP."""
    topo = fast_tls_pods
    seen = all_keys(agent, topo.a)
    result = run_client(topo.a, tls_openssl_client(topo.b.ip4, TLS_PORT, "1.2",
                                                   extra=["-verify_return_error"]), check=False)
    assert result.returncode != 0, result.stdout
    events, _ = new_events(agent, topo.a, seen,
                           lambda e: e["source"] == "wire" and e["side"] == "app", 1,
                           "the failed handshake on the app's hop")
    assert events[0]["outcome"] == "alert", events
    assert events[0]["alert"] == "alert fatal 48 (unknown_ca)", events


def test_mtls_between_sidecars_on_the_proxy_proxy_fast_path(topo, agent):
    """Both pods --fast-path app-proxy,proxy-proxy; HAProxy sidecars speak mTLS to each other: A's
    proxy's handshake to B's proxy is redirected by sk_msg and measured on that hop, once."""
    certs = make_ca_certs(topo.workdir)
    for pod in topo.pods:
        agent.enroll_ok(pod, fast_path="app-proxy,proxy-proxy")
    for pod in topo.pods:
        start_mtls_sidecar(pod, client_pem=certs["client"], server_pem=certs["server"],
                           ca=certs["ca"])
    topo.b.start_app()
    wait_attached(agent)
    assert fast_path(agent, topo.a)["active"], fast_path(agent, topo.a)
    before = fast_path(agent, topo.a)
    result = topo.a.client(topo.b.ip4, APP_PORT)
    assert result.get("ok"), result

    e = assert_upstream_mtls_handshake(agent, topo)
    moved = counters_delta(fast_path(agent, topo.a), before)
    # The proxy <-> proxy hop (the handshake included) went through sk_msg, not TCP.
    assert moved["proxy_proxy_conns_accelerated"] == 1, moved
    assert moved["proxy_proxy_redirected_bytes"] > 0, moved
    assert moved["passed_bytes"] == 0, moved
    print(f"\nmTLS proxy -> proxy handshake on the fast path: wire {e['latency_ms']:.2f} ms; "
          f"{moved['proxy_proxy_redirected_bytes']} bytes redirected proxy -> proxy")

    util.wait_until(lambda: workload_tls(agent, topo.a)["wire"]["completed"] >= 1, timeout=5,
                    message="kernel total of the handshake")
    w = workload_tls(agent, topo.a)
    # Once: the app's plaintext hop is not TLS, and the redirected handshake is not also seen
    # on TCP.
    assert w["wire"]["completed"] == 1 and w["wire"]["failures"] == 0, w["wire"]
    assert [x["side"] for x in w["recent"] if x["source"] == "wire"] == ["upstream"], w["recent"]

    # A restarted agent fills the slot again: its fast path re-adopts the pinned map first.
    agent.restart()
    wait_attached(agent)
    before = fast_path(agent, topo.a)
    assert topo.a.client(topo.b.ip4, APP_PORT).get("ok")
    again, _ = new_events(agent, topo.a, set(), lambda e: e["source"] == "wire", 1,
                          "the mTLS handshake after the agent's restart")
    assert again[0]["side"] == "upstream" and again[0]["outcome"] == "ok", again
    moved = counters_delta(fast_path(agent, topo.a), before)
    assert moved["proxy_proxy_redirected_bytes"] > 0, moved
    assert len(observer_slots(agent)) == 1
    # A stopping agent empties the slot: no program of a gone agent is left running there.
    agent.stop()
    assert observer_slots(agent) == []
    agent.start()


@pytest.mark.agent_config(observe="false")
def test_fast_path_without_the_tls_observer(topo, agent):
    """Observers off: nothing fills fastpath_msg_observers, fastpath_msg's tail call falls
    through, and the accelerated TLS connection works as before."""
    start_mesh(topo, agent, a={"fast_path": "app-proxy"}, b={}, b_ports=())
    cert, key = self_signed_cert(topo.workdir)
    start_tls_server(topo.b, TLS_PORT, cert, key)
    before = fast_path(agent, topo.a)
    assert before["active"], before
    run_client(topo.a, tls_openssl_client(topo.b.ip4, TLS_PORT, "1.3"))  # exits 0
    moved = counters_delta(fast_path(agent, topo.a), before)
    assert moved["conns_accelerated"] == 1 and moved["redirected_bytes"] > 0, moved
    assert moved["passed_bytes"] == 0, moved
    assert observer_slots(agent) == []
