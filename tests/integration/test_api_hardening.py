"""Hardening of the API and of enrolment against a local unprivileged user (issue 18): the TCP
listeners cannot lock root out of the unix socket (separate budgets per transport and
principal), a TCP flood cannot grow the agent's descriptors, HTTP/2 rapid reset on the gRPC TLS
port leaves memory bounded, hostile enrolment paths (a FIFO, a socket, a device) are refused at
once without blocking anything, node-wide targets (the cgroup2 root or an ancestor of the agent's
cgroup, the host netns, a cgroup nested with an enrolled pod's) are refused with 4xx and the
reason, and two agents cannot share a pin_dir. The hostile clients run as user nobody (65534).
"""
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from harness import cleanup, proc, util
from harness.api import curl, rss_kib
from harness.meshlane import Agent, meshlane_bin
from test_api_tls import Pki, start_agent

NOBODY = 65534

# Held connections of a hostile local user: TLS connections that finished the handshake and
# stay idle, REST event streams, and plain TCP connections that never start a handshake.
HOSTILE = r"""
import resource, socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tls_idle, streams, raw = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ctx = ssl.create_default_context(cadata=ca)
held, handshakes, stream_ok = [], 0, 0
def tls():
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=3),
                           server_hostname=host)
for _ in range(streams):
    try:
        s = tls()
        s.sendall(b"GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        stream_ok += s.recv(4096).startswith(b"HTTP/1.1 200")
        held.append(s)
    except Exception:
        pass
for _ in range(tls_idle):
    try:
        held.append(tls())
        handshakes += 1
    except Exception:
        pass
for _ in range(raw):
    try:
        held.append(socket.create_connection((host, port), timeout=2))
    except Exception:
        pass
print(f"ready {handshakes} {stream_ok} {len(held)}", flush=True)
sys.stdin.read()
"""


def ca_pem(pki):
    """The CA as text: user nobody cannot read the PKI directory (0700)."""
    with open(pki.path("ca.crt")) as f:
        return f.read()


class Hostile:
    def __init__(self, agent, pki, tls_idle=0, streams=0, raw=0):
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOSTILE, "127.0.0.1", str(agent.rest_port),
             ca_pem(pki), str(tls_idle), str(streams), str(raw)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=proc._child_setup(None, None, NOBODY, NOBODY, []))
        self._token = cleanup.REGISTRY.add(
            f"kill hostile client pid {self.process.pid}", self.stop,
            {"kind": "pid", "pid": self.process.pid,
             "start": cleanup._proc_start(self.process.pid)})
        line = self.process.stdout.readline().split()
        assert line and line[0] == "ready", line
        self.handshakes, self.streams, self.held = map(int, line[1:])

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self):
        cleanup.REGISTRY.undo(self._token)


