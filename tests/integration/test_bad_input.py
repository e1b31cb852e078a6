"""Bad requests fail with exit 1 and one `meshlane: ...` line, and leave nothing behind: no
program on the pod cgroup, no netns link, no workload in the pin dir."""
import os
import re
import subprocess

import pytest

from harness import proc, util
from harness.meshlane import Agent, attached_summary, meshlane_bin, pin_entries


def assert_rejected(agent, result, pattern=None):
    assert result.returncode == 1, (f"expected exit 1, got {result.returncode}; "
                                    f"stdout={result.stdout!r} stderr={result.stderr!r}")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshlane: "), (
        f"expected one `meshlane: ...` line on stderr, got {result.stderr!r}")
    if pattern:
        assert re.search(pattern, lines[0], re.I), f"{lines[0]!r} should match {pattern!r}"
    return lines[0]


def assert_nothing_left(agent, pod, name):
    assert attached_summary(pod) == {}, f"programs left attached for {pod.name}"
    leftovers = [p for p in pin_entries(agent) if name in p.split(os.sep)]
    assert leftovers == [], f"pin dir still holds {leftovers}"
    assert name not in agent.workload_names()


def test_nonexistent_cgroup(topo, agent):
    missing = os.path.join(topo.cgroup_root, "no-such-pod")
    result = agent.enroll(topo.a, cgroup=missing)
    assert_rejected(agent, result, r"cgroup|no such|not found|ENOENT")
    assert_nothing_left(agent, topo.a, topo.a.name)


def test_cgroup_v1_path(topo, agent):
    v1 = [m for m in util.cgroup_v1_mounts() if os.access(m, os.W_OK)
          and not m.endswith("systemd")]
    if not v1:
        pytest.skip("no writable cgroup v1 hierarchy on this host")
    path = os.path.join(v1[0], f"ml-{topo.id}-v1")
    os.mkdir(path)
    try:
        result = agent.enroll(topo.a, cgroup=path)
        assert_rejected(agent, result, r"cgroup")
    finally:
        os.rmdir(path)
    assert_nothing_left(agent, topo.a, topo.a.name)


def test_regular_file_as_netns(topo, agent):
    path = os.path.join(topo.workdir, "not-a-netns")
    with open(path, "w") as f:
        f.write("x")
    result = agent.enroll(topo.a, netns=path)
    assert_rejected(agent, result, r"netns|namespace")
    assert_nothing_left(agent, topo.a, topo.a.name)


def test_uts_namespace_as_netns(topo, agent):
    result = agent.enroll(topo.a, netns="/proc/self/ns/uts")
    assert_rejected(agent, result, r"netns|namespace")
    assert_nothing_left(agent, topo.a, topo.a.name)


def test_duplicate_name_with_other_settings(topo, agent):
    agent.enroll_ok(topo.a)
    result = agent.enroll(topo.a, outbound_port=15002)
    assert_rejected(agent, result, r"outbound[-_ ]port")
    # the original enrolment is untouched
    [spec] = [w["spec"] for w in agent.workloads()]
    assert spec.get("outbound_port", 15001) == 15001, spec


def test_second_name_for_same_netns(topo, agent):
    agent.enroll_ok(topo.a)
    other = f"{topo.a.name}-again"
    result = agent.enroll(topo.b, name=other, netns=topo.a.netns_path)
    assert_rejected(agent, result, r"netns|namespace|already")
    assert agent.workload_names() == [topo.a.name]
    assert_nothing_left(agent, topo.b, other)


@pytest.mark.parametrize("options", [
    {"exclude_outbound_ports": "80,abc"},
    {"exclude_inbound_ports": "70000"},
    {"include_ports": "-1"},
    {"include_outbound_ports": "80,,81"},
    {"outbound_port": "0"},
    {"include_cidrs": "10.0.0.0/33"},
    {"exclude_cidrs": "not-a-cidr"},
    {"exclude_cidrs": "fd00::/129"},
    {"startup_policy": "sometimes"},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_invalid_lists(topo, agent, options):
    result = agent.enroll(topo.a, **options)
    field = next(iter(options)).split("_")[-1]  # ports / cidrs / port / policy
    assert_rejected(agent, result, field.rstrip("s"))
    assert_nothing_left(agent, topo.a, topo.a.name)


def test_cli_without_privileges(topo, agent):
    result = agent.cli("enroll", topo.a.name, "--cgroup", topo.a.cgroup(), "--netns",
                       topo.a.netns_path, uid=65534, gid=65534)
    assert result.returncode in (1, 3), result
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("meshlane: "), result.stderr
    assert re.search(r"permission|denied|privilege|root|EACCES|EPERM", line[0], re.I), line[0]
    assert_nothing_left(agent, topo.a, topo.a.name)


def test_agent_without_privileges():
    """An agent as uid 65534, with its own config and pin dir: must exit non-zero with a clear
    message and create no pins."""
    binary = meshlane_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"meshlane binary not found at {binary} (set MESHLANE_BIN)")
    agent = Agent(binary)
    agent.prepare()
    try:
        with open(agent.log_path, "ab") as log:
            process = proc.spawn([binary, "agent", "--config", agent.config_path], uid=65534,
                                 gid=65534, groups=[], stdout=log, stderr=log,
                                 env=dict(os.environ), description="unprivileged agent")
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        proc.stop(process)
        assert code is not None, f"unprivileged agent kept running:\n{agent.log_text()}"
        assert code != 0, agent.log_text()
        assert re.search(r"permission|denied|privilege|root|CAP_|EPERM|EACCES",
                         agent.log_text(), re.I), agent.log_text()
        assert not os.path.exists(agent.pin_path), f"unprivileged agent created {agent.pin_path}"
    finally:
        agent.destroy()
