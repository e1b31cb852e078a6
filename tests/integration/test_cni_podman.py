"""End to end with a real container runtime: Debian's podman 4.3 (CNI backend, runc) creates
pods on the CNI chain [bridge, host-local, meshlane-cni]; no test code calls the plugin. Each
pod has an app container (busybox) and an HAProxy sidecar container as uid 1337, built locally
with buildah from scratch. The runtime's own CNI ADD enrolls the pod at sandbox creation; its
traffic to a second pod is captured once in each direction; `podman pod rm` (CNI DEL) unenrolls
it; a pod created while the agent is down is discovered from the runtime's CNI result cache
(/var/lib/cni/results, as podman's libcni wrote it) when the agent comes back.

Private podman setup and what this host needs: harness/podman.py."""
import json
import os
import tempfile

import pytest

from harness import cleanup
from harness.cni import check_plugins
from harness.podman import Podman, cgroup_of, check_tools
from harness.util import wait_until

APP_PORT = 8080
CNI_CACHE_DIR = "/var/lib/cni/results"


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = check_tools() or check_plugins()
    if missing:
        pytest.fail(missing)


@pytest.fixture
def pm(agent):
    workdir = tempfile.mkdtemp(prefix="mlpm-")
    token = cleanup.REGISTRY.add(f"rm {workdir}", lambda: cleanup.remove_tree(workdir),
                                 {"kind": "dir", "path": workdir})
    podman = Podman(workdir, agent.api_socket)
    try:
        podman.setup()
        podman.build_images()
        yield podman
    finally:
        podman.destroy()
        cleanup.REGISTRY.undo(token)
    assert podman.leftovers() == [], "left behind after removing every pod"


def workload_of(podman, pod):
    """meshlane-cni's name for a podman pod: podman passes K8S_POD_NAME only, no namespace, so
    the name comes from the sandbox (infra) container ID."""
    return "cni-" + podman.infra_id(pod)[:32]


def sidecar_listening(podman, pod):
    """HAProxy's outbound (15001) and inbound (15006) listeners are up in the pod's netns."""
    tables = "".join(podman.exec_app(pod, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout)
    return all(f":{port:04X} " in tables for port in (15001, 15006))


def fetch(podman, client, server_ip):
    # busybox nc, not busybox wget: Debian's busybox-static wget segfaults (exit 139) even on
    # the host, before connecting.
    request = r"GET /index.html HTTP/1.0\r\n\r\n"
    return podman.exec_app(client, "sh", "-c",
                           f"printf '{request}' | nc -w 5 {server_ip} {APP_PORT}")


def assert_captured_once(podman, client, server, server_ip):
    """One request client -> server: one outbound entry at the client's sidecar (original
    destination = the server pod), one inbound entry at the server's sidecar."""
    wait_until(lambda: sidecar_listening(podman, client) and sidecar_listening(podman, server),
               timeout=20, message="sidecars listening")
    before_out = len(podman.sidecar_entries(client))
    before_in = len(podman.sidecar_entries(server))
    result = fetch(podman, client, server_ip)
    assert result.returncode == 0 and "hello from the server pod" in result.stdout, (
        result.stdout + result.stderr)
    wait_until(lambda: len(podman.sidecar_entries(client)) > before_out
               and len(podman.sidecar_entries(server)) > before_in,
               timeout=10, message="both sidecars logging the connection")
    outbound = podman.sidecar_entries(client)[before_out:]
    inbound = podman.sidecar_entries(server)[before_in:]
    assert [(e.direction, e.frontend_addr) for e in outbound] == [
        ("outbound", (server_ip, APP_PORT))], [e.raw for e in outbound]
    assert [(e.direction, e.frontend_addr) for e in inbound] == [
        ("inbound", (server_ip, APP_PORT))], [e.raw for e in inbound]


def enrolled(agent, name):
    return name in agent.workload_names()


@pytest.mark.agent_config(discover_pods="true", cni_cache_dir=CNI_CACHE_DIR,
                          discover_interval_ms=500)
def test_podman_pods_are_captured_released_and_discovered(agent, pm):
    server, client, late = (f"srv{pm.id}", f"cli{pm.id}", f"late{pm.id}")
    server_ip = pm.create_pod(server, app_cmd=["/bin/httpd", "-f", "-p", str(APP_PORT),
                                               "-h", "/www"])
    pm.create_pod(client)

    # Enrolled by podman's own CNI ADD, with the pod's netns and cgroup (the cgroup that holds
    # the app and the sidecar containers).
    for pod in (server, client):
        name = workload_of(pm, pod)
        assert enrolled(agent, name), (name, agent.workload_names())
        spec = agent.cli_json("workload", name)["spec"]
        infra = json.loads(pm.podman("inspect", pm.infra_id(pod)).stdout)[0]
        assert spec["netns"] == infra["NetworkSettings"]["SandboxKey"]
        assert spec["cgroup"].strip("/") == f"mltest-pm-{pm.id}/{pod}"
        for container in (f"{pod}-app", f"{pod}-sidecar"):
            assert cgroup_of(pm, container).startswith(f"/mltest-pm-{pm.id}/{pod}/")
    assert os.path.exists(pm.cni_cache_path(client))

    assert_captured_once(pm, client, server, server_ip)

    # Deleting the pod: podman's CNI DEL unenrolls it (and libcni drops its cache entry).
    client_name, client_cache = workload_of(pm, client), pm.cni_cache_path(client)
    pm.remove_pod(client)
    assert not enrolled(agent, client_name), agent.workload_names()
    assert not os.path.exists(client_cache)
    assert os.listdir(os.path.join(pm.dir, "meshlane-cni", pm.network)) != []  # server's record

    # A pod created while the agent is down starts (failOpen) uncaptured; the agent discovers it
    # from the cache entry podman wrote when it comes back.
    agent.stop()
    pm.create_pod(late)
    late_name = workload_of(pm, late)
    assert os.path.exists(pm.cni_cache_path(late))
    agent.start()
    wait_until(lambda: enrolled(agent, late_name), timeout=15, interval=0.2,
               message=f"discovery adopting {late_name}")
    assert f"discovery: adopted pod {late_name}" in agent.log_text()
    assert_captured_once(pm, late, server, server_ip)

    for pod in (late, server):
        pm.remove_pod(pod)
    assert agent.workload_names() == []
