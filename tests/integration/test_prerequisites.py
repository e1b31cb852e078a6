"""Startup prerequisite checks: the agent probes BTF, cgroup v2, bpffs and every program type,
attach type, map type and helper it uses, reports them in `status` → features, and when something
is missing says exactly what and which capabilities still work, instead of a verifier error, and
starts with what works (test_degraded_start.py covers the features one by one)."""
import json
import os

from harness import proc, util
from harness.meshlane import STATUS_ANSWERED, Agent, meshlane_bin

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
    # Without CAP_BPF every BPF probe fails: the report names each one and keeps BTF / cgroup2 /
    # bpffs as working; the agent starts degraded (status and diagnostics, no enrolment) instead
    # of exiting, loads nothing and pins nothing.
    instance = Agent(meshlane_bin())
    nobody = 65534
    try:
        instance.prepare()
        os.chown(instance.dir, nobody, nobody)
        os.chown(instance.state_dir, nobody, nobody)
        with open(instance.log_path, "ab") as log:
            instance.process = proc.spawn(
                [instance.binary, "agent", "--config", instance.config_path], uid=nobody,
                gid=nobody, groups=[], stdout=log, stderr=log,
                description=f"meshlane agent {instance.id} as nobody")
        util.wait_until(lambda: instance.process.poll() is not None or
                        instance.cli("status", uid=nobody, timeout=5).returncode in
                        STATUS_ANSWERED,
                        timeout=20, interval=0.1, message="the degraded agent answering status")
        output = instance.log_text()
        assert instance.process.poll() is None, output
        assert "kernel prerequisites missing:" in output, output
        for key in ("prog_type.sk_lookup", "attach.cgroup_getsockopt", "map.sk_storage",
                    "helper.sk_lookup.sk_assign"):
            assert f"missing: {key}: not probed: this process may not load BPF programs" in \
                output, output
        assert "does not work: inbound capture" in output, output
        assert "still works: kernel BTF for CO-RE relocations" in output, output
        assert "still works: workload cgroups (cgroup v2)" in output, output
        status = json.loads(instance.cli("status", "--json", uid=nobody).stdout)
        redirect = status["feature_states"]["redirect"]
        assert redirect["enabled"] is False and redirect["essential"] is True, redirect
        assert "may not load BPF programs" in redirect["reason"], redirect
        refused = instance.cli("enroll", "x", "--cgroup", "/", "--netns", "/proc/self/ns/net",
                               uid=nobody)
        assert refused.returncode != 0
        assert "refused: the redirect datapath is disabled" in refused.stderr, refused.stderr
        assert not os.path.exists(os.path.join(instance.pin_path, "workloads")), \
            "nothing may be pinned"
    finally:
        instance.destroy()
