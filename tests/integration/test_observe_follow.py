"""`meshlane drops --follow` / `meshlane conns --follow` end to end: the CLI streams the agent's
event stream (GET /v1/events?follow=true&type=drop|connect) while drops are injected with an
iptables DROP rule in pod B's netns and refused connects are made in pod A; lines must appear
with the right reason/outcome and workload. Also: clean exit on SIGINT and when stdout's reader
goes away (SIGPIPE), and a one-line error with exit 3 when no agent answers."""
import json
import queue
import signal
import subprocess
import threading
import time

from harness import proc, util

DROP_PORT = 9999
CLOSED_PORT = 9


class Follower:
    """`meshlane ... --follow` in the background; its stdout lines arrive on a queue."""

    def __init__(self, agent, *args):
        self.process = proc.spawn([agent.binary, "--server", agent.api_socket, *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  description=f"meshlane {' '.join(args)}")
        self.lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.process.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no line for {what} within {timeout}s; exit "
                             f"{self.process.poll()}; lines: {seen[-20:]}")

    def interrupt(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=5)
        finally:
            proc.stop(self.process)
        return self.process.returncode, self.process.stderr.read().decode(errors="replace")


def wait_streaming(agent, subscribers=1):
    """The follower is subscribed once the agent counts an open event stream."""
    util.wait_until(lambda: agent.cli_json("status")["events"]["subscribers"] >= subscribers,
                    timeout=10, interval=0.05, message="the follower's event stream to open")


def drop_udp(topo, count):
    """count UDP datagrams from A's app to B's DROP_PORT, dropped by netfilter in B."""
    sender = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for _ in range({count}): s.sendto(b'x' * 32, ('{topo.b.ip4}', {DROP_PORT}))\n")
    result = topo.a.run([util.PYTHON, "-c", sender], timeout=30)
    assert result.returncode == 0, result.stderr


def block_udp_in_b(topo):
    topo.b.exec("iptables", "-A", "INPUT", "-i", topo.b.veth, "-p", "udp", "--dport",
                str(DROP_PORT), "-j", "DROP")


def test_drops_follow_json_streams_drops_with_reason_and_workload(meshed, agent):
    topo = meshed
    block_udp_in_b(topo)
    follower = Follower(agent, "drops", "--follow", "--json", "--workload", topo.b.name)
    wait_streaming(agent)
    drop_udp(topo, 5)

    def is_drop(line):
        event = json.loads(line)
        return event["type"] == "drop" and event["details"]["destination"].endswith(
            f":{DROP_PORT}")
    event = json.loads(follower.wait_for(is_drop, 10, "a NETFILTER_DROP event in B"))
    assert event["workload"] == topo.b.name, event
    d = event["details"]
    assert d["reason"] == "NETFILTER_DROP" and d["protocol"] == "udp", d
    assert d["destination"] == f"{topo.b.ip4}:{DROP_PORT}", d
    assert d["source"].startswith(f"{topo.a.ip4}:"), d
    assert d["attributed_by"] == "device", d
    assert event["time_unix_ms"] > 0 and event["sequence"] > 0, event
    code, stderr = follower.interrupt()
    assert code == 0, stderr
    assert stderr == "", stderr


def test_drops_follow_human_lines_and_other_workloads_filtered(meshed, agent):
    topo = meshed
    block_udp_in_b(topo)
    only_a = Follower(agent, "drops", "--follow", "--workload", topo.a.name)
    every = Follower(agent, "drops", "--follow", "--reason", "NETFILTER_DROP")
    wait_streaming(agent, subscribers=2)
    drop_udp(topo, 3)
    line = every.wait_for(lambda l: f":{DROP_PORT}" in l, 10, "a human drop line")
    assert topo.b.name in line and "NETFILTER_DROP" in line and "udp" in line, line
    assert f"{topo.b.ip4}:{DROP_PORT}" in line, line
    # A's stream saw none of B's drops.
    time.sleep(0.5)
    a_lines = []
    while not only_a.lines.empty():
        a_lines.append(only_a.lines.get())
    assert not [l for l in a_lines if f":{DROP_PORT}" in l], a_lines
    for follower in (only_a, every):
        code, stderr = follower.interrupt()
        assert code == 0, stderr


def test_conns_follow_streams_refused_connects(meshed, agent):
    """A's app dials 127.0.0.1:9: the refused connect appears on A's connect stream."""
    topo = meshed
    follower = Follower(agent, "conns", "--follow", "--workload", topo.a.name)
    wait_streaming(agent)
    result = topo.a.client("127.0.0.1", CLOSED_PORT)
    assert not result["ok"], result
    line = follower.wait_for(lambda l: f"127.0.0.1:{CLOSED_PORT}" in l, 10,
                             "A's refused connect")
    assert topo.a.name in line and "upstream refused" in line, line
    assert "Connection refused" in line, line
    code, stderr = follower.interrupt()
    assert code == 0, stderr


def test_follow_exits_cleanly_when_the_reader_goes_away(meshed, agent):
    """`meshlane drops --follow --json | head -n 1`: once head has exited, the next write fails
    with EPIPE (SIGPIPE is ignored) and the follower exits 0 instead of dying from the signal."""
    topo = meshed
    block_udp_in_b(topo)
    script = (f"{agent.binary} --server {agent.api_socket} drops --follow --json | head -n 1; "
              "echo \"follower_exit=${PIPESTATUS[0]}\"")
    pipeline = proc.spawn(["bash", "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, description="meshlane drops --follow | head")
    try:
        wait_streaming(agent)
        # The first drop ends head; later ones make the follower's write fail.
        deadline = time.monotonic() + 15
        while pipeline.poll() is None and time.monotonic() < deadline:
            drop_udp(topo, 20)
            time.sleep(0.3)
        out, err = pipeline.communicate(timeout=5)
    finally:
        proc.stop(pipeline)
    lines = out.decode().strip().splitlines()
    assert len(lines) == 2, (lines, err)
    assert json.loads(lines[0])["type"] == "drop", lines
    assert lines[1] == "follower_exit=0", (lines, err)


def test_follow_without_an_agent_is_a_one_line_error(agent):
    result = agent.cli("drops", "--follow", server=agent.api_socket + ".missing", timeout=10)
    assert result.returncode == 3, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the meshlane agent" in lines[0], result.stderr


def test_follow_rejects_bad_workload_names(agent):
    result = agent.cli("drops", "--follow", "--workload", "Bad_Name", timeout=10)
    assert result.returncode == 1 and "name" in result.stderr, result.stderr
