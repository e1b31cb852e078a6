"""TLS-handshake observation end to end (bpf/observe_tls_wire.bpf.c, bpf/observe_tls_libssl.bpf.c,
agent/observe/tls_*): a TLS server in pod B delays every handshake by DELAY_MS (sleeping in its
SNI callback); clients in pod A (OpenSSL s_client, curl, GnuTLS gnutls-cli; TLS 1.2 and 1.3)
dial B through both HAProxy sidecars; `meshlane tls` (REST /v1/tls) must show the handshake,
timed on the wire from ClientHello to the client's first application_data record."""
import json
import os

import pytest

from harness import util
from harness.tls import (SNI, all_keys, make_ca_certs, new_events, run_client, self_signed_cert,
                         start_mtls_sidecar, start_tls_server, tls_view, wait_attached,
                         workload_tls)
from harness.tls import curl_client as tls_curl_client
from harness.tls import gnutls_client as tls_gnutls_client
from harness.tls import openssl_client as tls_openssl_client
from harness.topology import APP_PORT

TLS_PORT = 8443
DELAY_MS = 200
# The window the issue asks for, [D, D + 20 ms], is the default: on a quiet machine (CI runs the
# integration files one at a time) every client measured D + 3 .. D + 7 ms. On a box shared with
# parallel builds (load 12-14) handshakes took D + 4 .. D + 62 ms (scheduling of the clients and
# proxies, never below D); MESHLANE_TLS_LOADED=1 widens the upper bound to D + 100 ms there.
LOADED = os.environ.get("MESHLANE_TLS_LOADED") == "1"
SLACK_MS = 100 if LOADED else 20
# curl's SSL_connect vs the wire: within a few ms on a quiet machine, 1-18 ms apart under load.
LIBSSL_AGREEMENT_MS = 30.0 if LOADED else 5.0


@pytest.fixture
def tls_pods(meshed, agent):
    """Both pods enrolled with HAProxy sidecars; a TLS server on B:8443 delaying handshakes by
    DELAY_MS; the wire programs attached to both pods' cgroups."""
    topo = meshed
    cert, key = self_signed_cert(topo.workdir)
    start_tls_server(topo.b, TLS_PORT, cert, key, delay_ms=DELAY_MS)
    wait_attached(agent)
    topo.cert = cert
    return topo


def openssl_client(topo, version, extra=()):
    return tls_openssl_client(topo.b.ip4, TLS_PORT, version, extra=extra)


def curl_client(topo, version, extra=("-k",)):
    return tls_curl_client(topo.b.ip4, TLS_PORT, version, extra=extra)


def gnutls_client(topo, version):
    return tls_gnutls_client(topo.b.ip4, TLS_PORT, version)


CLIENTS = [
    ("openssl", "1.3"), ("openssl", "1.2"),
    ("curl", "1.3"), ("curl", "1.2"),
    ("gnutls", "1.3"), ("gnutls", "1.2"),
]



def assert_within_delay_window(measured, what):
    """Every (client, version, side, latency_ms) within [DELAY_MS, DELAY_MS + SLACK_MS]."""
    print(f"\n{what} (ms): " + ", ".join(f"{c} {v} {s} {ms:.1f}" for c, v, s, ms in measured))
    below = [m for m in measured if m[3] < DELAY_MS]
    assert not below, f"shorter than the server's delay {DELAY_MS} ms: {below}"
    outside = [m for m in measured if m[3] > DELAY_MS + SLACK_MS]
    assert not outside, f"above {DELAY_MS} + {SLACK_MS} ms: {outside}"

def assert_upstream_mtls_handshake(agent, topo):
    """A's proxy's upstream mTLS handshake to B's sidecar, seen on the wire: ok, TLS 1.3, SNI."""
    wire, _ = new_events(agent, topo.a, set(), lambda e: e["source"] == "wire", 1,
                         "A's proxy's upstream mTLS handshake on the wire")
    e = wire[0]
    assert e["side"] == "upstream" and e["outcome"] == "ok", e
    assert e["peer"] == f"{topo.b.ip4}:{APP_PORT}" and e["sni"] == SNI, e
    assert e["version"] == "TLS1.3" and 0 < e["latency_ms"] < 1000, e
    return e

