"""The redirect datapath end to end: both pods enrolled, no iptables anywhere, HTTP from A's app
to B's app goes A app -> A proxy (15001) -> B proxy (15006, via sk_lookup) -> B app, once."""
import pytest

from conftest import enroll_pods, start_mesh
from harness.checks import (assert_inbound_once, assert_no_nat_rules, assert_ok,
                            assert_outbound_once, assert_quiet, request)
from harness.meshlane import attached_summary, pin_entries
from harness.topology import APP_PORT


def test_ipv4_captured_once_on_each_side(meshed):
    topo = meshed
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))
    assert result["peername"] == [topo.b.ip4, APP_PORT], (
        f"getpeername() in the app must return the original destination, got "
        f"{result['peername']}")
    assert_no_nat_rules(topo)


@pytest.fixture(params=["pyproxy", "haproxy"])
def meshed_v6(request, topo, agent):
    """pyproxy: A's sidecar is the Envoy-like proxy, which asks IP6T_SO_ORIGINAL_DST. haproxy:
    HAProxy 2.6 never asks it on AF_INET6 sockets (it uses getsockname()), so this variant only
    passes when the datapath also answers getsockname() on the proxy's accepted socket."""
    return start_mesh(topo, agent, a={}, b={}, a_kind=request.param)


def test_ipv6_captured_once_on_each_side(meshed_v6):
    topo = meshed_v6
    result, marks = request(topo, topo.a, topo.b.ip6, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip6, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip6, APP_PORT))
    assert result["peername"] == [topo.b.ip6, APP_PORT]
    assert_no_nat_rules(topo)


def test_v4_mapped_ipv6_socket_is_captured(meshed):
    """AF_INET6 socket connecting to ::ffff:B: IPv4 on the wire, so like iptables it must reach
    the IPv4 outbound listener (HAProxy's 127.0.0.1:15001 answers SO_ORIGINAL_DST)."""
    topo = meshed
    mapped = f"::ffff:{topo.b.ip4}"
    result, marks = request(topo, topo.a, mapped, APP_PORT, family=6)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))
    assert result["peername"] == [mapped, APP_PORT]


def test_unenroll_makes_traffic_direct(meshed, agent):
    topo = meshed
    for pod in topo.pods:
        attached = attached_summary(pod)
        assert "cgroup:pod" in attached and "netns" in attached, (
            f"expected cgroup programs and an sk_lookup netns link for {pod.name}: {attached}")
    for pod in topo.pods:
        agent.cli_ok("unenroll", pod.name)
    assert agent.workload_names() == []
    for pod in topo.pods:
        assert attached_summary(pod) == {}, f"{pod.name} still has programs after unenroll"
    assert [p for p in pin_entries(agent) if topo.a.name in p or topo.b.name in p] == []
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert result["json"]["peer"][0] == topo.a.ip4, "B's app should see A's pod IP directly"
    assert_quiet(topo, topo.a, marks, "A is unenrolled")
    assert_quiet(topo, topo.b, marks, "B is unenrolled")


def test_enroll_twice_with_same_settings_is_idempotent(topo, agent):
    options = {"exclude_outbound_ports": [9999], "exclude_inbound_ports": [9998]}
    start_mesh(topo, agent, a=options, b={})
    agent.enroll_ok(topo.a, **options)
    agent.enroll_ok(topo.b)
    assert agent.workload_names() == sorted([topo.a.name, topo.b.name])
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_proxy_listening_before_enrollment_is_adopted(mesh_topo, agent):
    """Sidecars and app already running when the pods are enrolled (agent upgrade, or a pod
    enrolled late): the inbound listener must still be found (no TCP_LISTEN_CB will fire)."""
    topo = mesh_topo
    enroll_pods(agent, topo, a={}, b={})
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_workload_json_describes_enrolled_pod(meshed, agent):
    topo = meshed
    workloads = {w["spec"]["name"]: w for w in agent.workloads()}
    assert set(workloads) == {topo.a.name, topo.b.name}
    one = agent.cli_json("workload", topo.b.name)
    one = one.get("workload", one)
    assert one["spec"]["name"] == topo.b.name
    listener = one.get("inbound_listener")
    v4 = listener.get("v4") if isinstance(listener, dict) else one.get("inbound_listener_v4")
    v6 = listener.get("v6") if isinstance(listener, dict) else one.get("inbound_listener_v6")
    assert v6 is True, f"B's proxy listens on :::15006 v4v6: v6 must be reported: {one}"
    assert v4 is True, (
        f"B's proxy listens on :::15006 v4v6, which serves IPv4 too (IPv4 inbound is steered "
        f"to it); the agent should report the v4 inbound listener as present: {listener}")
