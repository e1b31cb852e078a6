"""Workload teardown without an operator: when a pod's netns is deleted or its cgroup removed,
the agent's reconcile loop removes the workload within a few intervals, leaving no entry for it in
port_rules, cidr_rules or workload_by_netns, no pins and no attachments. The same cleanup runs at
agent start for a pod that vanished while the agent was down."""
import os
import struct
import sys

import pytest

from harness import cleanup, util
from harness.meshlane import Agent, BPFTOOL, meshlane_bin, netns_links

RECONCILE_MS = 300


@pytest.fixture
def fast_agent(request):
    """An agent with a short reconcile interval (the harness default is the embedded 2 s)."""
    instance = Agent(meshlane_bin())
    try:
        instance.prepare()
        with open(instance.config_path, "a") as f:
            f.write(f"reconcile_interval_ms = {RECONCILE_MS}\n")
        instance.start()
        yield instance
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n=== agent log ===\n{instance.log_text()[-4000:]}", file=sys.stderr)
        instance.destroy()


def map_keys(agent, name):
    """Raw keys (bytes) of a map pinned under the agent's pin dir."""
    import json
    path = os.path.join(agent.pin_path, "maps", name)
    result = util.run([BPFTOOL, "-j", "map", "dump", "pinned", path])
    entries = json.loads(result.stdout or "[]")
    return [bytes(int(b, 16) for b in e["key"]) for e in entries]


def entries_of(agent, workload_id, netns_cookie):
    """What the maps hold for one workload: {map: [keys]} (empty lists when clean)."""
    return {
        # struct port_rule_key { u32 workload_id (host order); u16 port; u8 kind; u8 reserved }
        "port_rules": [k for k in map_keys(agent, "port_rules")
                       if struct.unpack_from("=I", k, 0)[0] == workload_id],
        # struct cidr_rule_key { u32 prefixlen; u32 workload_id (network order); ... }
        "cidr_rules": [k for k in map_keys(agent, "cidr_rules")
                       if struct.unpack_from("!I", k, 4)[0] == workload_id],
        # key: u64 netns cookie
        "workload_by_netns": [k for k in map_keys(agent, "workload_by_netns")
                              if struct.unpack_from("=Q", k, 0)[0] == netns_cookie],
    }


def enrolled(agent, pod):
    agent.enroll_ok(pod, exclude_outbound_ports=[9999], exclude_cidrs=["192.0.2.0/24"],
                    exclude_inbound_ports=[2222])
    detail = agent.cli_json("workload", pod.name)
    state = {"id": detail["workload_id"], "cookie": detail["netns_cookie"],
             "netns_ino": os.stat(pod.netns_path).st_ino,
             "links": [p["link_id"] for p in detail["programs"]]}
    held = entries_of(agent, state["id"], state["cookie"])
    assert all(held.values()), f"enrolment wrote no entries in some map: {held}"
    return state


def link_ids():
    import json
    out = util.run([BPFTOOL, "-j", "link", "show"]).stdout
    return {link["id"] for link in json.loads(out or "[]")}


def assert_gone(agent, pod, state, within):
    util.wait_until(lambda: pod.name not in agent.workload_names(), timeout=within,
                    interval=0.05, message=f"{pod.name} removed by reconcile")
    assert entries_of(agent, state["id"], state["cookie"]) == {
        "port_rules": [], "cidr_rules": [], "workload_by_netns": []}
    assert not os.path.exists(os.path.join(agent.pin_path, "workloads", pod.name)), \
        f"pins left: {os.listdir(os.path.join(agent.pin_path, 'workloads', pod.name))}"
    leftover = set(state["links"]) & link_ids()
    assert not leftover, f"links of {pod.name} still exist: {sorted(leftover)}"


def test_netns_deleted_removes_workload(topo, fast_agent):
    pod = topo.a
    state = enrolled(fast_agent, pod)
    assert netns_links(pod.netns_path), "sk_lookup link expected on the pod netns"
    cleanup.delete_netns(pod.name)  # ip netns del, as a CNI DEL / kubelet would
    assert_gone(fast_agent, pod, state, within=5 * RECONCILE_MS / 1000 + 2)
    assert "netns or cgroup disappeared" in fast_agent.log_text()
    # The other pod is untouched.
    fast_agent.enroll_ok(topo.b)
    assert fast_agent.workload_names() == [topo.b.name]


def test_cgroup_removed_removes_workload(topo, fast_agent):
    pod = topo.b
    state = enrolled(fast_agent, pod)
    for child in ("app", "sidecar"):
        os.rmdir(pod.cgroup(child))
    os.rmdir(pod.cgroup())  # the pod cgroup goes away with programs still attached
    assert_gone(fast_agent, pod, state, within=5 * RECONCILE_MS / 1000 + 2)
    assert netns_links(pod.netns_path) == [], "sk_lookup link left on the netns"


def test_pod_gone_while_agent_down_is_cleaned_at_start(topo, fast_agent):
    pod = topo.a
    state = enrolled(fast_agent, pod)
    fast_agent.enroll_ok(topo.b)
    fast_agent.kill()
    cleanup.delete_netns(pod.name)
    fast_agent.start()
    assert fast_agent.workload_names() == [topo.b.name]
    assert_gone(fast_agent, pod, state, within=1)
    assert "is gone; removing it" in fast_agent.log_text()
