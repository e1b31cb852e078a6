"""Pods that existed before the agent: the runtime ran the chained CNI list (bridge + host-local,
then meshlane-cni with failOpen while no agent was there) and recorded libcni's result cache; the
pods' cgroups are shaped like kubelet's systemd driver
(<cg2>/mltest-<id>/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/...), their
proxy and app already run. The agent then starts with cni_cache_dir pointing at that cache:
the chained pod is enrolled and its traffic intercepted (the proxy's listener adopted), a pod
whose list does not chain meshlane-cni is not, a cache entry whose netns is gone is skipped with
the reason; a restart finds everything enrolled already (idempotent); an entry that appears later
is adopted by the periodic run."""
import json
import os

import pytest

from harness import util
from harness.checks import assert_ok, assert_outbound_once, assert_quiet, request
from harness.cni import CniNetwork, check_plugins, pod_ip, runtime_config_for
from harness.meshlane import Agent, meshlane_bin
from harness.topology import APP_PORT, Topology

EXCLUDED_PORT = 9999


@pytest.fixture(scope="module", autouse=True)
def cni_plugins():
    missing = check_plugins()
    if missing:
        pytest.fail(missing)


@pytest.fixture
def kube_topo(request):
    """Two pods whose cgroups sit where kubelet's systemd cgroup driver puts them, under a
    unique test parent; no direct veth (the bridge plugin gives them eth0)."""
    topology = Topology()
    topology.cgroup_root = os.path.join(util.cgroup2_mount(), f"mltest-{topology.id}")
    kubepods = os.path.join(topology.cgroup_root, "kubepods.slice")
    for pod, qos, n in ((topology.a, "burstable", 1), (topology.b, "besteffort", 2)):
        pod.uid = f"{topology.id}00-0000-4000-8000-{n:012x}"
        slice_name = f"kubepods-{qos}-pod{pod.uid.replace('-', '_')}.slice"
        pod.cgroup_dir = os.path.join(kubepods, f"kubepods-{qos}.slice", slice_name)
        pod.cgroup_rel = os.path.relpath(pod.cgroup_dir, util.cgroup2_mount())
    try:
        topology.create()
        topology.a.ip("link", "del", "veth-a")
        yield topology
    finally:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(topology.describe())
        topology.destroy()


@pytest.fixture
def discovery_agent(request, kube_topo):
    """An agent (not started yet) whose discovery reads the test's CNI cache."""
    instance = Agent(meshlane_bin())
    instance.cache_dir = os.path.join(kube_topo.workdir, "cni-cache", "results")
    try:
        instance.prepare()
        with open(instance.config_path, "a") as f:
            f.write(f"discover_pods = true\ncni_cache_dir = {instance.cache_dir}\n"
                    "discover_interval_ms = 500\n")
        yield instance
    finally:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"=== agent log ===\n{instance.log_text()[-6000:]}")
        instance.destroy()


def name_of(topo, pod):
    return f"mltest.pod-{topo.id}-{pod.short}"


