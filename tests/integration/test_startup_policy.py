"""The window before the proxy listens. "refuse" (default) behaves like iptables: nothing reaches
the app, connections are refused. "passthrough" lets connections go direct, counted. Either way
the switch to interception happens when the proxy calls listen(), with the agent not running."""
from harness.checks import assert_inbound_once, assert_ok, assert_outbound_once, request
from harness.topology import APP_PORT


def _counters(agent, pod):
    return agent.cli_json("workload", pod.name)["counters"]


def test_refuse_until_the_proxy_listens(topo, agent):
    agent.enroll_ok(topo.b)
    topo.b.start_app(ports=(APP_PORT,))
    topo.a.start_sidecar(kind="haproxy")  # A is not enrolled: its client goes straight to B

    result = topo.a.client(topo.b.ip4, APP_PORT)
    assert not result["ok"] and "ConnectionRefused" in result.get("error", ""), result
    assert _counters(agent, topo.b)["inbound_refused_no_listener"] >= 1

    agent.kill()  # the datapath alone must notice the proxy's listen()
    topo.b.start_sidecar(kind="haproxy")
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_passthrough_until_the_proxy_listens(topo, agent):
    agent.enroll_ok(topo.b, startup_policy="passthrough")
    topo.b.start_app(ports=(APP_PORT,))
    topo.a.start_app(ports=(APP_PORT,), name="a-app")
    topo.a.start_sidecar(kind="haproxy")  # only so that A's side can be observed; A unenrolled

    # Inbound to B and outbound from B both go direct while B's proxy is not listening.
    result = topo.a.client(topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    result = topo.b.client(topo.a.ip4, APP_PORT)
    assert result["ok"] and result["json"]["server"] == "a-app", result
    counters = _counters(agent, topo.b)
    assert counters["inbound_startup_passthrough"] >= 1, counters
    assert counters["outbound_startup_passthrough"] >= 1, counters

    agent.kill()
    topo.b.start_sidecar(kind="haproxy")
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))
    result, marks = request(topo, topo.b, topo.a.ip4, APP_PORT)
    assert result["ok"] and result["json"]["server"] == "a-app", result
    assert_outbound_once(topo, topo.b, marks, (topo.a.ip4, APP_PORT))
