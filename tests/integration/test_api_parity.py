"""REST and gRPC tell the same story, and the status carries the BPF maps' fill levels read from
the kernel. Against a running agent with real workloads:
  - GET /v1/status and gRPC Status (python3-grpcio through reflection) agree field by field on
    the shared content: version, kernel, paths, limits, features, feature states, fast-path
    state, observer health, programs and where attached, and the BPF map list; workloads agree
    on the fast-path block;
  - the fill levels match what bpftool reads from the same pinned maps, uncountable maps (socket
    storage) say so instead of a number, /metrics serves meshlane_bpf_map_entries/_max_entries,
    and `meshlane status` warns about a map over 80% full (an agent sized for 2 workloads, both
    enrolled);
  - agent-wide lost-event notices (the observer's kernel-side losses, forced by a tiny
    event_rate_limit_per_sec and a burst of netfilter drops) reach REST and gRPC event streams
    filtered on a workload and a type that the notice does not match."""
import json
import os
import threading

import pytest

from harness import util
from harness.api import EventStream, ReflectionClient, curl
from harness.meshlane import Agent, bpftool_json, meshlane_bin

DROP_PORT = 9997


@pytest.fixture
def client(agent):
    c = ReflectionClient(agent.grpc_socket)
    yield c
    c.close()


def counted_status(agent, after_ms=0):
    """/v1/status once the observer has counted the maps (after `after_ms`)."""
    holder = {}

    def ready():
        holder["s"] = curl(agent, "GET", "/v1/status").json()
        return holder["s"].get("bpf_maps", {}).get("counted_unix_ms", 0) > after_ms
    util.wait_until(ready, timeout=30, interval=0.2, message="the BPF maps counted")
    return holder["s"]


def map_entry(status, name, owner="pinned"):
    for m in status["bpf_maps"]["maps"]:
        if m["name"] == name and m["owner"] == owner:
            return m
    raise AssertionError(f"no map {owner}/{name} in {[m['name'] for m in status['bpf_maps']['maps']]}")


def test_rest_and_grpc_status_agree(topo, agent, client):
    agent.enroll_ok(topo.a)
    agent.enroll_ok(topo.b)
    service = client.load_service("meshlane.v1.Agent")
    # A pair of reads from the same map count (it changes every 5 s).
    for _ in range(5):
        rest = counted_status(agent)
        grpc_status = client.unary(service, "Status")
        if grpc_status.bpf_maps.counted_unix_ms == rest["bpf_maps"]["counted_unix_ms"]:
            break
    assert grpc_status.bpf_maps.counted_unix_ms == rest["bpf_maps"]["counted_unix_ms"]

    for key in ("version", "kernel", "bpffs_pin_dir", "cgroup2_mount", "state_dir", "workloads",
                "max_workloads"):
        assert getattr(grpc_status, key) == rest[key], key
    assert dict(grpc_status.features) == rest["features"]
    assert {name: {"enabled": s.enabled, "essential": s.essential, "reason": s.reason,
                   "by_config": s.by_config}
            for name, s in grpc_status.feature_states.items()} == rest["feature_states"]
    hop_names = {1: "app_proxy_outbound", 2: "app_proxy_inbound", 3: "proxy_proxy"}
    reason_names = {0: "", 1: "unavailable", 2: "blocking_reader_eagain"}
    assert {"available": grpc_status.fast_path.available,
            "reason": grpc_status.fast_path.reason,
            "blocking_reader_hazard": grpc_status.fast_path.blocking_reader_hazard,
            "hops": [{"hop": hop_names[h.hop], "accelerated": h.accelerated,
                      "reason": reason_names[h.reason]}
                     for h in grpc_status.fast_path.hops]} == rest["fast_path"]

    observer, g = rest["observer"], grpc_status.observer
    for key in ("connect_tracking", "drop_tracking", "tls_wire_tracking", "tls_libssl_tracking",
                "memory_limit_bytes", "tls_memory_limit_bytes", "tls_attached_cgroups"):
        assert getattr(g, key) == observer[key], key
    assert list(g.problems) == observer["problems"]
    assert set(g.lost_events) == set(observer["lost_events"])
    # Counters read later by gRPC: never behind REST's.
    for key in ("lost_events_total", "connect_events", "drop_events", "events_evicted"):
        assert getattr(g, key) >= observer[key], key
    assert grpc_status.events.published >= rest["events"]["published"]

    def as_dict(m):
        return {"name": m.name, "owner": m.owner, "id": m.id, "type": m.type,
                "max_entries": m.max_entries, "preallocated": m.preallocated, "note": m.note,
                "entries": m.entries if m.HasField("entries") else None,
                "fill_ratio": m.fill_ratio if m.HasField("fill_ratio") else None}
    assert [as_dict(m) for m in grpc_status.bpf_maps.maps] == rest["bpf_maps"]["maps"]

    # Programs and where attached: the observer's node-wide ones, per-pod ones by count.
    programs = rest["programs"]
    assert [{"object": p.object, "program": p.program, "attach_to": p.attach_to,
             "link_id": p.link_id, "prog_id": p.prog_id}
            for p in grpc_status.programs.node] == programs["node"]
    assert dict(grpc_status.programs.workloads) == programs["workloads"]
    assert any(p["attach_to"] == "tp_btf/kfree_skb" and p["link_id"] > 0
               for p in programs["node"]), programs
    assert programs["workloads"].get("redirect_connect4") == 2, programs  # both pods

    # Workloads: the fast-path block too (REST "fast_path": {active, counters}).
    rest_workloads = {w["name"]: w for w in curl(agent, "GET", "/v1/workloads").json()["workloads"]}
    listed = client.unary(service, "ListWorkloads").workloads
    assert {w.name for w in listed} == set(rest_workloads)
    for w in listed:
        assert w.fast_path.active == rest_workloads[w.name]["fast_path"]["active"]
        assert set(w.fast_path.counters) == set(rest_workloads[w.name]["fast_path"]["counters"])