def test_pods_running_before_the_agent_are_discovered(kube_topo, discovery_agent):
    topo, agent = kube_topo, discovery_agent
    client, server = topo.a, topo.b
    subnet = f"10.200.{int(topo.id[:2], 16)}"  # CniNetwork's /24, split between two lists
    meshed = CniNetwork(topo, agent.api_socket, fail_open=True, cache_dir=agent.cache_dir,
                        range_start=f"{subnet}.10", range_end=f"{subnet}.99")
    plain = CniNetwork(topo, agent.api_socket, with_meshlane=False, cache_dir=agent.cache_dir,
                       name=f"plain-it-{topo.id}", range_start=f"{subnet}.100",
                       range_end=f"{subnet}.199")

    # The runtime sets the pods up while no agent runs: meshlane-cni passes (failOpen).
    client_rc = runtime_config_for(client, {
        "traffic.sidecar.istio.io/excludeOutboundPorts": str(EXCLUDED_PORT)})
    code, client_result, outputs = meshed.add(client, client_rc)
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    assert "failOpen" in outputs[-1].stderr
    code, server_result, outputs = plain.add(server, runtime_config_for(server, {}))
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    server.ip4 = pod_ip(server_result)
    # A pod deleted while no agent ran (no DEL reached the cache): its IP is nowhere now.
    stale_cache = os.path.join(agent.cache_dir, f"{meshed.name}-ctr-{topo.id}-gone-eth0")
    with open(meshed.cache_path(client)) as f:
        stale = json.load(f)
    stale["containerId"] = f"ctr-{topo.id}-gone"
    stale["cniArgs"] = [["K8S_POD_NAMESPACE", "mltest"], ["K8S_POD_NAME", f"pod-{topo.id}-gone"]]
    stale["result"]["ips"][0]["address"] = f"{subnet}.98/24"
    with open(stale_cache, "w") as f:
        json.dump(stale, f)

    # Proxy and app already run, as on a node where the agent is installed late.
    client.start_sidecar(kind="haproxy", inbound_bind="dual")
    server.start_app(ports=(APP_PORT, EXCLUDED_PORT))
    agent.start()

    assert agent.workload_names() == [name_of(topo, client)]
    workload = agent.cli_json("workload", name_of(topo, client))
    spec = workload["spec"]
    assert spec["netns"] == client.netns_path, "found by its IP on eth0 among /var/run/netns"
    assert spec["exclude_outbound_ports"] == [EXCLUDED_PORT], "the pod's annotation applies"
    assert workload["cgroup_resolved"] == client.cgroup_dir
    log = agent.log_text()
    assert (f"discovery: adopted pod {name_of(topo, client)} from CNI cache entry "
            f"{os.path.basename(meshed.cache_path(client))}") in log, log
    assert (f"discovery: skipped CNI cache entry {os.path.basename(plain.cache_path(server))} "
            f"(pod {name_of(topo, server)}): network {plain.name} does not chain meshlane-cni"
            ) in log, log
    assert (f"discovery: skipped CNI cache entry {os.path.basename(stale_cache)} "
            f"(pod mltest.pod-{topo.id}-gone): its network namespace is gone: no namespace has "
            f"{subnet}.98 on eth0") in log, log

    # Intercepted: through the sidecar that was listening before the agent existed.
    result, marks = request(topo, client, server.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    assert_outbound_once(topo, client, marks, (server.ip4, APP_PORT))
    result, marks = request(topo, client, server.ip4, EXCLUDED_PORT)
    assert_ok(topo, result, server="b-app", local_port=EXCLUDED_PORT)
    assert_quiet(topo, client, marks, f"port {EXCLUDED_PORT} is excluded by annotation")

    # A restart re-adopts from its records; discovery finds the pod enrolled and leaves it.
    agent.restart()
    assert agent.workload_names() == [name_of(topo, client)]
    assert f"(pod {name_of(topo, client)}): already enrolled" in agent.log_text()

    # A pod set up while the agent was briefly unreachable shows up in the cache later: the
    # periodic run adopts it (the test puts it on the meshed network by re-running ADD for B
    # under the meshed list, with the agent socket pointing nowhere).
    for r in plain.delete(server, runtime_config_for(server, {})):
        assert r.returncode == 0, r.stdout + r.stderr
    late = CniNetwork(topo, "/nonexistent/api.sock", fail_open=True, cache_dir=agent.cache_dir,
                      name=meshed.name, range_start=f"{subnet}.10", range_end=f"{subnet}.99")
    code, _, outputs = late.add(server, runtime_config_for(server, {}))
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    util.wait_until(lambda: name_of(topo, server) in agent.workload_names(), timeout=15,
                    interval=0.2, message="periodic discovery adopting the late pod")
    assert agent.cli_json("workload", name_of(topo, server))["spec"]["netns"] == server.netns_path


def test_discovery_off_enrolls_nothing(kube_topo, discovery_agent):
    topo, agent = kube_topo, discovery_agent
    # A key set twice is a config error (file:line), so the fixture's line is changed in place.
    with open(agent.config_path) as f:
        text = f.read()
    with open(agent.config_path, "w") as f:
        f.write(text.replace("discover_pods = true", "discover_pods = false"))
    network = CniNetwork(topo, agent.api_socket, fail_open=True, cache_dir=agent.cache_dir)
    code, _, outputs = network.add(topo.a, runtime_config_for(topo.a, {}))
    assert code == 0, [o.stdout + o.stderr for o in outputs]
    agent.start()
    assert agent.workload_names() == []
    assert "discovery:" not in agent.log_text()