def unix_request(agent, method, path, body=None, timeout=5.0):
    """One HTTP/1.1 request on the unix socket, timed from connect to the full answer."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(agent.api_socket)
        s.sendall(head.encode() + payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    elapsed = time.monotonic() - started
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data.partition(b"\r\n\r\n")[2], elapsed


def health_latencies(agent, count=7):
    latencies = []
    for _ in range(count):
        status, _, elapsed = unix_request(agent, "GET", "/v1/health")
        assert status == 200
        latencies.append(elapsed)
    return sorted(latencies)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def pki():
    p = Pki()
    yield p
    p.remove()


@pytest.fixture
def tls_agent(request, pki):
    return start_agent(request, pki, api_token_file=pki.token_file)


def spec_of(pod, **fields):
    body = {"name": pod.name, "cgroup": pod.cgroup(), "netns": pod.netns_path}
    body.update(fields)
    return body


# -- 1: no lock-out through the TCP listener ---------------------------------------------------
def test_tcp_clients_cannot_lock_root_out_of_the_unix_socket(topo, tls_agent, pki):
    # Enrolment time without load, for the comparison below (enroll attaches programs).
    status, _, quiet_enroll = unix_request(tls_agent, "POST", "/v1/workloads", spec_of(topo.a))
    assert status == 201
    assert unix_request(tls_agent, "DELETE", f"/v1/workloads/{topo.a.name}")[0] == 200
    hostile = Hostile(tls_agent, pki, tls_idle=256, streams=32)
    try:
        # The TCP budgets, not the unix one, were used up.
        assert hostile.streams <= 8, hostile.streams
        latencies = health_latencies(tls_agent)
        assert latencies[len(latencies) // 2] < 0.1, latencies
        status, body, elapsed = unix_request(tls_agent, "POST", "/v1/workloads",
                                             spec_of(topo.a))
        assert status == 201, body
        assert elapsed < quiet_enroll + 0.1, (elapsed, quiet_enroll)
        # Root's own event stream still gets a slot.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(tls_agent.api_socket)
            s.sendall(b"GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        result = tls_agent.cli("workloads", timeout=10)
        assert result.returncode == 0 and topo.a.name in result.stdout, result.stderr
    finally:
        hostile.close()


GRPC_STREAMS = r"""
import sys, time, grpc
port, ca, count = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca))
call = channel.unary_stream("/meshlane.v1.Agent/StreamEvents",
                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
streams = [call(b"\x08\x01", timeout=120) for _ in range(count)]  # follow = true
time.sleep(2)
refused = sum(1 for s in streams if s.done() and s.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
print(f"ready {count - refused} {refused}", flush=True)
sys.stdin.read()
"""


def test_grpc_tcp_streams_leave_the_unix_socket_its_own(tls_agent, pki):
    from harness.api import ReflectionClient
    hostile = subprocess.Popen(
        [sys.executable, "-c", GRPC_STREAMS, str(tls_agent.grpc_port), ca_pem(pki), "24"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=proc._child_setup(None, None, NOBODY, NOBODY, []))
    token = cleanup.REGISTRY.add(f"kill hostile gRPC client pid {hostile.pid}", hostile.kill,
                                 {"kind": "pid", "pid": hostile.pid,
                                  "start": cleanup._proc_start(hostile.pid)})
    try:
        line = hostile.stdout.readline().split()
        assert line and line[0] == "ready", line
        held, refused = int(line[1]), int(line[2])
        assert held <= 8 and refused >= 16, (held, refused)  # the TCP budget: 8 streams
        client = ReflectionClient(tls_agent.grpc_socket)
        service = client.load_service("meshlane.v1.Agent")
        streams = [client.stream(service, "StreamEvents", timeout=30, follow=True)
                   for _ in range(16)]
        try:
            time.sleep(1)
            assert not any(s.done() for s in streams), "root's unix streams were refused"
            assert client.unary(service, "Health").status == "ok"
        finally:
            for s in streams:
                s.cancel()
            client.close()
    finally:
        hostile.kill()
        hostile.wait(timeout=10)
        cleanup.REGISTRY.undo(token)


def test_tcp_flood_keeps_the_agent_descriptors_bounded(tls_agent, pki):
    before = fd_count(tls_agent.process.pid)
    hostile = Hostile(tls_agent, pki, raw=3000)
    try:
        # The agent accepts the backlog over a few seconds: its highest count is what counts.
        during = 0
        for _ in range(30):
            during = max(during, fd_count(tls_agent.process.pid))
            time.sleep(0.1)
        # 32 handshakes + 2 x 64 connections + 16: the cap on TCP sockets (docs/api.md).
        assert during - before <= 176, (before, during, hostile.held)
        assert health_latencies(tls_agent, 3)[1] < 0.1
    finally:
        hostile.close()
    log = tls_agent.log_text()
    assert log.count("TCP connection closed unanswered") <= 30, "refusals are rate-limited"


# -- 2: HTTP/2 rapid reset on the gRPC TLS port --------------------------------------------------
RAPID_RESET = r"""
import socket, ssl, sys
import h2.config, h2.connection
host, port, ca, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cadata=ca)
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
s.sendall(conn.data_to_send())
headers = [(":method", "POST"), (":scheme", "https"), (":authority", host),
           (":path", "/meshlane.v1.Agent/Health"), ("content-type", "application/grpc"),
           ("te", "trailers")]
sent = 0
try:
    for i in range(pairs):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers)
        conn.reset_stream(sid)
        if i % 500 == 499:
            s.sendall(conn.data_to_send())
        sent += 1
    s.sendall(conn.data_to_send())
except Exception as error:
    print(f"stopped after {sent}: {error!r}", file=sys.stderr)
