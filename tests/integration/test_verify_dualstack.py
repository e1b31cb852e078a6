"""`meshlane verify` with a proxy whose outbound listener is one dual-stack socket,
`[::]:15001` with IPV6_V6ONLY=0 (the default of Go and of many proxies): the redirected IPv4 probe
lands on an AF_INET6 socket, which the kernel lists only in its IPv6 table. verify reads the
pod's sockets through sock_diag, IPv4 and IPv6, and must pass (issue 17)."""
import json
import os

from harness import sidecar, util
from harness.topology import APP_PORT
from test_diagnose import check, verify


def dual_stack_proxy_args(inbound_bind="dual", passthrough_source=False,
                          outbound_port=sidecar.OUTBOUND_PORT, inbound_port=sidecar.INBOUND_PORT):
    return [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "origdst_proxy.py"),
            "--listen", f"outbound=[::]:{outbound_port}/v4v6",
            "--listen", f"inbound=[::]:{inbound_port}/v4v6"]


def test_verify_passes_with_a_dual_stack_outbound_listener(topo, agent, monkeypatch):
    agent.enroll_ok(topo.b)
    monkeypatch.setattr(sidecar, "pyproxy_args", dual_stack_proxy_args)
    topo.b.start_sidecar(kind="pyproxy", inbound_bind="dual")
    topo.b.start_app(ports=(APP_PORT,))
    # One listener on 15001, and it is the dual-stack AF_INET6 one.
    listeners = topo.b.exec("ss", "-Hltn", "sport = :15001").stdout.split("\n")
    listeners = [line for line in listeners if line.strip()]
    assert len(listeners) == 1 and "[::]:15001" in listeners[0].replace("*:15001", "[::]:15001"), \
        listeners
    report, elapsed = verify(agent, topo.b)
    assert report["passed"], json.dumps(report, indent=1)
    outbound = " ".join(check(report, "outbound")["evidence"])
    assert "-> 127.0.0.1:15001" in outbound and "(the proxy)" in outbound, outbound
    assert "listener [::]:15001" in outbound, outbound
    assert elapsed < 10
