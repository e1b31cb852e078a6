"""Degraded start: every part of the agent is probed at start and only what works is enabled.
MESHLANE_TEST_DISABLE_FEATURE=<name> makes that feature's probe fail the way a verifier rejection
does (a real rejected program, so the reason carries a real verifier log tail).

- an optional part off (observe_drops): status names it disabled with the reason, enrolment and
  redirection work as usual;
- the essential part off (redirect), e.g. an upgrade to a binary the kernel rejects: the agent
  still serves status, lists the recorded workloads and keeps their pinned interception running
  untouched, refuses enrol/unenrol with 503 "unavailable" naming why; the next healthy agent
  re-adopts everything."""
import json

import pytest

from harness import util
from harness.api import ReflectionClient, curl
from harness.checks import assert_ok, assert_outbound_once, request
from harness.meshlane import (STATUS_ANSWERED, STATUS_DEGRADED, STATUS_NOT_READY, Agent,
                              meshlane_bin)
from harness.topology import APP_PORT
from conftest import start_mesh


@pytest.fixture
def make_agent(request, monkeypatch):
    """Agents started with MESHLANE_TEST_DISABLE_FEATURE set as the test asks."""
    instances = []

    def start(disable=None, instance=None, extra_config=None):
        if disable:
            monkeypatch.setenv("MESHLANE_TEST_DISABLE_FEATURE", disable)
        else:
            monkeypatch.delenv("MESHLANE_TEST_DISABLE_FEATURE", raising=False)
        instance = instance or Agent(meshlane_bin(), extra_config=extra_config)
        if instance not in instances:
            instances.append(instance)
        return instance.start()

    yield start
    for instance in instances:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"=== agent log ===\n{instance.log_text()[-5000:]}")
        monkeypatch.delenv("MESHLANE_TEST_DISABLE_FEATURE", raising=False)
        instance.destroy()


def assert_forced_reason(state, name):
    assert state["enabled"] is False, state
    reason = state["reason"]
    program = ("probe_" + name)[:15]  # BPF_OBJ_NAME_LEN
    assert reason.startswith("probe forced to fail by MESHLANE_TEST_DISABLE_FEATURE: program "
                             + program), reason
    assert "was rejected by the kernel (Permission denied); verifier log tail:" in reason, reason
    assert "R2 !read_ok" in reason, reason


def status_code(*target, method="GET"):
    """HTTP status of one request with curl (HEAD as --head: curl -X HEAD would wait for the
    Content-Length bytes that a HEAD answer never sends)."""
    how = ["--head"] if method == "HEAD" else ["-X", method]
    result = util.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *how,
                       "--max-time", "10", *target], check=False)
    return int(result.stdout.strip() or 0)


def scrape_get(port, path, method="GET"):
    """One plain-HTTP request to the scrape listener on 127.0.0.1 (what a kubelet probe does)."""
    return status_code(f"http://127.0.0.1:{port}{path}", method=method)


def grpc_health(agent):
    client = ReflectionClient(agent.grpc_socket)
    try:
        return client.health(), client.health("meshlane.v1.Agent")
    finally:
        client.close()


def test_optional_feature_off_is_reported_and_the_rest_works(topo, make_agent):
    agent = make_agent(disable="observe_drops")
    states = agent.cli_json("status", codes=STATUS_ANSWERED)["feature_states"]
    assert set(states) >= {"redirect", "observe_connect", "observe_drops", "fast_path"}, states
    assert_forced_reason(states["observe_drops"], "observe_drops")
    assert states["observe_drops"]["essential"] is False
    assert states["redirect"] == {"enabled": True, "essential": True, "reason": "",
                                  "by_config": False}, states
    assert states["observe_connect"]["enabled"] is True, states
    # Degraded: interception works, so still ready for probes and gRPC health; `status` says
    # why with its own exit code.
    shown = agent.cli("status")
    assert shown.returncode == STATUS_DEGRADED, shown
    text = shown.stdout
    assert "  observe_drops: DISABLED — probe forced to fail" in text, text
    assert "  redirect: enabled" in text, text
    assert "Readiness:      DEGRADED" in shown.stderr, shown.stderr
    assert "observe_drops is off (optional_feature_off): probe forced to fail" in shown.stderr
    ready = curl(agent, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "degraded", ready
    assert grpc_health(agent) == (1, 1)  # SERVING for "" and meshlane.v1.Agent
    assert "feature observe_drops disabled: probe forced to fail" in agent.log_text()

    # Enrolment and redirection are unaffected.
    start_mesh(topo, agent, a={}, b={})
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))


