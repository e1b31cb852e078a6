"""One test per capture rule of istio-iptables, each through real sockets: what the proxies log
tells whether a connection was captured (and on which side)."""
import pytest

from conftest import start_mesh
from harness.checks import (assert_inbound_once, assert_ok, assert_outbound_once, assert_quiet,
                            request)
from harness.sidecar import PROXY_GID, PROXY_UID
from harness.topology import APP_PORT

OTHER_PORT = 8081
A_APP_PORT = 9000
UNRELATED_CIDR = "192.0.2.0/24"  # TEST-NET-1: never routed here, no traffic is sent to it


def test_exclude_outbound_ports_go_direct(topo, agent):
    start_mesh(topo, agent, a={"exclude_outbound_ports": [OTHER_PORT]}, b={},
               b_ports=(APP_PORT, OTHER_PORT))
    result, marks = request(topo, topo.a, topo.b.ip4, OTHER_PORT)
    assert_ok(topo, result, local_port=OTHER_PORT)
    assert_quiet(topo, topo.a, marks, f"port {OTHER_PORT} is excluded outbound")
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, OTHER_PORT))
    # control: another port from the same pod is still captured
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))


def test_exclude_inbound_ports_reach_app_directly(topo, agent):
    start_mesh(topo, agent, a={}, b={"exclude_inbound_ports": [OTHER_PORT]},
               b_ports=(APP_PORT, OTHER_PORT))
    result, marks = request(topo, topo.a, topo.b.ip4, OTHER_PORT)
    assert_ok(topo, result, local_port=OTHER_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, OTHER_PORT))
    assert_quiet(topo, topo.b, marks, f"port {OTHER_PORT} is excluded inbound")
    assert result["json"]["peer"][0] == topo.a.ip4, "B's app should be reached from A directly"
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result)
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


@pytest.mark.parametrize("port", [15020, 15021, 15090])
def test_always_excluded_inbound_ports(topo, agent, port):
    start_mesh(topo, agent, a={}, b={}, b_ports=(port,))
    result, marks = request(topo, topo.a, topo.b.ip4, port)
    assert_ok(topo, result, local_port=port)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, port))
    assert_quiet(topo, topo.b, marks, f"{port} is always excluded inbound")


def test_exclude_cidrs_go_direct(topo, agent):
    start_mesh(topo, agent, a={"exclude_cidrs": [f"{topo.b.ip4}/32", f"{topo.b.ip6}/128"]}, b={})
    for dst in (topo.b.ip4, topo.b.ip6):
        result, marks = request(topo, topo.a, dst, APP_PORT)
        assert_ok(topo, result)
        assert_quiet(topo, topo.a, marks, f"{dst} is in an excluded CIDR")
        assert_inbound_once(topo, topo.b, marks, (dst, APP_PORT))


@pytest.mark.parametrize("which", ["other", "containing"])
def test_include_cidrs(topo, agent, which):
    cidrs = [UNRELATED_CIDR] if which == "other" else [topo.subnet4]
    start_mesh(topo, agent, a={"include_cidrs": cidrs}, b={})
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result)
    if which == "other":
        assert_quiet(topo, topo.a, marks, f"only {cidrs} is included")
    else:
        assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_include_inbound_ports_only_listed(topo, agent):
    start_mesh(topo, agent, a={}, b={"include_ports": [APP_PORT]},
               b_ports=(APP_PORT, OTHER_PORT))
    result, marks = request(topo, topo.a, topo.b.ip4, OTHER_PORT)
    assert_ok(topo, result, local_port=OTHER_PORT)
    assert_quiet(topo, topo.b, marks, f"only {APP_PORT} is included inbound")
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_include_outbound_ports_without_cidrs(topo, agent):
    """istio -q with -i limited to an unrelated CIDR: only the listed ports are captured."""
    start_mesh(topo, agent, a={"include_cidrs": [UNRELATED_CIDR],
                               "include_outbound_ports": [OTHER_PORT]}, b={},
               b_ports=(APP_PORT, OTHER_PORT))
    result, marks = request(topo, topo.a, topo.b.ip4, OTHER_PORT)
    assert_ok(topo, result)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, OTHER_PORT))
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result)
    assert_quiet(topo, topo.a, marks, f"{APP_PORT} is neither an included port nor CIDR")


@pytest.mark.parametrize("uid,gid", [(PROXY_UID, 1000), (1000, PROXY_GID)],
                         ids=["proxy-uid", "proxy-gid"])
def test_proxy_owner_traffic_not_captured(topo, agent, uid, gid):
    """A process in A's app cgroup running as the proxy uid (or gid) is treated as the proxy."""
    start_mesh(topo, agent, a={}, b={})
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT, uid=uid, gid=gid)
    assert_ok(topo, result)
    assert_quiet(topo, topo.a, marks, f"uid {uid} gid {gid} is the proxy's")
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_loopback_app_to_app_not_captured(topo, agent):
    start_mesh(topo, agent, a={}, b={}, b_ports=(), a_ports=(A_APP_PORT,))
    for dst in ("127.0.0.1", topo.a.ip4, "::1", topo.a.ip6):
        result, marks = request(topo, topo.a, dst, A_APP_PORT)
        assert_ok(topo, result, server="a-app", local_port=A_APP_PORT)
        assert_quiet(topo, topo.a, marks, f"app -> {dst} stays inside the pod")


def test_proxy_to_own_pod_ip_reaches_app_without_loop(topo, agent):
    """The proxy (uid 1337, sidecar cgroup) calling its own pod IP: not sent back to its
    inbound listener (proxy-self-to-inbound is off by default), so no loop."""
    start_mesh(topo, agent, a={}, b={}, b_ports=(), a_ports=(A_APP_PORT,))
    for dst in (topo.a.ip4, topo.a.ip6):
        result, marks = request(topo, topo.a, dst, A_APP_PORT, uid=PROXY_UID, gid=PROXY_GID,
                                cgroup="sidecar")
        assert_ok(topo, result, server="a-app", local_port=A_APP_PORT)
        assert_quiet(topo, topo.a, marks, "the proxy's own call to its pod IP")
