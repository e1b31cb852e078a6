"""The datapath outlives the agent: pins keep programs attached through a crash, a restarted
agent re-adopts its workloads, and unenroll after a restart really detaches."""
from conftest import start_mesh
from harness.checks import assert_inbound_once, assert_ok, assert_outbound_once, assert_quiet, \
    request
from harness.meshlane import attached_summary
from harness.topology import APP_PORT


def assert_intercepted(topo):
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))


def test_sigkill_keeps_traffic_intercepted(topo, agent):
    start_mesh(topo, agent, a={}, b={})
    assert_intercepted(topo)
    agent.kill()
    assert not agent.alive()
    assert_intercepted(topo)


def test_restart_readopts_workloads(topo, agent):
    start_mesh(topo, agent, a={"exclude_outbound_ports": [9999]}, b={})
    before = {w["spec"]["name"]: w["spec"] for w in agent.workloads()}
    agent.kill()
    agent.start()
    after = {w["spec"]["name"]: w["spec"] for w in agent.workloads()}
    assert after == before, f"workloads changed across restart:\n{before}\n{after}"
    assert_intercepted(topo)


def test_unenroll_after_restart_detaches(topo, agent):
    start_mesh(topo, agent, a={}, b={})
    agent.kill()
    agent.start()
    for pod in topo.pods:
        agent.cli_ok("unenroll", pod.name)
    assert agent.workload_names() == []
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_quiet(topo, topo.a, marks, "A is unenrolled")
    assert_quiet(topo, topo.b, marks, "B is unenrolled")
    for pod in topo.pods:
        assert attached_summary(pod) == {}, f"still attached for {pod.name}"
