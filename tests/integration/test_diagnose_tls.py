"""Finding 10 end to end (`tls_handshake_problems`): TLS handshakes from pod A that fail, or that
are slower than the agent's tls_slow_handshake_threshold_ms (set low here), are named by
`meshlane diagnose A` — CLI text and --json, REST and gRPC — with the destination, the counts and
kinds of failures, their times, p50/p99 against the threshold, and the fix; a healthy TLS pair
yields no finding at all. The faults are the Istio ones: an mTLS handshake between the two
HAProxy sidecars that fails because A's proxy does not trust the CA that signed B's certificate
(root CA / trust domain mismatch; Envoy's 503 UF "TLS error"), and a server whose handshake is
slow (the delaying tls_server.py: "slow first request")."""
import json
import time

import pytest

from harness import util
from harness.api import curl
from harness.tls import (SNI, all_keys, curl_client, make_ca_certs, new_events, openssl_client,
                         run_client, self_signed_cert, start_mtls_sidecar, start_tls_server,
                         wait_attached, workload_tls)
from harness.topology import APP_PORT

from test_diagnose import diagnose
from test_diagnose_grpc import rpc, severity_name  # noqa: F401 (rpc is a fixture)

THRESHOLD_MS = 250
SLOW_DELAY_MS = 2 * THRESHOLD_MS
TLS_PORT = 8443
ATTEMPTS = 3
CODE = "tls_handshake_problems"

pytestmark = pytest.mark.agent_config(tls_slow_handshake_threshold_ms=THRESHOLD_MS)


