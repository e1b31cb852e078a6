"""TLS-handshake observation end to end (bpf/observe_tls_wire.bpf.c, bpf/observe_tls_libssl.bpf.c,
agent/observe/tls_*): a TLS server in pod B delays every handshake by DELAY_MS (sleeping in its
SNI callback); clients in pod A (OpenSSL s_client, curl, GnuTLS gnutls-cli; TLS 1.2 and 1.3)
dial B through both HAProxy sidecars; `meshlane tls` (REST /v1/tls) must show the handshake,
timed on the wire from ClientHello to the client's first application_data record."""
import json
import os

import pytest

from harness import proc, util
from harness import sidecar as sidecar_module
from harness.sidecar import HAPROXY_LOG_FORMAT, Sidecar
from harness.topology import APP_GID, APP_PORT, APP_UID

TLS_PORT = 8443
SNI = "tls.test"
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
    cert, key = (os.path.join(topo.workdir, name) for name in ("tls-cert.pem", "tls-key.pem"))
    util.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days",
              "1", "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI}"])
    os.chmod(key, 0o644)  # the server runs as the app's uid; a throwaway key in the test dir
    err = open(os.path.join(topo.workdir, "tls-server.err"), "ab")
    try:
        server = proc.spawn([util.PYTHON, os.path.join(util.SCRIPTS_DIR, "tls_server.py"),
                             "--listen", f"0.0.0.0:{TLS_PORT}", "--cert", cert, "--key", key,
                             "--delay-ms", str(DELAY_MS)],
                            netns_path=topo.b.netns_path, cgroup_dir=topo.b.cgroup("app"),
                            uid=APP_UID, gid=APP_GID, groups=[], stdout=err, stderr=err,
                            description=f"tls server of {topo.b.name}")
    finally:
        err.close()
    topo.b.apps.append(server)
    util.wait_until(lambda: server.poll() is not None or topo.b.listening([TLS_PORT],
                                                                         pid=server.pid),
                    timeout=5, message="TLS server listening")
    assert server.poll() is None, "TLS server exited"

    def attached():
        return tls_view(agent)[1]["tls_attached_cgroups"] >= 2
    util.wait_until(attached, timeout=5, interval=0.1, message="wire programs on both pods")
    topo.cert = cert
    return topo


def tls_view(agent, pod=None):
    args = ["tls"] + (["--workload", pod.name] if pod else [])
    data = agent.cli_json(*args)
    return data["workloads"], data["observer"]


def workload_tls(agent, pod):
    workloads, _ = tls_view(agent, pod)
    assert [w["name"] for w in workloads] == [pod.name], workloads
    return workloads[0]


def run_client(pod, args, stdin="GET / HTTP/1.0\r\nHost: tls.test\r\n\r\n", check=True):
    """Runs a client in pod's app cgroup as the app's uid, with stdin (the request to send)."""
    result = proc.run_in(args, netns_path=pod.netns_path, cgroup_dir=pod.cgroup("app"),
                         uid=APP_UID, gid=APP_GID, groups=[], timeout=20, input=stdin)
    if check:
        assert result.returncode == 0, f"{args} -> {result.returncode}: {result.stderr[-800:]}"
    return result


def openssl_client(topo, version, extra=()):
    return ["openssl", "s_client", "-connect", f"{topo.b.ip4}:{TLS_PORT}", "-servername", SNI,
            f"-tls{version.replace('.', '_')}", "-quiet", *extra]


def curl_client(topo, version, extra=("-k",)):
    bounds = ["--tlsv1.3"] if version == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    return ["curl", "-sS", "--max-time", "10", *extra, *bounds, "--resolve",
            f"{SNI}:{TLS_PORT}:{topo.b.ip4}", f"https://{SNI}:{TLS_PORT}/"]


def gnutls_client(topo, version):
    return ["gnutls-cli", "--insecure", "--sni-hostname", SNI, "-p", str(TLS_PORT),
            "--priority", f"NORMAL:-VERS-ALL:+VERS-TLS{version}", topo.b.ip4]