def test_wire_latency_sni_and_version_for_every_client(tls_pods, agent):
    """Every client, both versions: the app's hop (app -> its proxy) and the proxy's upstream
    hop are both timed in [D, D + 20 ms], with the SNI and the version."""
    topo = tls_pods
    seen = all_keys(agent, topo.a)
    measured = []
    for client, version in CLIENTS:
        if client == "openssl":
            run_client(topo.a, openssl_client(topo, version))
        elif client == "curl":
            run_client(topo.a, curl_client(topo, version), stdin="")
        else:
            run_client(topo.a, gnutls_client(topo, version))
        events, w = new_events(agent, topo.a, seen,
                               lambda e: e["source"] == "wire" and e["sni"] == SNI, 2,
                               f"{client} TLS {version}: wire handshakes on both hops")
        assert sorted(e["side"] for e in events) == ["app", "upstream"], events
        for e in events:
            assert e["outcome"] == "ok", (client, version, e)
            assert e["version"] == f"TLS{version}", (client, version, e)
            assert e["peer"] == ("127.0.0.1:15001" if e["side"] == "app"
                                 else f"{topo.b.ip4}:{TLS_PORT}"), e
            if e["side"] == "app":
                assert e["original_destination"] == f"{topo.b.ip4}:{TLS_PORT}", e
            measured.append((client, version, e["side"], e["latency_ms"]))
    assert_within_delay_window(measured, "wire handshake latency")

    # Kernel totals reach the aggregate on the observer's next map snapshot (about a second).
    util.wait_until(lambda: workload_tls(agent, topo.a)["wire"]["completed"] >= 2 * len(CLIENTS),
                    timeout=5, message="kernel totals of every handshake")
    w = workload_tls(agent, topo.a)
    assert w["wire"]["completed"] >= 2 * len(CLIENTS), w["wire"]
    assert w["wire"]["failures"] == 0, w["wire"]
    # Exact mean from the kernel's sum; p50 is only as precise as its log2 bucket.
    latency = w["wire"]["latency"]
    assert DELAY_MS <= latency["mean_ms"] <= DELAY_MS + SLACK_MS, latency
    assert any(lower <= latency["p50_ms"] <= upper for lower, upper, _ in latency["buckets"])
    by_destination = {(d["destination"], d["source"]): d for d in w["destinations"]}
    assert by_destination[(SNI, "wire")]["handshakes"] >= 2 * len(CLIENTS), w["destinations"]


def test_rejected_certificate_is_a_failure(tls_pods, agent):
    """Clients that do not trust the self-signed certificate abort with an alert: TLS 1.2's is
    plaintext (unknown_ca), TLS 1.3's encrypted; both are recorded as failures, per
    destination too."""
    topo = tls_pods
    seen = all_keys(agent, topo.a)
    for version in ("1.2", "1.3"):
        result = run_client(topo.a, openssl_client(topo, version, ["-verify_return_error"]),
                            check=False)
        assert result.returncode != 0, result.stdout
        events, _ = new_events(agent, topo.a, seen,
                               lambda e: e["source"] == "wire" and e["side"] == "app", 1,
                               f"a failed TLS {version} handshake")
        e = events[0]
        assert e["outcome"] == "alert", e
        # OpenSSL rejects the certificate before switching its write side to the handshake
        # keys, so even its TLS 1.3 alert is plaintext; other TLS 1.3 clients' are encrypted
        # ("alert (encrypted)", tests/unit/tls_wire_test.cpp).
        assert e["alert"] in ("alert fatal 48 (unknown_ca)", "alert (encrypted)"), e
        assert e["sni"] == SNI, e
    result = run_client(topo.a, curl_client(topo, "1.2", extra=()), stdin="", check=False)
    assert result.returncode != 0, result.stdout
    new_events(agent, topo.a, seen, lambda e: e["source"] == "wire" and e["side"] == "app"
               and e["outcome"] == "alert", 1, "curl's rejected handshake")

    def failures():
        w = workload_tls(agent, topo.a)
        return w if w["wire"]["alerts"] >= 3 else None
    w = util.wait_until(failures, timeout=5, interval=0.1, message="three alerts counted")
    sni = [d for d in w["destinations"] if d["destination"] == SNI and d["source"] == "wire"]
    assert sni and sni[0]["failures"] >= 3, w["destinations"]
    assert sni[0]["last_failure_reason"].startswith("alert"), sni


