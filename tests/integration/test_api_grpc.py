"""The gRPC API with an independent client: Debian's python3-grpcio and python3-protobuf, no
generated stubs. Services are listed and the meshlane.v1.Agent descriptor fetched through server
reflection; then Status, the workload RPCs, the standard health service and StreamEvents are
called against a running agent with real workloads."""
import os
import stat
import threading

import grpc
import pytest

from harness.api import ReflectionClient


@pytest.fixture
def client(agent):
    c = ReflectionClient(agent.grpc_socket)
    yield c
    c.close()


def test_socket_is_root_only(agent):
    mode = os.stat(agent.grpc_socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)


def test_reflection_lists_services_and_status_answers(topo, agent, client):
    agent.enroll_ok(topo.a)
    services = client.list_services()
    for expected in ("meshlane.v1.Agent", "grpc.health.v1.Health",
                     "grpc.reflection.v1alpha.ServerReflection"):
        assert expected in services, services
    service = client.load_service("meshlane.v1.Agent")
    assert {m.name for m in service.methods} >= {
        "Health", "Status", "ListWorkloads", "GetWorkload", "Enroll", "Unenroll", "StreamEvents"}
    status = client.unary(service, "Status")
    assert status.workloads == 1 and status.version and status.kernel
    assert status.events.published >= 1
    assert client.unary(service, "Health").status == "ok"
    assert client.health() == 1  # SERVING


def test_workload_rpcs_and_error_codes(topo, agent, client):
    service = client.load_service("meshlane.v1.Agent")
    Spec = client.messages["meshlane.v1.EnrollRequest"].DESCRIPTOR.fields_by_name["spec"]
    assert Spec.message_type.full_name == "meshlane.v1.WorkloadSpec"
    spec = {"name": topo.a.name, "cgroup": topo.a.cgroup(), "netns": topo.a.netns_path,
            "exclude_inbound_ports": [22]}
    enrolled = client.unary(service, "Enroll", spec=spec)
    assert enrolled.created and enrolled.workload.spec.exclude_inbound_ports == [22]
    assert not client.unary(service, "Enroll", spec=spec).created
    assert topo.a.name in agent.workload_names()  # the CLI (REST) sees the gRPC enrolment
    listed = client.unary(service, "ListWorkloads")
    assert [w.name for w in listed.workloads] == [topo.a.name]
    got = client.unary(service, "GetWorkload", name=topo.a.name)
    assert got.netns_inode == os.stat(topo.a.netns_path).st_ino
    assert any(p.program for p in got.programs)

    def code_of(method, **fields):
        with pytest.raises(grpc.RpcError) as error:
            client.unary(service, method, **fields)
        return error.value.code()

    assert code_of("GetWorkload", name="no-such-workload") == grpc.StatusCode.NOT_FOUND
    assert code_of("GetWorkload", name="../etc") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of("Enroll", spec=dict(spec, inbound_port=15007)) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert code_of("Enroll", spec={"name": "x", "cgroup": "../../etc",
                                   "netns": topo.b.netns_path}) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of("Enroll", spec={"name": "y", "cgroup": topo.b.cgroup(),
                                   "netns": "/etc/passwd"}) in (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    removed = client.unary(service, "Unenroll", name=topo.a.name)
    assert removed.removed
    assert not client.unary(service, "Unenroll", name=topo.a.name).removed
    assert agent.workload_names() == []


def test_stream_events_follows_with_filters(topo, agent, client):
    service = client.load_service("meshlane.v1.Agent")
    # The workload's stream also carries its observed traffic (connect/drop events, e.g. a
    # QUEUE_PURGE drop when a socket closes): only the lifecycle types are asked for here.
    stream = client.stream(service, "StreamEvents", timeout=30, follow=True,
                           workload=topo.b.name,
                           types=["workload_enrolled", "workload_unenrolled"])
    received = []

    def read():
        try:
            for item in stream:
                # Agent-wide observe_lost_events notices pass every filter: not asserted here.
                if item.WhichOneof("item") == "event" and item.event.type == "observe_lost_events":
                    continue
                received.append(item)
                if len(received) == 2:
                    return
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    agent.enroll_ok(topo.a)  # filtered out
    agent.enroll_ok(topo.b)
    agent.cli_ok("unenroll", topo.b.name)
    reader.join(timeout=15)
    stream.cancel()
    assert [(i.WhichOneof("item"), i.event.type, i.event.workload) for i in received] == [
        ("event", "workload_enrolled", topo.b.name), ("event", "workload_unenrolled", topo.b.name)]
    # history without follow ends by itself
    history = list(client.stream(service, "StreamEvents", timeout=10,
                                 types=["workload_enrolled"]))
    assert {i.event.workload for i in history} == {topo.a.name, topo.b.name}
    with pytest.raises(grpc.RpcError) as error:
        list(client.stream(service, "StreamEvents", timeout=10, types=["Not A Type"]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_cap_is_resource_exhausted(agent, client):
    service = client.load_service("meshlane.v1.Agent")
    streams = [client.stream(service, "StreamEvents", timeout=30, follow=True)
               for _ in range(16)]
    try:
        # make sure the server has all 16 open: Status reports the bus subscribers
        import time
        deadline = time.monotonic() + 10
        while client.unary(service, "Status").events.subscribers < 16:
            assert time.monotonic() < deadline, "streams did not open"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as error:
            list(client.stream(service, "StreamEvents", timeout=10, follow=True))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.unary(service, "Health").status == "ok"
    finally:
        for s in streams:
            s.cancel()
