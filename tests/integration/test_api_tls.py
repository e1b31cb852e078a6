"""The API's TCP listeners against a running agent: REST over TLS with curl, gRPC over TLS with
python3-grpcio, and the meshlane CLI with --server https://. A CA, a server certificate (for
127.0.0.1) and client certificates are made with the openssl command in a temporary directory;
the listeners bind free ports on 127.0.0.1 only. Checks: reads are open to TLS clients, plain
HTTP on the TLS port gets no HTTP answer, mutations need the bearer token (401 without or with a
wrong one, WWW-Authenticate set) or, with tls_require_client_cert, a verified client certificate
(no certificate: the handshake fails), Verify needs them too (REST and gRPC), the CLI takes its
transport options from MESHLANE_* variables (flags win), refuses unreadable or bad TLS files with
the usage exit code, and streams `conns --follow` over https; bad TCP settings stop the agent
before it loads anything, with an error naming the key."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading

import grpc
import pytest

from harness import cleanup, proc, util
from harness.api import CURL, ReflectionClient, Reply
from harness.meshlane import Agent, meshlane_bin

TOKEN = "meshlane-test-token-5f1c0a9e"


def spec_of(pod):
    return {"name": pod.name, "cgroup": pod.cgroup(), "netns": pod.netns_path}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PKI -------------------------------------------------------------------------------------------
class Pki:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f"meshlane-pki-{util.unique_id()}-")
        self._token = cleanup.REGISTRY.add(f"rm {self.dir}",
                                           lambda: cleanup.remove_tree(self.dir),
                                           {"kind": "dir", "path": self.dir})
        self._ca("ca")
        self._ca("other-ca")
        self._leaf("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        self._leaf("client", "ca", "extendedKeyUsage=clientAuth\n")
        self._leaf("stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
        self.token_file = self.path("token")
        self.wrong_token_file = self.path("wrong-token")
        for path, text in ((self.token_file, TOKEN), (self.wrong_token_file, TOKEN[::-1])):
            with open(path, "w") as f:
                f.write(text + "\n")
            os.chmod(path, 0o600)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        util.run(["openssl", *args], cwd=self.dir)

    def _key(self, name):
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-out", f"{name}.key")
        os.chmod(self.path(f"{name}.key"), 0o600)

    def _ca(self, name):
        self._key(name)
        self._openssl("req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.crt",
                      "-subj", f"/CN=meshlane test {name}", "-days", "2")

    def _leaf(self, name, ca, extensions):
        self._key(name)
        self._openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr",
                      "-subj", f"/CN=meshlane test {name}")
        with open(self.path(f"{name}.ext"), "w") as f:
            f.write(extensions)
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
                      f"{ca}.key", "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                      "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")

    def remove(self):
        cleanup.REGISTRY.undo(self._token)


@pytest.fixture(scope="module")
def pki():
    p = Pki()
    yield p
    p.remove()


# -- agents with TCP listeners ---------------------------------------------------------------------
class TlsAgent(Agent):
    """The harness agent plus TCP listeners on free 127.0.0.1 ports and the TLS keys."""

    def __init__(self, binary, pki, **settings):
        super().__init__(binary)
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.rest_port}"
        self.settings = {"rest_tcp_listen": f"127.0.0.1:{self.rest_port}",
                         "grpc_tcp_listen": f"127.0.0.1:{self.grpc_port}",
                         "tls_cert_file": pki.path("server.crt"),
                         "tls_key_file": pki.path("server.key")}
        self.settings.update(settings)

    def _write_config(self):
        super()._write_config()
        with open(self.config_path, "a") as f:
            for key, value in self.settings.items():
                f.write(f"{key} = {value}\n")


def start_agent(request, pki, **settings):
    instance = TlsAgent(meshlane_bin(), pki, **settings)

    def stop():
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(f"\n=== agent log ===\n{instance.log_text()[-4000:]}")
        instance.destroy()
    request.addfinalizer(stop)
    return instance.start()


@pytest.fixture
def token_agent(request, pki):
    """Server certificate and a bearer token; client certificates not requested."""
    return start_agent(request, pki, api_token_file=pki.token_file)


@pytest.fixture
def mtls_agent(request, pki):
    """Client certificates required (and sufficient for mutations); no token."""
    return start_agent(request, pki, tls_client_ca_file=pki.path("ca.crt"),
                       tls_require_client_cert="true")


# -- clients -----------------------------------------------------------------------------------------
def https(agent, method, path, pki, body=None, token=None, cert=None, cacert="ca.crt",
          timeout=20):
    """curl over TLS; Reply.status 0 when curl itself failed (body: curl's error)."""
    cmd = [CURL, "-sS", "-X", method, "-D", "-", "--max-time", str(timeout),
           "--cacert", pki.path(cacert), f"{agent.url}{path}"]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if cert is not None:
        cmd += ["--cert", pki.path(f"{cert}.crt"), "--key", pki.path(f"{cert}.key")]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    result = subprocess.run(cmd, capture_output=True, timeout=timeout + 10)
    text = result.stdout.decode(errors="replace")
    head, _, payload = text.partition("\r\n\r\n")
    if not head.startswith("HTTP/"):
        return Reply(0, {}, result.stderr.decode(errors="replace"))
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(int(lines[0].split()[1]), headers, payload)


def cli(agent, pki, *args, cacert="ca.crt", server=None, extra=()):
    cmd = [agent.binary, "--server", server or agent.url, "--cacert", pki.path(cacert),
           *extra, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


class TlsReflectionClient(ReflectionClient):
    """The harness's reflection-based gRPC client on a TLS channel to the TCP listener."""

    def __init__(self, port, pki, cert=None):
        self.grpc = grpc
        with open(pki.path("ca.crt"), "rb") as f:
            root = f.read()
        key = chain = None
        if cert:
            with open(pki.path(f"{cert}.key"), "rb") as f:
                key = f.read()
            with open(pki.path(f"{cert}.crt"), "rb") as f:
                chain = f.read()
        credentials = grpc.ssl_channel_credentials(root, key, chain)
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
        self._info = self.channel.stream_stream(self.METHOD, request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
        self.messages = {}


def grpc_code(fn):
    with pytest.raises(grpc.RpcError) as error:
        fn()
    return error.value.code(), error.value.details()


# -- REST ---------------------------------------------------------------------------------------
def test_rest_reads_open_mutations_need_the_token(topo, token_agent, pki):
    agent = token_agent
    status = https(agent, "GET", "/v1/status", pki)
    assert status.status == 200 and "version" in status.json(), status
    assert https(agent, "GET", "/v1/workloads", pki).json() == {"workloads": []}
    assert https(agent, "GET", "/v1/status", pki, cacert="other-ca.crt").status == 0

    missing = https(agent, "POST", "/v1/workloads", pki, body=spec_of(topo.a))
    assert missing.status == 401, missing
    assert missing.json()["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = https(agent, "POST", "/v1/workloads", pki, body=spec_of(topo.a), token=TOKEN[::-1])
    assert wrong.status == 401 and "invalid_token" in wrong.headers["www-authenticate"], wrong
    assert agent.workload_names() == []  # nothing was half-applied

    created = https(agent, "POST", "/v1/workloads", pki, body=spec_of(topo.a), token=TOKEN)
    assert created.status == 201, created
    assert agent.workload_names() == [topo.a.name]  # real: the unix-socket CLI sees it
    detail = https(agent, "GET", f"/v1/workloads/{topo.a.name}", pki).json()
    assert any(p["program"] for p in detail["programs"]), detail
    assert https(agent, "DELETE", f"/v1/workloads/{topo.a.name}", pki).status == 401
    assert https(agent, "PUT", "/v1/workloads", pki, token=TOKEN).status == 405
    removed = https(agent, "DELETE", f"/v1/workloads/{topo.a.name}", pki, token=TOKEN)
    assert removed.json() == {"name": topo.a.name, "removed": True}, removed
    assert agent.workload_names() == []


def test_plain_http_on_the_tls_port_gets_no_http_answer(token_agent):
    with socket.create_connection(("127.0.0.1", token_agent.rest_port), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: meshlane\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    assert not data.startswith(b"HTTP/"), data[:200]
    # ... and the agent still serves TLS clients.
    result = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-k",
                             f"{token_agent.url}/v1/health"], capture_output=True, text=True,
                            timeout=20)
    assert result.stdout == "200", result


def test_required_client_certificate_authorizes_mutations(topo, mtls_agent, pki):
    agent = mtls_agent
    assert https(agent, "GET", "/v1/health", pki).status == 0  # no certificate: no handshake
    assert https(agent, "GET", "/v1/health", pki, cert="stranger").status == 0
    assert https(agent, "GET", "/v1/health", pki, cert="client").status == 200
    created = https(agent, "POST", "/v1/workloads", pki, body=spec_of(topo.a), cert="client")
    assert created.status == 201, created
    assert https(agent, "DELETE", f"/v1/workloads/{topo.a.name}", pki,
                 cert="client").status == 200
    assert agent.workload_names() == []
    assert "TLS handshake with" in agent.log_text()  # refused handshakes are logged


# -- gRPC ---------------------------------------------------------------------------------------
def test_grpc_over_tls_with_token_and_certificate(topo, request, pki):
    agent = start_agent(request, pki, api_token_file=pki.token_file,
                        tls_client_ca_file=pki.path("ca.crt"))
    client = TlsReflectionClient(agent.grpc_port, pki)
    request.addfinalizer(client.close)
    assert "meshlane.v1.Agent" in client.list_services()
    service = client.load_service("meshlane.v1.Agent")
    status = client.unary(service, "Status")
    assert status.version, status
    assert client.health() == 1

    spec = spec_of(topo.a)
    code, details = grpc_code(lambda: client.unary(service, "Enroll", spec=spec))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details, details
    code, details = grpc_code(lambda: client.unary(service, "Enroll", spec=spec,
                                                  token=TOKEN[::-1]))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
    assert agent.workload_names() == []
    assert client.unary(service, "Enroll", spec=spec, token=TOKEN).created
    assert agent.workload_names() == [topo.a.name]

    with_cert = TlsReflectionClient(agent.grpc_port, pki, cert="client")
    request.addfinalizer(with_cert.close)
    with_cert.load_service("meshlane.v1.Agent")
    assert with_cert.unary(service, "Unenroll", name=topo.a.name).removed
    assert agent.workload_names() == []


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_over_https(topo, token_agent, pki):
    agent = token_agent
    status = cli(agent, pki, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["version"]

    enroll = ("enroll", topo.a.name, "--cgroup", topo.a.cgroup(), "--netns", topo.a.netns_path)
    refused = cli(agent, pki, *enroll)
    assert refused.returncode == 1, refused
    assert "401" in refused.stderr and "--token-file" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    wrong = cli(agent, pki, *enroll, extra=("--token-file", pki.wrong_token_file))
    assert wrong.returncode == 1 and "invalid bearer token" in wrong.stderr, wrong
    ok = cli(agent, pki, *enroll, extra=("--token-file", pki.token_file))
    assert ok.returncode == 0, ok.stderr
    listed = cli(agent, pki, "workloads", "--json")
    assert [w["name"] for w in json.loads(listed.stdout)["workloads"]] == [topo.a.name]
    assert cli(agent, pki, "unenroll", topo.a.name,
               extra=("--token-file", pki.token_file)).returncode == 0

    untrusted = cli(agent, pki, "status", cacert="other-ca.crt")
    assert untrusted.returncode == 3, untrusted
    assert "certificate was not accepted" in untrusted.stderr, untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1
    gone = cli(agent, pki, "status", server=f"https://127.0.0.1:{free_port()}")
    assert gone.returncode == 3 and "cannot reach" in gone.stderr, gone
    plain = cli(agent, pki, "status", server=f"http://127.0.0.1:{agent.rest_port}")
    assert plain.returncode == 3 and "https://" in plain.stderr, plain


def test_cli_transport_from_the_environment(topo, token_agent, pki):
    """MESHLANE_SERVER/CACERT/TOKEN_FILE stand in for the flags; a flag wins over its variable."""
    agent = token_agent
    env = dict(os.environ, MESHLANE_SERVER=agent.url, MESHLANE_CACERT=pki.path("ca.crt"),
               MESHLANE_TOKEN_FILE=pki.token_file)

    def run(*args, environment=env):
        return subprocess.run([agent.binary, *args], capture_output=True, text=True, timeout=30,
                              env=environment)
    status = run("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["version"], status.stderr
    enrolled = run("enroll", topo.a.name, "--cgroup", topo.a.cgroup(), "--netns",
                   topo.a.netns_path)
    assert enrolled.returncode == 0, enrolled.stderr  # the token came from the environment
    assert agent.workload_names() == [topo.a.name]
    missing = pki.path("missing.crt")
    bad_env = dict(env, MESHLANE_CACERT=missing)
    refused = run("status", environment=bad_env)
    assert refused.returncode == 2 and missing in refused.stderr, refused
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert run("--cacert", pki.path("ca.crt"), "status", environment=bad_env).returncode == 0
    local = run("--server", agent.api_socket, "workloads", "--json")  # flag over env
    assert local.returncode == 0, local.stderr
    assert run("unenroll", topo.a.name).returncode == 0
    assert agent.workload_names() == []
    usage = run("--help")
    for name in ("MESHLANE_SERVER", "MESHLANE_CACERT", "MESHLANE_CERT", "MESHLANE_KEY",
                 "MESHLANE_TOKEN_FILE"):
        assert name in usage.stdout, usage.stdout


def test_cli_bad_tls_files_are_usage_errors(token_agent, pki):
    """Exit 2 (CLI11's usage code) with one line naming the file, never 3 (agent unreachable)."""
    agent = token_agent
    garbage = pki.path("garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    missing = pki.path("missing.pem")
    cases = [
        (("--cacert", missing), missing),
        (("--cacert", pki.dir), pki.dir),
        (("--cacert", garbage), garbage),
        (("--cacert", pki.path("ca.crt"), "--cert", pki.path("client.crt")), "--key"),
        (("--cacert", pki.path("ca.crt"), "--cert", pki.path("client.crt"), "--key",
          pki.path("server.key")), pki.path("server.key")),
        (("--cacert", pki.path("ca.crt"), "--cert", garbage, "--key", pki.path("client.key")),
         garbage),
        (("--cacert", pki.path("ca.crt"), "--token-file", missing), missing),
    ]
    for flags, named in cases:
        result = subprocess.run([agent.binary, "--server", agent.url, *flags, "status"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (flags, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], (flags, result.stderr)


def test_follow_over_https(topo, token_agent, pki):
    """`meshlane conns --follow --server https://...` streams like over the unix socket."""
    agent = token_agent
    agent.enroll_ok(topo.a)
    follower = proc.spawn([agent.binary, "--server", agent.url, "--cacert", pki.path("ca.crt"),
                           "conns", "--follow", "--json", "--workload", topo.a.name],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          description="meshlane conns --follow over https")
    lines = []

    def read():
        for raw in follower.stdout:
            lines.append(raw.decode(errors="replace").strip())
    threading.Thread(target=read, daemon=True).start()
    try:
        util.wait_until(lambda: agent.cli_json("status")["events"]["subscribers"] >= 1,
                        timeout=10, interval=0.05, message="the https follower subscribed")
        result = topo.a.client("127.0.0.1", 9)
        assert not result["ok"], result
        util.wait_until(lambda: any("127.0.0.1:9" in line for line in lines), timeout=15,
                        interval=0.1, message="A's refused connect on the https stream")
        event = json.loads(next(line for line in lines if "127.0.0.1:9" in line))
        assert event["type"] == "connect" and event["workload"] == topo.a.name, event
        assert event["details"]["outcome"] == "refused", event
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
        assert follower.returncode == 0, follower.stderr.read()
    finally:
        proc.stop(follower)


def test_verify_needs_credentials_on_tcp_like_enroll(topo, request, pki):
    """Verify changes no state but runs probes inside the pod: privileged on TCP, on REST and
    gRPC alike; diagnose (read-only) stays open."""
    agent = start_agent(request, pki, api_token_file=pki.token_file)
    agent.enroll_ok(topo.a)
    path = f"/v1/workloads/{topo.a.name}/verify"
    refused = https(agent, "POST", path, pki)
    assert refused.status == 401 and refused.json()["code"] == "unauthenticated", refused
    allowed = https(agent, "POST", path, pki, token=TOKEN, timeout=60)
    assert allowed.status == 200 and allowed.json()["checks"], allowed
    assert https(agent, "GET", f"/v1/workloads/{topo.a.name}/diagnose", pki).status == 200

    client = TlsReflectionClient(agent.grpc_port, pki)
    request.addfinalizer(client.close)
    service = client.load_service("meshlane.v1.Agent")
    code, details = grpc_code(lambda: client.unary(service, "Verify", name=topo.a.name))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details, details
    method = service.methods_by_name["Verify"]
    stub = client.channel.unary_unary(
        f"/{service.full_name}/Verify", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=client.messages[method.output_type.full_name].FromString)
    verified = stub(client.messages[method.input_type.full_name](name=topo.a.name), timeout=60,
                    metadata=[("authorization", f"Bearer {TOKEN}")])
    assert verified.workload == topo.a.name and verified.checks, verified
    assert client.unary(service, "Diagnose", name=topo.a.name).workload == topo.a.name


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"rest_tcp_listen": "127.0.0.1:{port}"}, "rest_tcp_listen needs tls_cert_file"),
    ({"grpc_tcp_listen": "0.0.0.0:{port}", "tls_cert_file": "{pki}/server.crt",
      "tls_key_file": "{pki}/server.key"}, "api_tcp_allow_non_loopback"),
    ({"rest_tcp_listen": "127.0.0.1:{port}", "tls_cert_file": "{pki}/server.crt",
      "tls_key_file": "{pki}/client.key"}, "does not match the certificate"),
    ({"rest_tcp_listen": "127.0.0.1:{port}", "tls_cert_file": "{pki}/server.crt",
      "tls_key_file": "{pki}/server.key", "api_token_file": "{pki}/missing"},
     "api_token_file {pki}/missing: No such file"),
])
def test_bad_tcp_settings_stop_the_agent_before_it_loads(pki, settings, message):
    agent = Agent(meshlane_bin())
    agent.prepare()
    try:
        with open(agent.config_path, "a") as f:
            for key, value in settings.items():
                f.write(f"{key} = {value.format(port=free_port(), pki=pki.dir)}\n")
        result = subprocess.run([agent.binary, "agent", "--config", agent.config_path],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, result
        output = result.stdout + result.stderr
        assert message.format(pki=pki.dir) in output, output
        assert not os.path.exists(agent.api_socket)
        assert not os.path.exists(agent.pin_path)  # nothing was loaded
    finally:
        agent.destroy()
