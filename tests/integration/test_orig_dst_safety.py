"""SO_ORIGINAL_DST must be exact: a recycled 4-tuple never returns a stale destination, an
unredirected connection to the outbound listener gets no answer (not a guess), nothing leaks in
the hand-over map, and meshlane's cgroup programs coexist with other programs on the same
cgroup (multi-attach)."""
import json
import os
import subprocess
import textwrap

from harness import proc, util
from harness.checks import assert_ok, request
from harness.topology import APP_PORT

# A minimal "proxy" on A's outbound port: accepts, asks SO_ORIGINAL_DST (IPv4), writes one JSON
# line per connection, closes. Runs as the proxy uid in A's sidecar cgroup.
PROBE_PROXY = textwrap.dedent("""
    import json, socket, struct, sys
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 15001))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, peer = srv.accept()
        try:
            raw = conn.getsockopt(socket.SOL_IP, 80, 16)
            answer = [socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]]
        except OSError as e:
            answer = "errno %d" % e.errno
        print(json.dumps({"peer": list(peer), "orig": answer}), flush=True)
        conn.close()
""")

# The app: three connects from the same source port, reset-closed so the port is reusable at
# once: redirected to B:8080, redirected to B:9090, then straight to the listener (not
# redirected: 127.0.0.1 is loopback).
APP_SEQUENCE = textwrap.dedent("""
    import socket, struct, sys, time
    sport = int(sys.argv[2])
    for host, port in ((sys.argv[1], 8080), (sys.argv[1], 9090), ("127.0.0.1", 15001)):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.bind(("0.0.0.0", sport))
        s.connect((host, port))
        s.recv(1)          # the probe proxy closes after answering
        s.close()          # RST: no TIME_WAIT, the 4-tuple is free again
        time.sleep(0.05)
""")


def _dump_map(agent, name):
    out = util.run(["bpftool", "-j", "map", "dump", "pinned",
                    os.path.join(agent.pin_path, "maps", name)]).stdout
    return json.loads(out or "[]")


def test_recycled_tuple_never_returns_a_stale_destination(topo, agent):
    agent.enroll_ok(topo.a)
    probe_out = os.path.join(topo.workdir, "probe-proxy.out")
    with open(probe_out, "w") as out:
        probe = proc.spawn([util.PYTHON, "-c", PROBE_PROXY], netns_path=topo.a.netns_path,
                           cgroup_dir=topo.a.cgroup("sidecar"), uid=1337, gid=1337, groups=[],
                           stdout=out, stderr=subprocess.STDOUT, description="probe proxy")
    try:
        util.wait_until(lambda: "ready" in open(probe_out).read(), timeout=5,
                        message="probe proxy listening")
        result = topo.a.run([util.PYTHON, "-c", APP_SEQUENCE, topo.b.ip4, "41234"], timeout=20)
        assert result.returncode == 0, result.stderr
        util.wait_until(lambda: open(probe_out).read().count("orig") >= 3, timeout=5,
                        message="three connections at the probe proxy")
        answers = [json.loads(line)["orig"] for line in open(probe_out) if line.startswith("{")]
    finally:
        proc.stop(probe)
    assert answers[0] == [topo.b.ip4, 8080]
    assert answers[1] == [topo.b.ip4, 9090], f"stale destination for a reused 4-tuple: {answers}"
    assert isinstance(answers[2], str) and answers[2].startswith("errno"), (
        f"an unredirected connection to the outbound listener must get no answer: {answers}")
    assert _dump_map(agent, "orig_dst_by_tuple") == [], "hand-over entries leaked"
    counters = agent.cli_json("workload", topo.a.name)["counters"]
    assert counters["orig_dst_answered"] == 2
    assert counters["orig_dst_miss"] == 1


MINIMAL_CONNECT4 = """
#include <linux/bpf.h>
#define SEC(name) __attribute__((section(name), used))
SEC("cgroup/connect4") int other_connect4(struct bpf_sock_addr *ctx) { return 1; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_other_programs_on_the_cgroup_keep_working(topo, agent, tmp_path):
    """A CNI's socket load balancer or a security agent may own a connect4 program on the same
    cgroup: meshlane attaches alongside it (multi) and leaves it attached on unenroll."""
    src = tmp_path / "other.bpf.c"
    src.write_text(MINIMAL_CONNECT4)
    obj = tmp_path / "other.bpf.o"
    util.run(["clang", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
              "-c", str(src), "-o", str(obj)])
    pin = os.path.join(util.bpffs_mount(), f"meshlane-test-other-{topo.id}")
    util.run(["bpftool", "prog", "load", str(obj), pin, "type", "cgroup/connect4"])
    cg = topo.a.cgroup()
    try:
        util.run(["bpftool", "cgroup", "attach", cg, "connect4", "pinned", pin, "multi"])
        agent.enroll_ok(topo.a)
        agent.enroll_ok(topo.b)
        topo.a.start_sidecar(kind="haproxy")
        topo.b.start_sidecar(kind="haproxy")
        topo.b.start_app(ports=(APP_PORT,))
        result, _ = request(topo, topo.a, topo.b.ip4, APP_PORT)
        assert_ok(topo, result, local_port=APP_PORT)
        names = [p.get("name") for p in json.loads(
            util.run(["bpftool", "-j", "cgroup", "show", cg]).stdout or "[]")]
        assert "other_connect4" in names and "redirect_connect4" in names, names
        agent.unenroll(topo.a.name)
        names = [p.get("name") for p in json.loads(
            util.run(["bpftool", "-j", "cgroup", "show", cg]).stdout or "[]")]
        assert names == ["other_connect4"], f"unenroll must detach only meshlane: {names}"
    finally:
        util.run(["bpftool", "cgroup", "detach", cg, "connect4", "pinned", pin], check=False)
        os.unlink(pin)