def test_map_fill_levels_are_read_from_the_kernel(topo, agent):
    before = counted_status(agent)
    agent.enroll_ok(topo.a, exclude_inbound_ports="22,2222", exclude_cidrs="10.99.0.0/16")
    status = counted_status(agent, after_ms=before["bpf_maps"]["counted_unix_ms"] + 1)
    # Counted again after the enrolment: compare with what bpftool reads from the same pins.
    status = counted_status(agent, after_ms=status["bpf_maps"]["counted_unix_ms"])
    maps_dir = os.path.join(agent.pin_path, "maps")
    for name in ("workload_by_netns", "port_rules", "cidr_rules"):
        entry = map_entry(status, name)
        dumped = bpftool_json("map", "dump", "pinned", os.path.join(maps_dir, name)) or []
        assert entry["entries"] == len(dumped) > 0, (name, entry, len(dumped))
        info = bpftool_json("map", "show", "pinned", os.path.join(maps_dir, name))
        assert entry["id"] == info["id"] and entry["max_entries"] == info["max_entries"], entry
        assert entry["fill_ratio"] == pytest.approx(entry["entries"] / entry["max_entries"])
    assert map_entry(status, "workload_by_netns")["entries"] == 1

    storage = map_entry(status, "orig_dst_by_socket")
    assert storage["type"] == "sk_storage" and storage["entries"] is None, storage
    assert "not countable" in storage["note"], storage
    counters = map_entry(status, "redirect_counters")
    assert counters["preallocated"] and counters["fill_ratio"] is None, counters
    listener = map_entry(status, "inbound_listener")
    assert listener["type"] == "sockmap" and listener["entries"] == 0, listener  # no proxy yet
    drop_counts = map_entry(status, "drop_counts", owner="observe_drops")
    assert drop_counts["type"] == "hash" and drop_counts["entries"] is not None, drop_counts

    metrics = curl(agent, "GET", "/metrics").body
    assert 'meshlane_bpf_map_entries{map="workload_by_netns",owner="pinned"} ' in metrics
    assert (f'meshlane_bpf_map_max_entries{{map="workload_by_netns",owner="pinned"}} '
            f'{map_entry(status, "workload_by_netns")["max_entries"]}\n') in metrics
    assert 'meshlane_bpf_map_entries{map="drop_counts",owner="observe_drops"} ' in metrics
    assert 'map="orig_dst_by_socket"' not in metrics  # not countable: no made-up number
    assert "meshlane_observe_drop_count_entries" not in metrics  # one name for one thing


