"""Assertions shared by the meshlane tests, with the proxy logs in every failure message."""


def _summary(entries):
    return [e.raw for e in entries]


def request(topo, src, host, port, **client_options):
    """Runs one client request from pod src; returns (result, marks): marks maps "a"/"b" to each
    sidecar's log position just before the request, for the assert_* helpers below."""
    marks = {pod.short: pod.sidecar.log.mark() for pod in topo.pods if pod.sidecar}
    result = src.client(host, port, **client_options)
    return result, marks


def assert_ok(topo, result, server="b-app", local_port=None):
    assert result.get("ok"), f"request failed: {result}\n{topo.describe()}"
    assert result["json"]["server"] == server, result
    if local_port is not None:
        assert result["json"]["local"][1] == local_port, (
            f"app saw the connection on {result['json']['local']}, not port {local_port}")


def assert_outbound_once(topo, pod, marks, dst):
    entries = pod.sidecar.log.wait_for(marks[pod.short])
    shape = [(e.direction, e.frontend_addr, e.server) for e in entries]
    assert shape == [("outbound", dst, dst)], (
        f"{pod.name}'s proxy should log exactly one outbound connection to {dst} (original "
        f"destination via SO_ORIGINAL_DST); got {_summary(entries)}\n{topo.describe()}")


def assert_inbound_once(topo, pod, marks, local):
    entries = pod.sidecar.log.wait_for(marks[pod.short])
    shape = [(e.direction, e.frontend_addr) for e in entries]
    assert shape == [("inbound", local)], (
        f"{pod.name}'s proxy should log exactly one inbound connection accepted on {local} "
        f"(sk_lookup keeps the local address); got {_summary(entries)}\n{topo.describe()}")


def assert_quiet(topo, pod, marks, why):
    entries = pod.sidecar.log.quiet_since(marks[pod.short])
    assert entries == [], (f"{pod.name}'s proxy should see nothing ({why}); got "
                           f"{_summary(entries)}\n{topo.describe()}")


def assert_no_nat_rules(topo):
    for pod in topo.pods:
        assert pod.nat_rules() == [], f"nat rules in {pod.name}: {pod.nat_rules()}"
