"""meshlane-cni as a chained CNI plugin, for real: Debian's containernetworking-plugins `bridge`
(+ `host-local` IPAM) then `meshlane-cni`, invoked the way a runtime runs a .conflist (each
plugin gets the previous result as prevResult, DEL runs in reverse), on namespaces this test
creates. The client pod is enrolled by ADD with its Istio annotations and its traffic goes through
its HAProxy sidecar (uid 1337); DEL unenrolls it; with the agent down ADD fails the sandbox with
a CNI error, or passes with failOpen."""
import json
import os
import subprocess

import pytest

from harness import cleanup
from harness.checks import assert_ok, assert_outbound_once, assert_quiet, request
from harness.topology import APP_PORT

CNI_BIN_DIR = "/usr/lib/cni"
EXCLUDED_PORT = 9999


def meshlane_cni_bin():
    default = os.path.join(os.path.dirname(os.environ.get("MESHLANE_BIN") or
                                           "/work/main/build/meshlane"), "meshlane-cni")
    return os.environ.get("MESHLANE_CNI_BIN") or default


@pytest.fixture(scope="module", autouse=True)
def cni_plugins():
    for plugin in ("bridge", "host-local"):
        if not os.access(os.path.join(CNI_BIN_DIR, plugin), os.X_OK):
            pytest.fail(f"{CNI_BIN_DIR}/{plugin} missing: apt-get install containernetworking-plugins"
                        " (scripts/install-deps.sh)")
    if not os.access(meshlane_cni_bin(), os.X_OK):
        pytest.fail(f"meshlane-cni not found at {meshlane_cni_bin()} (set MESHLANE_CNI_BIN)")


class CniNetwork:
    """A .conflist (bridge + host-local, then meshlane-cni) and a minimal runtime for it."""

    def __init__(self, topo, agent_socket, fail_open=False):
        self.topo = topo
        self.bridge = f"mlbr{topo.id}"  # <= 15 characters
        self.subnet = f"10.200.{int(topo.id[:2], 16)}.0/24"
        self.name = f"meshlane-it-{topo.id}"
        self.bin_dir = os.path.dirname(os.path.realpath(meshlane_cni_bin()))
        self.plugins = [
            {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                      "dataDir": os.path.join(topo.workdir, "cni-ipam")}},
            {"type": "meshlane-cni", "agentSocket": agent_socket, "failOpen": fail_open,
             "capabilities": {"cgroupPath": True, "podAnnotations": True}},
        ]
        # The bridge plugin creates the bridge on first ADD; make sure it goes away.
        cleanup_token = cleanup.REGISTRY.add(f"ip link del {self.bridge}",
                                             lambda: cleanup.delete_link(self.bridge),
                                             {"kind": "link", "name": self.bridge})
        topo._tokens.insert(0, cleanup_token)  # after the netns are gone (LIFO)

    def _invoke(self, plugin, command, pod, runtime_config, prev_result=None):
        config = {"cniVersion": "1.0.0", "name": self.name, **plugin}
        capabilities = config.pop("capabilities", {})
        if capabilities:  # what libcni does with capability args
            config["runtimeConfig"] = {k: v for k, v in runtime_config.items()
                                       if capabilities.get(k)}
        if prev_result is not None:
            config["prevResult"] = prev_result
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_CONTAINERID": f"ctr-{self.topo.id}-{pod.short}",
               "CNI_NETNS": pod.netns_path, "CNI_IFNAME": "eth0",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=mltest;"
                           f"K8S_POD_NAME=pod-{self.topo.id}-{pod.short};K8S_POD_UID=u-{pod.short}",
               "CNI_PATH": f"{CNI_BIN_DIR}:{self.bin_dir}"}
        binary = os.path.join(CNI_BIN_DIR if plugin["type"] != "meshlane-cni" else self.bin_dir,
                              plugin["type"])
        result = subprocess.run([binary], input=json.dumps(config), capture_output=True,
                                text=True, env=env, timeout=30)
        return result

    def add(self, pod, runtime_config):
        """Runs ADD through the chain; returns (exit code of the failing plugin or 0, the last
        stdout parsed, per-plugin outputs)."""
        prev = None
        outputs = []
        for plugin in self.plugins:
            result = self._invoke(plugin, "ADD", pod, runtime_config, prev)
            outputs.append(result)
            if result.returncode != 0:
                return result.returncode, json.loads(result.stdout or "{}"), outputs
            prev = json.loads(result.stdout)
        return 0, prev, outputs

    def check(self, pod, runtime_config, prev_result):
        return [self._invoke(p, "CHECK", pod, runtime_config, prev_result) for p in self.plugins]

    def delete(self, pod, runtime_config, plugins=None):
        return [self._invoke(p, "DEL", pod, runtime_config)
                for p in reversed(plugins or self.plugins)]


def pod_ip(result):
    return result["ips"][0]["address"].split("/")[0]


def workload_name(network, pod):
    return f"mltest.pod-{network.topo.id}-{pod.short}"


def cni_pods(topo):
    """The topology's pods without their direct veth: the bridge plugin gives them eth0."""
    topo.a.ip("link", "del", "veth-a")
    return topo.a, topo.b


def runtime_config_for(pod, annotations):
    # The cgroupPath capability names the pod cgroup from the cgroup root, as kubelet/containerd
    # do (e.g. /kubepods/burstable/pod<uid>), not by its mount path.
    return {"cgroupPath": "/" + pod.cgroup_rel, "podAnnotations": annotations}


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