def test_status_warns_about_a_nearly_full_map(topo, request):
    small = Agent(meshlane_bin())
    request.addfinalizer(small.destroy)
    small.prepare()
    with open(small.config_path, "a") as f:
        f.write("max_workloads = 2\n")
    small.start(timeout=60)
    text = small.cli_ok("status").stdout
    assert "WARNING: BPF map" not in text, text
    before = counted_status(small)["bpf_maps"]["counted_unix_ms"]
    small.enroll_ok(topo.a)
    small.enroll_ok(topo.b)
    status = counted_status(small, after_ms=before + 1)
    status = counted_status(small, after_ms=status["bpf_maps"]["counted_unix_ms"])
    assert map_entry(status, "workload_by_netns")["fill_ratio"] == 1.0
    text = small.cli_ok("status").stdout
    warnings = [line for line in text.splitlines() if line.startswith("WARNING: BPF map")]
    assert any("workload_by_netns (pinned) is 100% full: 2 of 2 entries" in line
               for line in warnings), text


@pytest.fixture
def lossy_agent(request):
    """An agent whose kernel side may stream about one drop event per second and CPU: a burst of
    drops is mostly rate-limited, which the observer must announce."""
    instance = Agent(meshlane_bin())
    request.addfinalizer(instance.destroy)
    instance.prepare()
    with open(instance.config_path, "a") as f:
        f.write("event_rate_limit_per_sec = 1\n")
    return instance.start(timeout=60)


def test_lost_event_notices_reach_filtered_streams(topo, lossy_agent):
    agent = lossy_agent
    for pod in topo.pods:
        agent.enroll_ok(pod)
    topo.b.exec("iptables", "-A", "INPUT", "-i", topo.b.veth, "-p", "udp", "--dport",
                str(DROP_PORT), "-j", "DROP")
    # Filters the notice matches neither by workload (agent-wide) nor by type.
    rest = EventStream(agent, f"follow=true&workload={topo.a.name}&type=workload_unenrolled")
    client = ReflectionClient(agent.grpc_socket)
    service = client.load_service("meshlane.v1.Agent")
    call = client.stream(service, "StreamEvents", timeout=60, follow=True,
                         workload=topo.a.name, types=["workload_unenrolled"])
    grpc_items = []

    def read_grpc():
        try:
            for item in call:
                grpc_items.append(item)
        except Exception:  # cancelled at the end of the test
            pass
    reader = threading.Thread(target=read_grpc, daemon=True)
    reader.start()
    try:
        util.wait_until(lambda: agent.cli_json("status")["events"]["subscribers"] >= 2,
                        timeout=10, interval=0.05, message="both streams subscribed")
        sender = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  f"for _ in range(500): s.sendto(b'x' * 32, ('{topo.b.ip4}', {DROP_PORT}))\n")
        result = topo.a.run([util.PYTHON, "-c", sender], timeout=30)
        assert result.returncode == 0, result.stderr

        def notice(event):
            return (event.get("type") == "observe_lost_events"
                    and event["details"]["kind"] == "drops.rate_limited")
        util.wait_until(lambda: any(notice(e) for e in rest.lines), timeout=20, interval=0.1,
                        message="an observe_lost_events notice on the filtered REST stream")
        util.wait_until(lambda: any(i.WhichOneof("item") == "event"
                                    and i.event.type == "observe_lost_events"
                                    for i in grpc_items),
                        timeout=20, interval=0.1,
                        message="an observe_lost_events notice on the filtered gRPC stream")
        # Nothing else leaked through the filters: no drop events, no other workload's events.
        assert all(e.get("type") == "observe_lost_events" for e in rest.lines), rest.lines
        event = next(e for e in rest.lines if notice(e))
        assert int(event["details"]["lost"]) > 0 and event["workload"] == "", event
        lost = json.loads(curl(agent, "GET", "/v1/status").body)["observer"]["lost_events"]
        assert lost["drops.rate_limited"] >= int(event["details"]["lost_total"]), lost
    finally:
        call.cancel()
        rest.close()
        client.close()