def tls_finding(agent, pod, predicate=lambda f: True, what="the TLS finding"):
    """Waits until `diagnose --json` of pod has the TLS finding satisfying predicate (events
    reach the observer's aggregate within a poll interval); returns (report, finding)."""
    found = {}

    def check():
        report = diagnose(agent, pod)
        found["report"] = report
        f = next((x for x in report["findings"] if x["code"] == CODE), None)
        return f is not None and predicate(f) and f
    try:
        f = util.wait_until(check, timeout=10, interval=0.3, message=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last report: {json.dumps(found.get('report'), indent=1)}") \
            from None
    return found["report"], f


def cli_text(agent, pod, exit_code):
    text = agent.cli("diagnose", pod.name)
    assert text.returncode == exit_code, (text.returncode, text.stdout, text.stderr)
    out = text.stdout
    assert out.index(f"] {CODE}") < out.index("Cause:") < out.index("Evidence:") < \
        out.index("Fix:"), out
    print(f"\n$ meshlane diagnose {pod.name}\n{out}")
    return out


def test_mtls_handshake_failure_is_named(topo, agent, rpc):  # noqa: F811 (fixture)
    """A's proxy originates mTLS to B's proxy but trusts another root CA than the one that
    signed B's certificate: every upstream handshake ends with A's alert unknown_ca, the app's
    requests fail (HAProxy retries each one: 1 + 3 handshakes per request). diagnose A names
    the destination, the count and kind, the times, the meaning and the fix, in every view."""
    mesh = make_ca_certs(topo.workdir, prefix="mesh")
    other = make_ca_certs(topo.workdir, prefix="other", roles=())
    agent.enroll_ok(topo.a)
    agent.enroll_ok(topo.b)
    start_mtls_sidecar(topo.a, client_pem=mesh["client"], server_pem=mesh["server"],
                       ca=mesh["ca"], upstream_ca=other["ca"])
    start_mtls_sidecar(topo.b, client_pem=mesh["client"], server_pem=mesh["server"],
                       ca=mesh["ca"])
    topo.b.start_app(ports=(APP_PORT,))
    wait_attached(agent)
    started_ms = time.time() * 1000
    seen = all_keys(agent, topo.a)
    for _ in range(ATTEMPTS):
        result = topo.a.client(topo.b.ip4, APP_PORT, timeout=5)
        assert not result["ok"], result
    new_events(agent, topo.a, seen, lambda e: e["outcome"] != "ok", ATTEMPTS,
               "A's failed upstream handshakes")
    ended_ms = time.time() * 1000

    failed = sum(1 for e in workload_tls(agent, topo.a)["recent"]
                 if e["source"] == "wire" and e["outcome"] != "ok")
    report, f = tls_finding(agent, topo.a,
                            lambda f: f["data"].get(f"tls_failures.{SNI}", 0) >= failed,
                            "diagnose A names the failed handshakes")
    assert f["severity"] == "critical" and report["critical"] >= 1, f
    data = f["data"]
    print(f"\n{ATTEMPTS} requests, {data[f'tls_failures.{SNI}']} failed handshakes")
    assert data[f"tls_failures.{SNI}"] >= ATTEMPTS, data
    # Each handshake once (one hop, libssl's duplicates left out), all of them alerts.
    assert data[f"tls_handshakes.{SNI}"] == data[f"tls_failures.{SNI}"] == \
        data[f"tls_failures_alert.{SNI}"] == data["tls_failures"], data
    first, last = (data[f"tls_first_failure_unix_ms.{SNI}"],
                   data[f"tls_last_failure_unix_ms.{SNI}"])
    assert started_ms - 1000 <= first <= last <= ended_ms + 1000, (started_ms, data, ended_ms)
    assert f["cause"].startswith("mTLS handshake failure: "), f["cause"]
    assert "503 UF" in f["cause"] and "not signed by a CA this side trusts" in f["cause"], f
    evidence = "\n".join(f["evidence"])
    assert f"{SNI} ({topo.b.ip4}:{APP_PORT}), measured on the proxy's upstream" in evidence, \
        evidence
    n = data[f"tls_failures.{SNI}"]
    assert f"{n} failed ({n} alert)" in evidence, evidence
    assert "alert fatal 48 (unknown_ca)" in evidence, evidence
    assert "DestinationRule" in f["fix"] and "PeerAuthentication" in f["fix"], f["fix"]
    assert (f"nsenter --net={topo.a.netns_path} openssl s_client -connect "
            f"{topo.b.ip4}:{APP_PORT} -servername {SNI}") in f["fix"], f["fix"]

    out = cli_text(agent, topo.a, exit_code=4)
    assert "[CRITICAL] tls_handshake_problems" in out and "unknown_ca" in out, out
    # REST and gRPC: the same finding with the same numbers.
    rest = curl(agent, "GET", f"/v1/workloads/{topo.a.name}/diagnose").json()
    rest_f = next(x for x in rest["findings"] if x["code"] == CODE)
    assert rest_f["data"][f"tls_failures.{SNI}"] == n, rest_f
    reply = rpc("Diagnose", name=topo.a.name)
    grpc_f = next(x for x in reply.findings if x.code == CODE)
    assert severity_name(grpc_f) == "SEVERITY_CRITICAL"
    assert grpc_f.data[f"tls_failures.{SNI}"] == n
    assert grpc_f.data[f"tls_first_failure_unix_ms.{SNI}"] == first
    assert grpc_f.cause == rest_f["cause"] and list(grpc_f.evidence) == rest_f["evidence"]
    # B's side: its proxy's server-side handshakes, seen only by the libssl uprobes (no address).
    print(f"\n$ meshlane diagnose {topo.b.name}\n{agent.cli('diagnose', topo.b.name).stdout}")


def test_slow_handshakes_against_the_threshold(meshed, agent):
    """B's server delays every handshake by twice the agent's threshold: diagnose A warns
    (exit 0) with p50/p99 of the destination against the threshold."""
    topo = meshed
    cert, key = self_signed_cert(topo.workdir)
    start_tls_server(topo.b, TLS_PORT, cert, key, delay_ms=SLOW_DELAY_MS)
    wait_attached(agent)
    seen = all_keys(agent, topo.a)
    for client in (openssl_client(topo.b.ip4, TLS_PORT, "1.3"),
                   openssl_client(topo.b.ip4, TLS_PORT, "1.2")):
        run_client(topo.a, client)
    run_client(topo.a, curl_client(topo.b.ip4, TLS_PORT, "1.3"), stdin="")
    new_events(agent, topo.a, seen, lambda e: e["source"] == "wire" and e["side"] == "app",
               ATTEMPTS, "A's slow handshakes")

    report, f = tls_finding(agent, topo.a,
                            lambda f: f["data"].get(f"tls_slow.{SNI}", 0) >= ATTEMPTS,
                            "diagnose A names the slow handshakes")
    assert f["severity"] == "warning" and report["critical"] == 0, f
    data = f["data"]
    assert data["tls_threshold_ms"] == THRESHOLD_MS and data["tls_failures"] == 0, data
    assert data[f"tls_slow.{SNI}"] == data[f"tls_handshakes.{SNI}"] == ATTEMPTS, data
    assert data["tls_slow"] == ATTEMPTS, data  # libssl's (curl) duplicate left out
    assert SLOW_DELAY_MS * 1000 <= data[f"tls_p50_us.{SNI}"] <= data[f"tls_p99_us.{SNI}"], data
    assert f["cause"].startswith("Slow first request: "), f["cause"]
    assert f"longer than the {THRESHOLD_MS} ms threshold (p50 " in f["cause"], f["cause"]
    evidence = "\n".join(f["evidence"])
    assert f"{SNI} ({topo.b.ip4}:{TLS_PORT}), measured on the app's own TLS" in evidence, evidence
    assert f"{ATTEMPTS} at or above the {THRESHOLD_MS} ms threshold" in evidence, evidence
    assert f"-connect {topo.b.ip4}:{TLS_PORT} -servername {SNI}" in f["fix"], f["fix"]
    assert "tls_slow_handshake_threshold_ms" in f["fix"], f["fix"]
    cli_text(agent, topo.a, exit_code=0)


def test_healthy_tls_pair_has_no_finding(meshed, agent, rpc):  # noqa: F811 (fixture)
    """A verifies B's certificate against the CA that signed it, B answers at once: the
    handshakes are observed, and neither pod has any finding (CLI, gRPC)."""
    topo = meshed
    certs = make_ca_certs(topo.workdir, prefix="healthy", roles=("server",))
    start_tls_server(topo.b, TLS_PORT, certs["server"], certs["server"])
    wait_attached(agent)
    seen = all_keys(agent, topo.a)
    verify = ["-CAfile", certs["ca"], "-verify_return_error"]
    for version in ("1.3", "1.2"):
        run_client(topo.a, openssl_client(topo.b.ip4, TLS_PORT, version, extra=verify))
    run_client(topo.a, curl_client(topo.b.ip4, TLS_PORT, "1.3", extra=("--cacert", certs["ca"])),
               stdin="")
    events, _ = new_events(agent, topo.a, seen, lambda e: e["source"] == "wire", 2 * ATTEMPTS,
                           "A's handshakes on both hops")
    assert all(e["outcome"] == "ok" for e in events), events
    for pod in topo.pods:
        report = diagnose(agent, pod)
        assert report["findings"] == [] and report["checked"]["tls"], json.dumps(report, indent=1)
        reply = rpc("Diagnose", name=pod.name)
        assert list(reply.findings) == [] and reply.checked.tls, reply
    text = agent.cli("diagnose", topo.a.name)
    assert text.returncode == 0 and "TLS handshakes" in text.stdout, text.stdout


def test_tls_server_pod_rejected_nothing(meshed, agent):
    """Issue 19 item 6. A's app does not trust B's self-signed certificate: A's openssl aborts
    every handshake with alert unknown_ca. A (the client) gets the critical finding; B (the
    server) sees the same handshakes where its inbound proxy passes them to its app: labelled
    as that hop, never "the proxy's upstream connection (sidecar mTLS)", never "this side
    rejected the server's certificate", and not critical (B rejected nothing)."""
    topo = meshed
    cert, key = self_signed_cert(topo.workdir, prefix="untrusted")
    start_tls_server(topo.b, TLS_PORT, cert, key)
    wait_attached(agent)
    other = make_ca_certs(topo.workdir, prefix="unrelated", roles=())
    seen_a, seen_b = all_keys(agent, topo.a), all_keys(agent, topo.b)
    verify = ["-CAfile", other["ca"], "-verify_return_error"]
    for _ in range(ATTEMPTS):
        run_client(topo.a, openssl_client(topo.b.ip4, TLS_PORT, "1.2", extra=verify),
                   check=False)
    new_events(agent, topo.a, seen_a, lambda e: e["source"] == "wire" and e["outcome"] != "ok",
               ATTEMPTS, "A's failed handshakes")
    new_events(agent, topo.b, seen_b, lambda e: e["source"] == "wire" and e["outcome"] != "ok",
               ATTEMPTS, "B's view of the same handshakes")
    _, fa = tls_finding(agent, topo.a, lambda f: f["data"]["tls_failures"] >= ATTEMPTS,
                        "A names the failed handshakes")
    assert fa["severity"] == "critical", fa
    assert "this side rejected the server's certificate" in fa["cause"], fa["cause"]
    report, fb = tls_finding(agent, topo.b, lambda f: f["data"]["tls_failures"] >= ATTEMPTS,
                             "B names its clients' failed handshakes")
    print(f"\n$ meshlane diagnose {topo.b.name}\n{agent.cli('diagnose', topo.b.name).stdout}")
    assert fb["severity"] == "warning" and report["critical"] == 0, fb
    assert "this side rejected" not in fb["cause"], fb["cause"]
    assert "rejected nothing itself" in fb["cause"], fb["cause"]
    evidence = "\n".join(fb["evidence"])
    assert "sidecar mTLS" not in evidence, evidence
    assert "inbound proxy passing a client's TLS to this pod's app" in evidence, evidence
    cli_text(agent, topo.b, exit_code=0)
