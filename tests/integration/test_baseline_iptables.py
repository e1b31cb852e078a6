"""The harness against the Istio iptables capture: proves the topology, the sidecars, their logs
and the client/server before any meshlane code is involved."""
import pytest

from conftest import start_baseline
from harness.topology import APP_PORT


def assert_captured_once(topo, result, dst_ip, marks):
    a_mark, b_mark = marks
    assert result["ok"], f"client failed: {result}\n{topo.describe()}"
    assert result["json"]["server"] == "b-app"
    assert result["json"]["local"][1] == APP_PORT
    out = topo.a.sidecar.log.wait_for(a_mark)
    inb = topo.b.sidecar.log.wait_for(b_mark)
    assert [(e.direction, e.frontend_addr, e.server) for e in out] == \
        [("outbound", (dst_ip, APP_PORT), (dst_ip, APP_PORT))], topo.describe()
    assert [(e.direction, e.frontend_addr) for e in inb] == \
        [("inbound", (dst_ip, APP_PORT))], topo.describe()
    # B's proxy reached the app from the inbound passthrough source, as Envoy does.
    assert result["json"]["peer"][0] in ("127.0.0.6", "::6", "::ffff:127.0.0.6")


def test_http_ipv4_through_both_proxies(baseline_topo):
    topo = baseline_topo
    marks = (topo.a.sidecar.log.mark(), topo.b.sidecar.log.mark())
    result = topo.a.client(topo.b.ip4, APP_PORT)
    assert_captured_once(topo, result, topo.b.ip4, marks)
    assert any("REDIRECT" in rule for rule in topo.a.nat_rules())


@pytest.mark.parametrize("family", ["4", "6"])
def test_http_through_envoy_like_proxies(topo, family):
    """HAProxy 2.6 cannot serve IPv6 REDIRECT (no IP6T_SO_ORIGINAL_DST), the Envoy-like proxy
    can: this validates that proxy, which the IPv6 meshlane tests rely on."""
    start_baseline(topo, "pyproxy")
    dst = topo.b.ip4 if family == "4" else topo.b.ip6
    marks = (topo.a.sidecar.log.mark(), topo.b.sidecar.log.mark())
    result = topo.a.client(dst, APP_PORT)
    assert_captured_once(topo, result, dst, marks)


def test_proxy_uid_goes_direct(baseline_topo):
    topo = baseline_topo
    marks = (topo.a.sidecar.log.mark(), topo.b.sidecar.log.mark())
    result = topo.a.client(topo.b.ip4, APP_PORT, uid=1337, gid=1337)
    assert result["ok"], result
    assert topo.a.sidecar.log.quiet_since(marks[0]) == []
    assert len(topo.b.sidecar.log.wait_for(marks[1])) == 1


def test_always_excluded_inbound_port(topo):
    start_baseline(topo, "haproxy", app_ports=(APP_PORT, 15020))
    a_mark, b_mark = topo.a.sidecar.log.mark(), topo.b.sidecar.log.mark()
    result = topo.a.client(topo.b.ip4, 15020)
    assert result["ok"], result
    assert len(topo.a.sidecar.log.wait_for(a_mark)) == 1
    assert topo.b.sidecar.log.quiet_since(b_mark) == []
    assert result["json"]["peer"][0] == topo.a.ip4