def test_redirect_off_serves_status_refuses_enrolment_and_keeps_pins(topo, make_agent):
    # A healthy agent enrolls pod A; then it is replaced by one whose redirect datapath cannot
    # load (what an upgrade to a binary the verifier rejects looks like).
    agent = make_agent()
    start_mesh(topo, agent, a={}, b=None)
    agent.stop()
    make_agent(disable="redirect", instance=agent)

    states = agent.cli_json("status", codes=(STATUS_NOT_READY,))["feature_states"]
    assert_forced_reason(states["redirect"], "redirect")
    assert states["redirect"]["essential"] is True
    assert "redirect datapath disabled: probe forced to fail" in agent.log_text()
    # The recorded workload is listed, and its pinned interception still works.
    assert agent.workload_names() == [topo.a.name]
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    assert_outbound_once(topo, topo.a, marks, (topo.b.ip4, APP_PORT))

    # Enrol and unenrol are refused with the reason, over the CLI and REST; nothing changes.
    refused = agent.enroll(topo.b)
    assert refused.returncode != 0
    assert "refused: the redirect datapath is disabled (probe forced to fail" in refused.stderr, \
        refused.stderr
    reply = curl(agent, "POST", "/v1/workloads",
                 body=json.dumps({"name": "x", "cgroup": topo.b.cgroup(),
                                  "netns": topo.b.netns_path}))
    assert reply.status == 503, reply
    assert reply.json()["code"] == "unavailable", reply
    refused = agent.unenroll(topo.a.name)
    assert refused.returncode != 0 and "redirect datapath is disabled" in refused.stderr
    assert agent.workload_names() == [topo.a.name]

    # A healthy agent again: re-adopts the workload, enrolment works.
    agent.stop()
    make_agent(instance=agent)
    assert agent.cli("status").returncode == 0
    assert agent.cli_json("status")["feature_states"]["redirect"]["enabled"] is True
    assert agent.workload_names() == [topo.a.name]
    agent.enroll_ok(topo.b)
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)


def test_interception_off_makes_status_probes_and_grpc_health_not_ready(make_agent):
    """The essential redirect datapath off (interception disabled): `meshlane status` exits 5
    naming the reason, /readyz answers 503 on the unix API and on the scrape listener (what the
    DaemonSet's readiness and startup probes call), /healthz stays 200 (a restart would not bring
    the kernel feature back), grpc.health.v1 says NOT_SERVING for "" and meshlane.v1.Agent.
    A healthy agent: all of them ready."""
    port = util.free_port()
    agent = make_agent(disable="redirect",
                       extra_config={"metrics_address": f"127.0.0.1:{port}"})
    shown = agent.cli("status")
    assert shown.returncode == STATUS_NOT_READY, shown
    assert "Readiness:      NOT READY" in shown.stderr, shown.stderr
    assert "redirect is off (essential_feature_off): probe forced to fail" in shown.stderr
    ready = curl(agent, "GET", "/readyz")
    assert ready.status == 503, ready
    assert ready.json()["status"] == "not_ready", ready
    assert ready.json()["issues"][0]["feature"] == "redirect", ready
    assert status_code("--unix-socket", agent.api_socket, "http://meshlane/readyz",
                       method="HEAD") == 503
    assert curl(agent, "GET", "/healthz").status == 200
    assert scrape_get(port, "/readyz") == 503
    assert scrape_get(port, "/readyz", "HEAD") == 503
    assert scrape_get(port, "/healthz") == 200
    assert grpc_health(agent) == (2, 2)  # NOT_SERVING

    agent.stop()
    make_agent(instance=agent)
    assert agent.cli("status").returncode == 0
    assert curl(agent, "GET", "/readyz").json() == {"status": "ready", "issues": []}
    assert scrape_get(port, "/readyz") == 200
    assert grpc_health(agent) == (1, 1)
