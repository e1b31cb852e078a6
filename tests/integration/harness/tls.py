"""TLS pieces of the integration tests: throwaway certificates, a TLS server in a pod
(scripts/tls_server.py, optionally delaying every handshake), TLS clients run in a pod as its app
(OpenSSL s_client, curl, GnuTLS gnutls-cli), the `meshlane tls` view, and HAProxy sidecars that
speak mTLS between the pods (as two Istio sidecars do)."""
import os

from . import proc, util
from .sidecar import HAPROXY_LOG_FORMAT, INBOUND_PORT, OUTBOUND_PORT, Sidecar
from .topology import APP_GID, APP_UID

SNI = "tls.test"


def _openssl_ec_key_args(key):
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]


def self_signed_cert(workdir, name=SNI, prefix="tls"):
    """A self-signed certificate for `name` (CN and SAN); returns (cert, key) paths. The key is
    world-readable: servers run as the app's or the proxy's uid (a throwaway in the test dir)."""
    cert, key = (os.path.join(workdir, f"{prefix}-{part}.pem") for part in ("cert", "key"))
    util.run(["openssl", "req", "-x509", *_openssl_ec_key_args(key), "-out", cert, "-days", "1",
              "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"])
    os.chmod(key, 0o644)
    return cert, key


def make_ca_certs(workdir, prefix="mtls", roles=("server", "client"), name=SNI):
    """A CA (<prefix>-ca.pem) and, per role, a certificate for `name` it signed, written as
    <prefix>-<role>.pem holding cert + key (as HAProxy wants). Returns {"ca": path, role: path}."""
    def path(suffix):
        return os.path.join(workdir, f"{prefix}-{suffix}")
    util.run(["openssl", "req", "-x509", *_openssl_ec_key_args(path("ca.key")), "-out",
              path("ca.pem"), "-days", "1", "-subj", f"/CN=meshlane-test-{prefix}-ca"])
    paths = {"ca": path("ca.pem")}
    for role in roles:
        util.run(["openssl", "req", *_openssl_ec_key_args(path(f"{role}.key")), "-out",
                  path(f"{role}.csr"), "-subj", f"/CN={name}"])
        util.run(["openssl", "x509", "-req", "-in", path(f"{role}.csr"), "-CA", path("ca.pem"),
                  "-CAkey", path("ca.key"), "-CAcreateserial", "-days", "1", "-out",
                  path(f"{role}.crt"), "-extfile", "/dev/stdin"],
                 input=f"subjectAltName=DNS:{name}\n")
        with open(path(f"{role}.pem"), "w") as out:
            for part in (f"{role}.crt", f"{role}.key"):
                with open(path(part)) as f:
                    out.write(f.read())
        os.chmod(path(f"{role}.pem"), 0o644)  # the proxies run as uid 1337
        paths[role] = path(f"{role}.pem")
    return paths


def start_tls_server(pod, port, cert, key, delay_ms=0):
    """scripts/tls_server.py on 0.0.0.0:port in pod's app cgroup as the app's uid, delaying every
    handshake by delay_ms; waits until it listens. The pod stops it with its apps."""
    err = open(os.path.join(pod.workdir, f"tls-server-{port}.err"), "ab")
    try:
        server = proc.spawn([util.PYTHON, os.path.join(util.SCRIPTS_DIR, "tls_server.py"),
                             "--listen", f"0.0.0.0:{port}", "--cert", cert, "--key", key,
                             "--delay-ms", str(delay_ms)],
                            netns_path=pod.netns_path, cgroup_dir=pod.cgroup("app"),
                            uid=APP_UID, gid=APP_GID, groups=[], stdout=err, stderr=err,
                            description=f"tls server of {pod.name} on {port}")
    finally:
        err.close()
    pod.apps.append(server)
    util.wait_until(lambda: server.poll() is not None or pod.listening([port], pid=server.pid),
                    timeout=5, message=f"TLS server listening on {port}")
    assert server.poll() is None, f"TLS server on {port} exited"
    return server


def run_client(pod, args, stdin=f"GET / HTTP/1.0\r\nHost: {SNI}\r\n\r\n", check=True):
    """Runs a client in pod's app cgroup as the app's uid, with stdin (the request to send)."""
    result = proc.run_in(args, netns_path=pod.netns_path, cgroup_dir=pod.cgroup("app"),
                         uid=APP_UID, gid=APP_GID, groups=[], timeout=20, input=stdin)
    if check:
        assert result.returncode == 0, f"{args} -> {result.returncode}: {result.stderr[-800:]}"
    return result