def new_events(agent, pod, seen, predicate, count, what, timeout=5.0):
    """Waits for `count` recent handshakes of pod matching predicate that are not in `seen`
    (a set of keys of events already looked at); returns them."""
    found = {}

    def check():
        w = workload_tls(agent, pod)
        fresh = [e for e in w["recent"] if key(e) not in seen and predicate(e)]
        found["events"], found["w"] = fresh, w
        return len(fresh) >= count
    try:
        util.wait_until(check, timeout=timeout, interval=0.1, message=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last view: {found.get('w')}") from None
    seen.update(key(e) for e in found["events"])
    return found["events"], found["w"]


def key(event):
    return (event["time_unix_ms"], event["source"], event["side"], event["local"],
            event["latency_ms"], event["pid"])


def all_keys(agent, pod):
    return {key(e) for e in workload_tls(agent, pod)["recent"]}


CLIENTS = [
    ("openssl", "1.3"), ("openssl", "1.2"),
    ("curl", "1.3"), ("curl", "1.2"),
    ("gnutls", "1.3"), ("gnutls", "1.2"),
]


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
    print("\nwire handshake latency (ms): " +
          ", ".join(f"{c} {v} {s} {ms:.1f}" for c, v, s, ms in measured))
    below = [m for m in measured if m[3] < DELAY_MS]
    assert not below, f"shorter than the server's delay {DELAY_MS} ms: {below}"
    outside = [m for m in measured if m[3] > DELAY_MS + SLACK_MS]
    assert not outside, f"above {DELAY_MS} + {SLACK_MS} ms: {outside}"

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


def mtls_haproxy_config(workdir):
    """The harness's HAProxy sidecar with TLS on the pod-to-pod hop: the outbound backend
    originates TLS with a client certificate, the inbound frontend terminates it and requires
    one (mTLS, as between two Istio sidecars). App <-> proxy hops stay plaintext."""
    client, server, ca = (os.path.join(workdir, n) for n in ("mtls-client.pem", "mtls-server.pem",
                                                             "mtls-ca.pem"))
    return "\n".join([
        "global", "    maxconn 256", "    log stdout format raw local0",
        "defaults", "    mode tcp", "    log global", f'    log-format "{HAPROXY_LOG_FORMAT}"',
        "    timeout connect 3s", "    timeout client 10s", "    timeout server 10s",
        "frontend outbound", "    bind 127.0.0.1:15001", "    default_backend outbound_dst",
        "backend outbound_dst",
        f"    server s 0.0.0.0:0 ssl verify required ca-file {ca} crt {client} sni str({SNI})",
        "frontend inbound", f"    bind :::15006 v4v6 ssl crt {server} ca-file {ca} verify required",
        "    default_backend inbound_dst", "backend inbound_dst", "    server s 0.0.0.0:0",
    ]) + "\n"


def make_mtls_certs(workdir):
    """A CA, and a server and a client certificate it signed (PEM cert+key, as HAProxy wants)."""
    def path(name):
        return os.path.join(workdir, name)
    util.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path("mtls-ca.key"), "-out",
              path("mtls-ca.pem"), "-days", "1", "-subj", "/CN=meshlane-test-ca"])
    for role in ("server", "client"):
        util.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", path(f"mtls-{role}.key"), "-out", path(f"mtls-{role}.csr"),
                  "-subj", f"/CN={SNI}"])
        util.run(["openssl", "x509", "-req", "-in", path(f"mtls-{role}.csr"), "-CA",
                  path("mtls-ca.pem"), "-CAkey", path("mtls-ca.key"), "-CAcreateserial", "-days",
                  "1", "-out", path(f"mtls-{role}.crt"), "-extfile", "/dev/stdin"],
                 input=f"subjectAltName=DNS:{SNI}\n")
        with open(path(f"mtls-{role}.pem"), "w") as out:
            for part in (f"mtls-{role}.crt", f"mtls-{role}.key"):
                with open(path(part)) as f:
                    out.write(f.read())
        os.chmod(path(f"mtls-{role}.pem"), 0o644)  # the proxies run as uid 1337


class MtlsSidecar(Sidecar):
    """Sidecar with the mTLS configuration above instead of the harness's plain one."""

    def start(self):
        original = sidecar_module.haproxy_config
        sidecar_module.haproxy_config = lambda *args, **kwargs: mtls_haproxy_config(
            self.pod.workdir)
        try:
            return super().start()
        finally:
            sidecar_module.haproxy_config = original


def test_mtls_between_haproxy_sidecars(topo, agent):
    """The app's plain HTTP to B is carried over mTLS between the two HAProxy sidecars: A's
    proxy's upstream handshake is measured on the wire (any library) and by the libssl uprobes
    (HAProxy is non-blocking: several SSL_do_handshake calls, one handshake); B's proxy's
    server-side handshake by the uprobes."""
    make_mtls_certs(topo.workdir)
    agent.enroll_ok(topo.a)
    agent.enroll_ok(topo.b)
    for pod in topo.pods:
        pod.sidecar = MtlsSidecar(pod).start()
    topo.b.start_app()
    util.wait_until(lambda: tls_view(agent)[1]["tls_attached_cgroups"] >= 2, timeout=5,
                    interval=0.1, message="wire programs on both pods")
    result = topo.a.client(topo.b.ip4, APP_PORT)
    assert result.get("ok"), result

    wire, _ = new_events(agent, topo.a, set(), lambda e: e["source"] == "wire", 1,
                         "A's proxy's upstream mTLS handshake on the wire")
    e = wire[0]
    assert e["side"] == "upstream" and e["outcome"] == "ok", e
    assert e["peer"] == f"{topo.b.ip4}:{APP_PORT}" and e["sni"] == SNI, e
    assert e["version"] == "TLS1.3" and 0 < e["latency_ms"] < 1000, e
    libssl, _ = new_events(agent, topo.a, set(), lambda e: e["source"] == "libssl", 1,
                           "A's HAProxy handshake through the libssl uprobes")
    assert libssl[0]["comm"] == "haproxy" and libssl[0]["outcome"] == "ok", libssl
    assert len(libssl) == 1, libssl  # one handshake, however many calls
    print(f"\nmTLS upstream handshake: wire {e['latency_ms']:.2f} ms, libssl "
          f"{libssl[0]['latency_ms']:.2f} ms in {libssl[0]['libssl_calls']} calls")
    server_side, _ = new_events(agent, topo.b, set(), lambda e: e["source"] == "libssl", 1,
                                "B's HAProxy server-side handshake")
    assert server_side[0]["comm"] == "haproxy" and server_side[0]["outcome"] == "ok", server_side
