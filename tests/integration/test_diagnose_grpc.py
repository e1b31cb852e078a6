"""gRPC Diagnose and Verify (meshlane.v1.Agent) with an independent client (python3-grpcio,
descriptors through server reflection): the same collector and probe as the REST routes, on a
real enrolled workload with a fault injected and on a healthy pair of pods."""
import grpc
import pytest

from harness.api import ReflectionClient, curl
from harness.topology import APP_PORT


@pytest.fixture
def rpc(agent):
    client = ReflectionClient(agent.grpc_socket)
    service = client.load_service("meshlane.v1.Agent")
    yield lambda method, **fields: client.unary(service, method, **fields)
    client.close()


def severity_name(rpc_finding):
    return rpc_finding.DESCRIPTOR.fields_by_name["severity"].enum_type.values_by_number[
        rpc_finding.severity].name


def check(reply, hop):
    return next(c for c in reply.checks if c.hop == hop)


def test_diagnose_and_verify_with_the_proxy_not_started(topo, agent, rpc):
    agent.enroll_ok(topo.b)
    topo.b.start_app(ports=(APP_PORT,))
    assert not topo.a.client(topo.b.ip4, APP_PORT)["ok"]  # refused: nothing listens on 15006

    reply = rpc("Diagnose", name=topo.b.name)
    assert reply.workload == topo.b.name and reply.critical >= 1
    codes = [f.code for f in reply.findings]
    assert "connection_refused_proxy_not_listening" in codes, reply
    refused = reply.findings[codes.index("connection_refused_proxy_not_listening")]
    assert severity_name(refused) == "SEVERITY_CRITICAL"
    assert refused.data["inbound_refused"] == 1
    assert refused.data["inbound_refused_first_unix_ms"] > 0
    assert refused.cause and refused.fix and refused.evidence
    assert reply.checked.observer and reply.checked.processes >= 1
    assert reply.checked.HasField("listeners")
    # One implementation, two views: REST names the same findings with the same numbers.
    rest = curl(agent, "GET", f"/v1/workloads/{topo.b.name}/diagnose").json()
    assert [f["code"] for f in rest["findings"]] == codes
    assert rest["findings"][codes.index("connection_refused_proxy_not_listening")]["data"] == \
        dict(refused.data)

    verify = rpc("Verify", name=topo.b.name)
    assert not verify.passed
    assert "proxy not listening" in " ".join(check(verify, "outbound").evidence)
    assert check(verify, "programs").passed
    assert not check(verify, "inbound").passed


def test_diagnose_and_verify_healthy_pods(meshed, agent, rpc):
    for pod in meshed.pods:
        reply = rpc("Diagnose", name=pod.name, window_seconds=60)
        assert list(reply.findings) == [] and reply.critical == 0, reply
        assert reply.collected_at_unix_ms - reply.window_start_unix_ms == 60000
    verify = rpc("Verify", name=meshed.b.name)
    assert verify.passed, verify
    assert [c.hop for c in verify.checks] == [
        "programs", "outbound", "orig_dst", "inbound", "no_loop", "fast_path"]
    assert all(c.passed and c.evidence for c in verify.checks), verify


def test_error_codes(agent, rpc):
    def code_of(method, **fields):
        with pytest.raises(grpc.RpcError) as error:
            rpc(method, **fields)
        return error.value.code()

    assert code_of("Diagnose", name="no-such-workload") == grpc.StatusCode.NOT_FOUND
    assert code_of("Verify", name="no-such-workload") == grpc.StatusCode.NOT_FOUND
    assert code_of("Diagnose", name="../etc") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of("Verify", name="") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of("Diagnose", name="x", window_seconds=10**9) == \
        grpc.StatusCode.INVALID_ARGUMENT
