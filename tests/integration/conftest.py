"""Fixtures for the privileged integration tests. Every fixture undoes what it created in its
finalizer; the cleanup registry (harness/cleanup.py) is the session- and exit-level safety net,
and sweeps what a SIGKILLed earlier run left behind."""
import os
import socket
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cleanup, iptables  # noqa: E402
from harness.meshlane import Agent, meshlane_bin  # noqa: E402
from harness.topology import APP_PORT, Topology  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "agent_config(**settings): more agent.conf settings for "
                            "the test's `agent` fixture")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


@pytest.fixture(scope="session", autouse=True)
def safety_net():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (netns, cgroups, BPF)")
    cleanup.sweep_stale_runs()
    # A fresh machine may have no bpffs yet; the agent would mount it, but tests that pin their
    # own programs may run before any agent starts.
    if not any(line.split()[2:3] == ["bpf"] for line in open("/proc/mounts")):
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)
    yield
    cleanup.REGISTRY.run_all()


@pytest.fixture
def topo(request):
    """Two pods (netns + cgroups), no processes yet."""
    topology = Topology()
    try:
        topology.create()
        yield topology
    finally:
        if _failed(request):
            print(f"\n=== topology {topology.id} at failure ===\n{topology.describe()}",
                  file=sys.stderr)
        topology.destroy()


@pytest.fixture
def mesh_topo(topo):
    """Pods with HAProxy sidecars (dual-stack inbound listener, no iptables) and B's app on
    8080 (v4 + v6): the starting point of the meshlane tests."""
    for pod in topo.pods:
        pod.start_sidecar(kind="haproxy", inbound_bind="dual")
    topo.b.start_app(ports=(APP_PORT,))
    return topo


def start_baseline(topo, sidecar_kind="haproxy", app_ports=(APP_PORT,), **rule_options):
    """The Istio iptables capture in both pods, sidecars bound the way REDIRECT needs (split
    v4/v6 inbound listeners, inbound forwarding from 127.0.0.6 / ::6 like Envoy), B's app."""
    for pod in topo.pods:
        iptables.apply_istio_capture(pod, **rule_options)
        pod.start_sidecar(kind=sidecar_kind, inbound_bind="split", passthrough_source=True)
    topo.b.start_app(ports=app_ports)
    return topo


@pytest.fixture
def baseline_topo(topo):
    """Reusable iptables baseline with HAProxy sidecars (IPv4 capture)."""
    return start_baseline(topo, "haproxy")


@pytest.fixture
def agent(request):
    """A running meshlane agent with its own state dir, API socket and pin dir (more settings:
    @pytest.mark.agent_config(key=value)). The finalizer unenrolls what is left, stops the agent
    by PID and removes the pin dir."""
    binary = meshlane_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"meshlane binary not found at {binary} (set MESHLANE_BIN)")
    marker = request.node.get_closest_marker("agent_config")
    instance = Agent(binary, extra_config=marker.kwargs if marker else None)
    try:
        instance.start()
        yield instance
    finally:
        if _failed(request):
            print(f"\n=== agent log ===\n{instance.log_text()[-4000:]}", file=sys.stderr)
        instance.destroy()



def enroll_pods(agent, topo, a=None, b=None):
    """Enrolls pod A and/or B (their pod cgroups) with per-pod CLI options; None skips a pod."""
    for pod, options in ((topo.a, a), (topo.b, b)):
        if options is not None:
            agent.enroll_ok(pod, **options)


def start_mesh(topo, agent, a=None, b=None, b_ports=(APP_PORT,), a_ports=(),
               a_kind="haproxy", b_kind="haproxy"):
    """The Istio order: enroll first (the init container's job), then start the sidecars and
    the apps. a/b are enroll options (None: leave that pod unenrolled)."""
    enroll_pods(agent, topo, a=a, b=b)
    # MESHLANE_IT_INBOUND_BIND=split: separate v4/v6 inbound listeners instead of one v4v6
    # socket (a diagnosis knob, and what an iptables-REDIRECT stand-in needs).
    bind = os.environ.get("MESHLANE_IT_INBOUND_BIND", "dual")
    topo.a.start_sidecar(kind=a_kind, inbound_bind=bind)
    topo.b.start_sidecar(kind=b_kind, inbound_bind=bind)
    if b_ports:
        topo.b.start_app(ports=b_ports)
    if a_ports:
        topo.a.start_app(ports=a_ports)
    return topo


@pytest.fixture
def meshed(topo, agent):
    """Both pods enrolled with default settings, then HAProxy sidecars and B's app started."""
    return start_mesh(topo, agent, a={}, b={})


@pytest.fixture
def hostile_paths():
    """Paths an enrolment must refuse without blocking: a FIFO (open() would block), a listening
    unix socket (ENXIO), a symlink to a regular file, and the directory holding them."""
    from harness import util
    directory = tempfile.mkdtemp(prefix=f"meshlane-hostile-{util.unique_id()}-")
    token = cleanup.REGISTRY.add(f"rm {directory}", lambda: cleanup.remove_tree(directory),
                                 {"kind": "dir", "path": directory})
    fifo = os.path.join(directory, "fifo")
    os.mkfifo(fifo)
    sock_path = os.path.join(directory, "sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    link = os.path.join(directory, "link")
    os.symlink("/etc/passwd", link)
    yield {"fifo": fifo, "socket": sock_path, "link": link, "dir": directory}
    listener.close()
    cleanup.REGISTRY.undo(token)
