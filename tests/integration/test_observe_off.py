"""`observe = false` in the agent config: the datapath alone, as the bench's "obs off" column
measures it (bench/README.md). Status names observe_connect and observe_drops disabled with that
reason, no observation program is attached to the pod (no TLS wire cgroup_skb), and redirection
and SO_ORIGINAL_DST work exactly as with the observers on."""
import pytest

from harness.checks import assert_ok, assert_outbound_once, request
from harness.meshlane import cgroup_programs
from harness.topology import APP_PORT
from conftest import start_mesh

REASON = "observe = false in the agent config"


@pytest.mark.agent_config(observe="false")
def test_observe_false_runs_the_datapath_without_observers(topo, agent):
    states = agent.cli_json("status")["feature_states"]
    for name in ("observe_connect", "observe_drops"):
        assert states[name] == {"enabled": False, "essential": False, "reason": REASON,
                                "by_config": True}, states
    assert states["redirect"]["enabled"] is True, states
    assert f"feature observe_drops disabled: {REASON}" in agent.log_text()

    start_mesh(topo, agent, a={}, b={})
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))

    # The redirect programs are on the pod cgroup, the observers' cgroup_skb programs are not.
    for pod in (topo.a, topo.b):
        progs = cgroup_programs(pod.cgroup(None))
        names = {p.get("name") for p in progs}
        types = {p.get("attach_type") for p in progs}
        assert "redirect_connect4" in names, progs
        assert not any(n and n.startswith("observe_") for n in names), progs
        assert not types & {"cgroup_inet_ingress", "cgroup_inet_egress", "ingress", "egress"}, \
            progs