def openssl_client(ip, port, version, sni=SNI, extra=()):
    """s_client for one TLS version ("1.2", "1.3"); add "-verify_return_error" (and "-CAfile")
    to make an untrusted certificate fail the handshake."""
    return ["openssl", "s_client", "-connect", f"{ip}:{port}", "-servername", sni,
            f"-tls{version.replace('.', '_')}", "-quiet", *extra]


def curl_client(ip, port, version, sni=SNI, extra=("-k",)):
    bounds = ["--tlsv1.3"] if version == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    return ["curl", "-sS", "--max-time", "10", *extra, *bounds, "--resolve",
            f"{sni}:{port}:{ip}", f"https://{sni}:{port}/"]


def gnutls_client(ip, port, version, sni=SNI):
    return ["gnutls-cli", "--insecure", "--sni-hostname", sni, "-p", str(port),
            "--priority", f"NORMAL:-VERS-ALL:+VERS-TLS{version}", ip]


# -- the agent's TLS view ----------------------------------------------------------------------
def tls_view(agent, pod=None):
    """(workloads, observer) of `meshlane tls --json`."""
    args = ["tls"] + (["--workload", pod.name] if pod else [])
    data = agent.cli_json(*args)
    return data["workloads"], data["observer"]


def workload_tls(agent, pod):
    workloads, _ = tls_view(agent, pod)
    assert [w["name"] for w in workloads] == [pod.name], workloads
    return workloads[0]


def wait_attached(agent, count=2):
    util.wait_until(lambda: tls_view(agent)[1]["tls_attached_cgroups"] >= count, timeout=5,
                    interval=0.1, message=f"TLS wire programs on {count} pods")


def event_key(event):
    return (event["time_unix_ms"], event["source"], event["side"], event["local"],
            event["latency_ms"], event["pid"])


def all_keys(agent, pod):
    return {event_key(e) for e in workload_tls(agent, pod)["recent"]}


def new_events(agent, pod, seen, predicate, count, what, timeout=5.0):
    """Waits for `count` recent handshakes of pod matching predicate that are not in `seen`
    (a set of event_key()s already looked at, updated); returns (events, workload view)."""
    found = {}

    def check():
        w = workload_tls(agent, pod)
        fresh = [e for e in w["recent"] if event_key(e) not in seen and predicate(e)]
        found["events"], found["w"] = fresh, w
        return len(fresh) >= count
    try:
        util.wait_until(check, timeout=timeout, interval=0.1, message=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last view: {found.get('w')}") from None
    seen.update(event_key(e) for e in found["events"])
    return found["events"], found["w"]


# -- mTLS between HAProxy sidecars -----------------------------------------------------------------
def mtls_haproxy_config(client_pem, server_pem, ca, upstream_ca=None, sni=SNI):
    """The harness's HAProxy sidecar with TLS on the pod-to-pod hop: the outbound backend
    originates TLS presenting client_pem (None: no client certificate) and verifies the server
    against upstream_ca (default ca); the inbound frontend terminates TLS with server_pem and
    requires a client certificate signed by ca (mTLS, as between two Istio sidecars). The
    app <-> proxy hops stay plaintext."""
    client = f" crt {client_pem}" if client_pem else ""
    return "\n".join([
        "global", "    maxconn 256", "    log stdout format raw local0",
        "defaults", "    mode tcp", "    log global", f'    log-format "{HAPROXY_LOG_FORMAT}"',
        "    timeout connect 3s", "    timeout client 10s", "    timeout server 10s",
        "frontend outbound", f"    bind 127.0.0.1:{OUTBOUND_PORT}",
        "    default_backend outbound_dst", "backend outbound_dst",
        f"    server s 0.0.0.0:0 ssl verify required ca-file {upstream_ca or ca}{client}"
        f" sni str({sni})",
        "frontend inbound",
        f"    bind :::{INBOUND_PORT} v4v6 ssl crt {server_pem} ca-file {ca} verify required",
        "    default_backend inbound_dst", "backend inbound_dst", "    server s 0.0.0.0:0",
    ]) + "\n"


def start_mtls_sidecar(pod, **config):
    """A HAProxy sidecar in pod with mtls_haproxy_config(**config)."""
    pod.sidecar = Sidecar(pod, config=mtls_haproxy_config(**config)).start()
    return pod.sidecar
