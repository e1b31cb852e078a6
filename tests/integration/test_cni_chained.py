"""meshlane-cni as a chained CNI plugin, for real: Debian's containernetworking-plugins `bridge`
(+ `host-local` IPAM) then `meshlane-cni`, invoked the way a runtime runs a .conflist (each
plugin gets the previous result as prevResult, DEL runs in reverse), on namespaces this test
creates. The client pod is enrolled by ADD with its Istio annotations and its traffic goes through
its HAProxy sidecar (uid 1337); DEL unenrolls it; with the agent down ADD fails the sandbox with
a CNI error, or passes with failOpen."""
import json

import pytest

from harness.api import curl
from harness.checks import assert_ok, assert_outbound_once, assert_quiet, request
from harness.cni import CniNetwork, check_plugins, cni_pods, pod_ip, runtime_config_for
from harness.topology import APP_PORT

EXCLUDED_PORT = 9999


@pytest.fixture(scope="module", autouse=True)
def cni_plugins():
    missing = check_plugins()
    if missing:
        pytest.fail(missing)


def workload_name(network, pod):
    return f"mltest.pod-{network.topo.id}-{pod.short}"


def test_chained_add_enrolls_intercepts_and_del_removes(topo, agent):
    client, server = cni_pods(topo)
    network = CniNetwork(topo, agent.api_socket)
    client_rc = runtime_config_for(client, {
        "traffic.sidecar.istio.io/excludeOutboundPorts": str(EXCLUDED_PORT),
        "traffic.sidecar.istio.io/excludeInboundPorts": "2222"})
    server_rc = runtime_config_for(server, {"sidecar.istio.io/inject": "false"})

    code, server_result, outputs = network.add(server, server_rc)
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    code, client_result, outputs = network.add(client, client_rc)
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    # A chained plugin returns its prevResult unchanged.
    assert client_result == json.loads(outputs[0].stdout)
    server.ip4 = pod_ip(server_result)

    # Enrolled under <namespace>.<pod>, with the pod's netns, cgroup and annotations; the server
    # pod (inject=false) is not.
    name = workload_name(network, client)
    assert agent.workload_names() == [name]
    spec = agent.cli_json("workload", name)["spec"]
    assert spec["netns"] == client.netns_path
    assert spec["exclude_outbound_ports"] == [EXCLUDED_PORT]
    assert spec["exclude_inbound_ports"] == [2222]
    # Its Kubernetes identity, which labels its metrics (namespace, pod).
    assert (spec["k8s_namespace"], spec["k8s_pod"]) == ("mltest", f"pod-{topo.id}-{client.short}")
    metrics = curl(agent, "GET", "/metrics").body
    assert (f'meshlane_workload_info{{workload="{name}",namespace="mltest",'
            f'pod="pod-{topo.id}-{client.short}",') in metrics, metrics[:2000]
    for r in network.check(client, client_rc, client_result):
        assert r.returncode == 0, r.stdout + r.stderr

    # Traffic from a process in the pod's cgroup goes through its sidecar; the excluded port
    # does not.
    client.start_sidecar(kind="haproxy", inbound_bind="dual")
    server.start_app(ports=(APP_PORT, EXCLUDED_PORT))
    result, marks = request(topo, client, server.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    assert_outbound_once(topo, client, marks, (server.ip4, APP_PORT))
    result, marks = request(topo, client, server.ip4, EXCLUDED_PORT)
    assert_ok(topo, result, server="b-app", local_port=EXCLUDED_PORT)
    assert_quiet(topo, client, marks, f"port {EXCLUDED_PORT} is excluded by annotation")

    # DEL runs in reverse order: meshlane-cni first unenrolls (the connection is direct again,
    # the interface still there), DEL again is a no-op, then the bridge plugin removes eth0.
    meshlane_cni = network.plugins[1]
    r = network._invoke(meshlane_cni, "DEL", client, client_rc)
    assert r.returncode == 0, r.stdout + r.stderr
    assert agent.workload_names() == []
    result, marks = request(topo, client, server.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    assert_quiet(topo, client, marks, "unenrolled by CNI DEL")
    check = network._invoke(meshlane_cni, "CHECK", client, client_rc, client_result)
    assert check.returncode != 0 and json.loads(check.stdout)["code"] == 101, check.stdout
    for r in network.delete(client, client_rc):
        assert r.returncode == 0, r.stdout + r.stderr
    for r in network.delete(server, server_rc):
        assert r.returncode == 0, r.stdout + r.stderr


def test_agent_down_fails_the_sandbox_unless_fail_open(topo, agent):
    client, _ = cni_pods(topo)
    runtime_config = runtime_config_for(client, {})
    agent.stop()

    network = CniNetwork(topo, agent.api_socket)
    code, error, outputs = network.add(client, runtime_config)
    assert code != 0, "ADD must fail while the agent is down (failOpen is false by default)"
    assert error["cniVersion"] == "1.0.0" and error["code"] == 11, error
    assert "meshlane agent unreachable" in error["msg"], error
    assert "meshlane agent unreachable" in outputs[-1].stderr
    # The runtime then tears the sandbox down: DEL must succeed with the agent still down.
    for r in network.delete(client, runtime_config):
        assert r.returncode == 0, r.stdout + r.stderr

    open_network = CniNetwork(topo, agent.api_socket, fail_open=True)
    code, result, outputs = open_network.add(client, runtime_config)
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    assert result == json.loads(outputs[0].stdout)
    assert "failOpen" in outputs[-1].stderr
    open_network.delete(client, runtime_config)
