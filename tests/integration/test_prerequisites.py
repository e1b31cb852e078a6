"""Startup prerequisite checks: the agent probes BTF, cgroup v2, bpffs and every program type,
attach type, map type and helper it uses, reports them in `status` → features, and when something
is missing says exactly what and which capabilities still work, instead of a verifier error."""
import os
import subprocess

from harness.meshlane import Agent, meshlane_bin

EXPECTED_FEATURES = {
    "btf", "cgroup2", "bpffs",
    "prog_type.cgroup_sock_addr", "prog_type.sock_ops", "prog_type.cgroup_sockopt",
    "prog_type.sk_lookup",
    "attach.cgroup_inet4_connect", "attach.cgroup_inet6_connect",
    "attach.cgroup_inet4_getpeername", "attach.cgroup_inet6_getpeername",
    "attach.cgroup_inet4_getsockname", "attach.cgroup_inet6_getsockname",
    "attach.cgroup_getsockopt", "attach.sk_lookup",
    "map.sk_storage", "map.sockmap", "map.lpm_trie", "map.lru_hash",
    "helper.cgroup_sock_addr.get_netns_cookie", "helper.sock_ops.sock_map_update",
    "helper.cgroup_sockopt.sk_storage_get", "helper.sk_lookup.sk_assign",
}


def test_status_reports_probed_features(agent):
    features = agent.cli_json("status")["features"]
    assert EXPECTED_FEATURES <= set(features), sorted(EXPECTED_FEATURES - set(features))
    missing = sorted(k for k, v in features.items() if not v)
    assert missing == [], f"this kernel runs meshlane, yet probes say missing: {missing}"
    assert f"kernel prerequisites: all {len(features)} probed features present" in \
        agent.log_text()


def test_missing_prerequisites_are_named_with_what_still_works():
    # Without CAP_BPF every BPF probe fails: the report must name each one, keep BTF / cgroup2 /
    # bpffs as working, and exit before loading anything.
    instance = Agent(meshlane_bin())
    try:
        instance.prepare()
        os.chown(instance.dir, 65534, 65534)
        os.chown(instance.state_dir, 65534, 65534)
        result = subprocess.run(
            [instance.binary, "agent", "--config", instance.config_path], capture_output=True,
            text=True, timeout=30, user=65534, group=65534, extra_groups=[], cwd="/")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "kernel prerequisites missing; nothing was loaded" in output, output
        for key in ("prog_type.sk_lookup", "attach.cgroup_getsockopt", "map.sk_storage",
                    "helper.sk_lookup.sk_assign"):
            assert f"missing: {key}: not probed: this process may not load BPF programs" in \
                output, output
        assert "does not work: inbound capture" in output, output
        assert "still works: kernel BTF for CO-RE relocations" in output, output
        assert "still works: workload cgroups (cgroup v2)" in output, output
        assert not os.path.exists(instance.pin_path), "nothing may be pinned"
    finally:
        instance.destroy()