print(sent, flush=True)
s.close()
"""


def test_http2_rapid_reset_leaves_memory_bounded(tls_agent, pki):
    pytest.importorskip("h2")
    pid = tls_agent.process.pid
    before = rss_kib(pid)
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", RAPID_RESET, "127.0.0.1", str(tls_agent.grpc_port),
             ca_pem(pki), "10000"],
            capture_output=True, text=True, timeout=120,
            preexec_fn=proc._child_setup(None, None, NOBODY, NOBODY, []))
        assert result.returncode == 0, result.stderr
    time.sleep(2)
    after = rss_kib(pid)
    assert after < 64 * 1024, (before, after)
    assert health_latencies(tls_agent, 3)[1] < 0.1


# -- 3 and 9: hostile enrolment paths ------------------------------------------------------------
def test_hostile_paths_are_refused_at_once(topo, agent, hostile_paths):
    agent.enroll_ok(topo.a)
    cases = [
        ("netns", hostile_paths["fifo"]),
        ("netns", hostile_paths["socket"]),
        ("netns", "/dev/zero"),
        ("netns", "/" + "x" * 5000),
        ("netns", "/etc/passwd/x"),
        ("cgroup", "/etc/passwd"),
        ("cgroup", "/dev/zero"),
        ("cgroup", hostile_paths["fifo"]),
        ("cgroup", "/" + "y" * 5000),
    ]
    for field, value in cases:
        started = time.monotonic()
        reply = curl(agent, "POST", "/v1/workloads", body=spec_of(topo.b, **{field: value}),
                     timeout=5)
        assert 400 <= reply.status < 500, (field, value[:80], reply)
        assert time.monotonic() - started < 3, (field, value[:80])
        assert field in reply.json()["error"], reply
        assert curl(agent, "GET", "/v1/health", timeout=2).status == 200
    assert [w["name"] for w in curl(agent, "GET", "/v1/workloads").json()["workloads"]] \
        == [topo.a.name]


# -- 4: node-wide targets ----------------------------------------------------------------------
def test_node_wide_targets_are_refused(topo, agent, hostile_paths):
    mount = util.cgroup2_mount()
    link = os.path.join(os.path.dirname(hostile_paths["fifo"]), "root-link")
    os.symlink(mount, link)
    agent.enroll_ok(topo.a)
    b = topo.b
    refused = [
        ({"cgroup": mount}, 400, "cgroup2 root"),
        ({"cgroup": "."}, 400, "cgroup2 root"),
        ({"cgroup": mount + "/."}, 400, "cgroup2 root"),
        ({"cgroup": "/proc/self/root" + mount}, 400, "cgroup2 root"),
        ({"cgroup": link}, 400, "cgroup2 root"),
        ({"cgroup": topo.cgroup_root}, 409, "nested"),        # parent of A's pod cgroup
        ({"cgroup": topo.a.cgroup("app")}, 409, "nested"),    # child of A's pod cgroup
        # The agent may lack the right to open init's netns at all (403): refused either way.
        ({"netns": "/proc/1/ns/net"}, (400, 403), "n"),
        ({"netns": f"/proc/{agent.process.pid}/ns/net"}, 400, "network namespace"),
        ({"netns": "/proc/self/ns/net"}, 400, "network namespace"),
    ]
    own = open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
    if os.path.dirname(own) not in ("", "/"):
        # An ancestor of the agent's cgroup (the agent runs in the test's cgroup).
        refused.append(({"cgroup": mount + os.path.dirname(own)}, 400, "agent"))
    for fields, status, reason in refused:
        reply = curl(agent, "POST", "/v1/workloads", body=spec_of(b, **fields))
        assert reply.status in (status if isinstance(status, tuple) else (status,)), \
            (fields, reply)
        assert reason in reply.json()["error"], (fields, reply)
    names = [w["name"] for w in curl(agent, "GET", "/v1/workloads").json()["workloads"]]
    assert names == [topo.a.name]
    agent.enroll_ok(b)  # the pod itself is fine


# -- 5: one agent per pin_dir ------------------------------------------------------------------
def test_two_agents_cannot_share_a_pin_dir(topo, agent):
    agent.enroll_ok(topo.a)
    pins_before = sorted(os.listdir(agent.pin_path))
    second = Agent(meshlane_bin())
    second.pin_dir_name, second.pin_path = agent.pin_dir_name, agent.pin_path
    second._tokens.append(cleanup.REGISTRY.add(
        f"rm {second.dir}", lambda: cleanup.remove_tree(second.dir),
        {"kind": "dir", "path": second.dir}))
    second._write_config()
    log = open(second.log_path, "ab")
    try:
        process = proc.spawn([second.binary, "agent", "--config", second.config_path],
                             stdout=log, stderr=log, description="second agent, same pin_dir")
    finally:
        log.close()
    assert process.wait(timeout=20) == 1
    assert "another meshlane agent is running with the pin directory" in second.log_text()
    assert sorted(os.listdir(agent.pin_path)) == pins_before
    assert agent.cli_json("workload", topo.a.name)["name"] == topo.a.name
