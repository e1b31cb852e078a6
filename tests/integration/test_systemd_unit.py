"""The agent as deploy/systemd/meshlane.service runs it, without needing systemd as PID 1:
Type=notify readiness (READY=1 on $NOTIFY_SOCKET only once the API answers, STOPPING=1 on
SIGTERM), and the unit's capability bounding set with no_new_privs (setpriv) still enough to
load, enroll, adopt an already-listening proxy, intercept and verify."""
import json
import os
import re
import socket
import threading
import time

import pytest

from conftest import _failed, enroll_pods
from harness import cleanup, util
from harness.api import curl
from harness.checks import assert_inbound_once, assert_ok, assert_outbound_once, request
from harness.meshlane import Agent, meshlane_bin
from harness.topology import APP_PORT

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "systemd",
                    "meshlane.service")


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket. For every message it records
    whether the agent's REST API answered GET /v1/health at that moment."""

    def __init__(self, path, agent):
        self.path = path
        self.agent = agent
        self.messages = []  # (text, api_answered)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = "\0" + path[1:] if path.startswith("@") else path
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            answered = None
            if "READY=1" in text.split("\n"):
                answered = curl(self.agent, "GET", "/v1/health", timeout=5).status == 200
            self.messages.append((text, answered))

    def wait_for(self, assignment, timeout=20):
        util.wait_until(lambda: any(assignment in m[0].split("\n") for m in self.messages),
                        timeout=timeout, message=f"{assignment} on the notify socket")
        return next(m for m in self.messages if assignment in m[0].split("\n"))

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()
        if not self.path.startswith("@"):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


@pytest.fixture
def notified_agent(request, monkeypatch):
    """An agent started with NOTIFY_SOCKET pointing at a NotifyListener (a path or, with
    request.param == "abstract", an abstract socket name)."""
    instance = Agent(meshlane_bin())
    instance.prepare()
    if getattr(request, "param", "path") == "abstract":
        path = f"@meshlane-notify-{instance.id}"
    else:
        path = os.path.join(instance.dir, "notify.sock")
    listener = NotifyListener(path, instance)
    token = cleanup.REGISTRY.add(f"close notify socket {path}", listener.close)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        instance.start()
        yield instance, listener
    finally:
        instance.destroy()
        cleanup.REGISTRY.undo(token)


@pytest.mark.parametrize("notified_agent", ["path", "abstract"], indirect=True)
def test_ready_only_after_api_answers_and_stopping_on_sigterm(notified_agent):
    agent, listener = notified_agent
    text, api_answered = listener.wait_for("READY=1")
    assert api_answered, f"READY=1 arrived before GET /v1/health answered: {text!r}"
    assert f"STATUS=API on {agent.api_socket}" in text.split("\n"), text
    ready = [m for m in listener.messages if "READY=1" in m[0].split("\n")]
    assert len(ready) == 1, f"READY=1 sent {len(ready)} times: {listener.messages}"
    agent.stop()
    listener.wait_for("STOPPING=1", timeout=5)
    assert agent.process.returncode == 0, agent.log_text()[-2000:]


def test_no_notify_socket_no_message(monkeypatch):
    """Without NOTIFY_SOCKET (not under systemd) the agent starts as before and logs no
    notification error."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    agent = Agent(meshlane_bin())
    try:
        agent.start()
        assert "systemd notification" not in agent.log_text()
    finally:
        agent.destroy()


def unit_capabilities():
    with open(UNIT) as f:
        text = f.read()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert re.search(r"^NoNewPrivileges=yes$", text, re.M), "the test assumes NoNewPrivileges"
    return [cap.lower().removeprefix("cap_") for cap in bounding]


@pytest.fixture
def unit_agent(request):
    """An agent (root, as the unit runs it) limited to the unit's CapabilityBoundingSet, with
    no_new_privs, as systemd would start it."""
    caps = ",".join(["-all"] + ["+" + cap for cap in unit_capabilities()])
    instance = Agent(meshlane_bin())
    instance.launch_prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", "-all",
                              "--no-new-privs", "--"]
    try:
        instance.start()
        yield instance
    finally:
        if _failed(request):
            print(f"\n=== agent log ===\n{instance.log_text()[-4000:]}")
        instance.destroy()


def test_unit_capabilities_are_enough(mesh_topo, unit_agent):
    """Sidecars listen before enrolment (adoption by pidfd_getfd needs CAP_SYS_PTRACE and
    reading other users' /proc/PID/fd), traffic is intercepted both ways, and the in-pod probe
    of `meshlane verify` (setns, then the proxy's uid/gid) passes."""
    agent = unit_agent
    with open(f"/proc/{agent.process.pid}/status") as f:
        status = f.read()
    assert "NoNewPrivs:\t1" in status, status
    topo = mesh_topo
    enroll_pods(agent, topo, a={}, b={})
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))
    assert_inbound_once(topo, topo.b, marks, (topo.b.ip4, APP_PORT))
    status = agent.cli_json("status")
    disabled = {name: state["reason"] for name, state in status["feature_states"].items()
                if not state["enabled"]}
    # A feature this kernel lacks may be off; none may be off for want of a privilege.
    assert all("EPERM" not in r and "permitted" not in r.lower() and "needs root" not in r
               for r in disabled.values()), disabled
    started = time.monotonic()
    verify = agent.cli("verify", topo.b.name, "--json", timeout=30)
    assert verify.returncode == 0, f"{verify.stdout}\n{verify.stderr}\n{agent.log_text()[-3000:]}"
    assert json.loads(verify.stdout)["passed"]
    assert time.monotonic() - started < 20