def test_libssl_time_agrees_with_wire_and_retries_are_one_handshake(tls_pods, agent):
    """curl (OpenSSL, non-blocking SSL_connect): the uprobe time agrees with the wire time of the
    app's hop within a few ms. (s_client is not used: it handshakes implicitly inside
    SSL_read/SSL_write, which the uprobes do not follow.) A non-blocking Python client (the same libssl) calls do_handshake
    several times (WANT_READ in between): one libssl handshake, with every call counted."""
    topo = tls_pods
    _, observer = tls_view(agent)
    if not observer["tls_libssl_tracking"]:
        pytest.fail(f"libssl uprobes not attached: {observer['problems']}")
    seen = all_keys(agent, topo.a)
    run_client(topo.a, curl_client(topo, "1.3"), stdin="")
    wire, _ = new_events(agent, topo.a, seen, lambda e: e["source"] == "wire"
                         and e["side"] == "app", 1, "curl's wire handshake")
    libssl, _ = new_events(agent, topo.a, seen, lambda e: e["source"] == "libssl", 1,
                           "curl's libssl handshake")
    assert libssl[0]["comm"] == "curl" and libssl[0]["outcome"] == "ok", libssl
    # libssl's time contains the wire's (ClientHello is written inside the first call, the
    # Finished inside the last) plus the client's own work around it.
    difference = libssl[0]["latency_ms"] - wire[0]["latency_ms"]
    print(f"\ncurl: wire {wire[0]['latency_ms']:.2f} ms, libssl "
          f"{libssl[0]['latency_ms']:.2f} ms")
    assert -1.0 <= difference <= LIBSSL_AGREEMENT_MS, (wire, libssl)

    result = run_client(topo.a, [util.PYTHON, os.path.join(util.SCRIPTS_DIR,
                                                           "tls_nonblocking_client.py"),
                                 topo.b.ip4, str(TLS_PORT), "--sni", SNI], stdin="")
    client = json.loads(result.stdout)
    assert client["calls"] >= 2, client  # it really was non-blocking
    events, _ = new_events(agent, topo.a, seen, lambda e: e["source"] == "libssl", 1,
                           "the non-blocking client's libssl handshake")
    assert len(events) == 1, events
    e = events[0]
    assert e["outcome"] == "ok" and e["libssl_calls"] == client["calls"], (e, client)
    assert DELAY_MS <= e["latency_ms"] <= DELAY_MS + SLACK_MS, e


def test_mtls_between_haproxy_sidecars(topo, agent):
    """The app's plain HTTP to B is carried over mTLS between the two HAProxy sidecars: A's
    proxy's upstream handshake is measured on the wire (any library) and by the libssl uprobes
    (HAProxy is non-blocking: several SSL_do_handshake calls, one handshake); B's proxy's
    server-side handshake by the uprobes."""
    certs = make_ca_certs(topo.workdir)
    agent.enroll_ok(topo.a)
    agent.enroll_ok(topo.b)
    for pod in topo.pods:
        start_mtls_sidecar(pod, client_pem=certs["client"], server_pem=certs["server"],
                           ca=certs["ca"])
    topo.b.start_app()
    wait_attached(agent)
    result = topo.a.client(topo.b.ip4, APP_PORT)
    assert result.get("ok"), result

    e = assert_upstream_mtls_handshake(agent, topo)
    libssl, _ = new_events(agent, topo.a, set(), lambda e: e["source"] == "libssl", 1,
                           "A's HAProxy handshake through the libssl uprobes")
    assert libssl[0]["comm"] == "haproxy" and libssl[0]["outcome"] == "ok", libssl
    assert len(libssl) == 1, libssl  # one handshake, however many calls
    print(f"\nmTLS upstream handshake: wire {e['latency_ms']:.2f} ms, libssl "
          f"{libssl[0]['latency_ms']:.2f} ms in {libssl[0]['libssl_calls']} calls")
    server_side, _ = new_events(agent, topo.b, set(), lambda e: e["source"] == "libssl", 1,
                                "B's HAProxy server-side handshake")
    assert server_side[0]["comm"] == "haproxy" and server_side[0]["outcome"] == "ok", server_side
