"""A REST fuzz corpus replayed against a live agent (issue 18): the libFuzzer seeds in
tests/fuzz/corpus/rest_router plus a deterministic set of mutated requests (targets, methods,
JSON bodies, hostile paths: FIFOs, sockets, devices, files where directories belong, overlong
names, invalid UTF-8, node-wide targets). No request may get a 500: a client's mistake is a 4xx
naming the field; 503 only where a part of the agent is off. The agent keeps serving after."""
import json
import os
import random
import socket


from harness import util

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "..", "fuzz", "corpus", "rest_router")
METHODS = ["GET", "POST", "DELETE", "PUT", "HEAD", "PATCH", "OPTIONS"]
TARGETS = ["/v1/health", "/v1/status", "/v1/workloads", "/v1/workloads/{name}",
           "/v1/workloads/{name}/diagnose", "/v1/workloads/{name}/verify", "/v1/connections",
           "/v1/drops", "/v1/tls", "/v1/events", "/metrics"]
QUERIES = ["", "?workload=web", "?limit=-1", "?limit=99999999999999999999", "?since=%ff",
           "?window=0", "?window=-5", "?window=999999999999", "?type=%00", "?follow=maybe",
           "?reason=" + "A" * 4000, "?&&&==", "?workload=" + "\u00e9".encode().decode("latin-1")]
NAMES = ["web", "a" * 300, "..", "%2e%2e", "UPPER", "x%00y", "-", "a/b", "%ff%fe", "\u00e9"]


def spec_bodies(topo, rng, hostile):
    paths = hostile + ["/etc/passwd", "/dev/zero", "/dev/null", "/proc/self/ns/net",
                       "/proc/1/ns/net", "/proc/self/ns/uts", "/" + "p" * 5000, "/etc/passwd/x",
                       ".", "..", "", "/", "/proc/self/root/etc", "relative/path",
                       util.cgroup2_mount(), topo.cgroup_root, topo.a.cgroup("app"),
                       topo.b.netns_path, topo.b.cgroup()]
    base = {"name": topo.b.name, "cgroup": topo.b.cgroup(), "netns": topo.b.netns_path}
    values = [None, True, -1, 0, 65536, 2 ** 64, 1.5, "", "x" * 3000, [], {}, ["10.0.0.0/40"],
              "\udcff", paths[0]]
    fields = ["name", "cgroup", "netns", "proxy_uid", "proxy_gid", "outbound_port",
              "inbound_port", "exclude_cidrs", "include_cidrs", "exclude_inbound_ports",
              "exclude_outbound_ports", "fast_path", "startup_policy", "surprise"]
    bodies = []
    for path in paths:
        bodies.append(dict(base, netns=path))
        bodies.append(dict(base, cgroup=path))
    for _ in range(300):
        body = dict(base)
        for _ in range(rng.randint(1, 3)):
            body[rng.choice(fields)] = rng.choice(values + paths)
        bodies.append(body)
    raw = []
    for body in bodies:
        text = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")
        raw.append(text)
    raw += [b"", b"{", b"[]", b"null", b"{\"name\": \"\xff\xfe\"}", b"\x00" * 64,
            b"{\"name\": \"a\", \"name\": \"b\"}", b"[" * 100000]
    return raw


def requests(topo, hostile, seed=18):
    rng = random.Random(seed)
    out = []
    for name in sorted(os.listdir(SEEDS)):
        with open(os.path.join(SEEDS, name), "rb") as f:
            data = f.read()
        if data[:1] == b"\x00":
            out.append(data[1:])
    for body in spec_bodies(topo, rng, hostile):
        out.append(b"POST /v1/workloads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                   b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    for _ in range(700):
        target = rng.choice(TARGETS).replace("{name}", rng.choice(NAMES)) + rng.choice(QUERIES)
        method = rng.choice(METHODS)
        if method == "POST" and target.endswith("/verify"):
            method = "GET"  # verify probes take seconds; a few are sent below
        line = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        out.append(line.encode("latin-1", "replace"))
    for name in ("web", topo.b.name, "..", "a" * 300):
        out.append(f"POST /v1/workloads/{name}/verify HTTP/1.1\r\nHost: x\r\n"
                   f"Content-Length: 0\r\n\r\n".encode())
    return out


def send(agent, raw):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(40)
        s.connect(agent.api_socket)
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


def test_fuzz_corpus_gets_no_5xx(topo, agent, hostile_paths):
    agent.enroll_ok(topo.a)
    failures = []
    sent = 0
    hostile = [hostile_paths[k] for k in ("fifo", "socket", "link", "dir")]
    for raw in requests(topo, hostile):
        data = send(agent, raw)
        sent += 1
        if not data.startswith(b"HTTP/1.1 "):
            continue  # closed without an answer: a request the parser refused
        status = int(data.split(b" ", 2)[1])
        body = data.partition(b"\r\n\r\n")[2]
        if status >= 500 and not (status == 503 and b"unavailable" in body):
            failures.append((raw[:160], status, body[:300]))
    assert not failures, f"{len(failures)} of {sent} got 5xx: {failures[:5]}"
    health = send(agent, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200"), health
    workloads = send(agent, b"GET /v1/workloads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert topo.a.name.encode() in workloads
