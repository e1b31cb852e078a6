"""`meshlane uninstall` removes every attachment, link, pin and map the agent created (and only
those), and refuses while the agent runs. Other meshlane agents may run on this machine (other
tests, other engineers), so "nothing of meshlane" is checked against the programs, links and maps
this agent created, recorded before the uninstall."""
import json
import os

from conftest import start_mesh
from harness import util
from harness.checks import assert_ok, assert_quiet, request
from harness.meshlane import BPFTOOL, attached_summary, cgroup_programs, netns_links
from harness.topology import APP_PORT


def bpftool(*args):
    return json.loads(util.run([BPFTOOL, "-j", *args]).stdout or "[]")


def our_objects(agent, topo):
    """Program, link and map ids that belong to this agent's datapath."""
    programs, links = set(), set()
    for pod in topo.pods:
        for p in agent.cli_json("workload", pod.name)["programs"]:
            programs.add(p["prog_id"])
            links.add(p["link_id"])
    maps = set()
    maps_dir = os.path.join(agent.pin_path, "maps")
    for name in os.listdir(maps_dir):
        maps.add(bpftool("map", "show", "pinned", os.path.join(maps_dir, name))["id"])
    # Every redirect_* program that uses one of our maps (the outbound object, the per-workload
    # sk_lookup instances).
    for prog in bpftool("prog", "show"):
        if prog.get("name", "").startswith("redirect_") and maps & set(prog.get("map_ids", [])):
            programs.add(prog["id"])
    return programs, links, maps


def test_uninstall_refused_while_agent_runs_then_removes_everything(topo, agent):
    start_mesh(topo, agent, a={}, b={})
    programs, links, maps = our_objects(agent, topo)
    assert programs and links and maps

    refused = agent.cli("uninstall", "--config", agent.config_path)
    assert refused.returncode != 0, "uninstall must refuse while the agent runs"
    assert "agent is running" in refused.stderr, refused.stderr
    assert os.path.isdir(agent.pin_path), "a refused uninstall must not touch the pins"
    assert attached_summary(topo.a), "a refused uninstall must not detach anything"

    agent.stop()
    done = agent.cli("uninstall", "--config", agent.config_path)
    assert done.returncode == 0, done.stderr
    assert "detached" in done.stdout, done.stdout

    # bpffs: the pin dir is gone.
    assert not os.path.exists(agent.pin_path), f"{agent.pin_path} still exists"
    # Pod cgroups (and their children) and netns: nothing attached.
    for pod in topo.pods:
        for child in (None, "app", "sidecar"):
            assert cgroup_programs(pod.cgroup(child)) == [], f"{pod.name}/{child} still attached"
        assert netns_links(pod.netns_path) == [], f"{pod.name}: netns link left"
        assert attached_summary(pod) == {}
    # The kernel: none of our programs, links or maps survives.
    alive_programs = {p["id"] for p in bpftool("prog", "show")}
    alive_links = {link["id"] for link in bpftool("link", "show")}
    alive_maps = {m["id"] for m in bpftool("map", "show")}
    assert not programs & alive_programs, f"programs left: {sorted(programs & alive_programs)}"
    assert not links & alive_links, f"links left: {sorted(links & alive_links)}"
    assert not maps & alive_maps, f"maps left: {sorted(maps & alive_maps)}"
    leftovers = [p for p in bpftool("prog", "show")
                 if p.get("name", "").startswith("redirect_") and maps & set(p.get("map_ids", []))]
    assert leftovers == []
    # State files are gone too; a second uninstall is a no-op.
    assert not os.path.exists(os.path.join(agent.state_dir, "workloads.json"))
    again = agent.cli("uninstall", "--config", agent.config_path)
    assert again.returncode == 0, again.stderr

    # Traffic is direct again: the proxies see nothing.
    result, marks = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, local_port=APP_PORT)
    assert_quiet(topo, topo.a, marks, "uninstalled")
    assert_quiet(topo, topo.b, marks, "uninstalled")
