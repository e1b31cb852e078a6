"""Restart and upgrade without traffic loss: a long checksummed stream and a tight connect loop
through A's proxy to B (and B's inbound capture) see zero errors while the agent is SIGKILLed and
restarted, or stopped and replaced by another binary. Pinned links keep the old programs running
while no agent runs; the new agent re-points the same links to its programs (BPF_LINK_UPDATE)."""
import json
import os
import shutil
import time

from conftest import start_mesh
from harness import proc, util
from harness.topology import APP_GID, APP_UID

DIGEST_PORT = 9100
STREAM_SECONDS = 8.0
AGENT_DOWN_AT = 1.5  # seconds into the traffic


def start_digest_server(pod):
    args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "digest_server.py"),
            "--listen", f"0.0.0.0:{DIGEST_PORT}"]
    err = open(os.path.join(pod.workdir, f"digest-server-{pod.short}.err"), "ab")
    try:
        process = proc.spawn(args, netns_path=pod.netns_path, cgroup_dir=pod.cgroup("app"),
                             uid=APP_UID, gid=APP_GID, groups=[], stdout=err, stderr=err,
                             description=f"digest server of {pod.name}")
    finally:
        err.close()
    util.wait_until(lambda: process.poll() is not None or pod.listening([DIGEST_PORT]),
                    timeout=5, message=f"digest server in {pod.name}")
    assert process.poll() is None, f"digest server in {pod.name} exited"
    pod.apps.append(process)  # stopped with the topology
    return process


def start_client(pod, host, mode, **options):
    args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "digest_client.py"), host,
            str(DIGEST_PORT), "--mode", mode, "--duration", str(STREAM_SECONDS)]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    out_path = os.path.join(pod.workdir, f"client-{mode}.json")
    out = open(out_path, "wb")
    try:
        process = proc.spawn(args, netns_path=pod.netns_path, cgroup_dir=pod.cgroup("app"),
                             uid=APP_UID, gid=APP_GID, groups=[], stdout=out, stderr=out,
                             description=f"digest client {mode} in {pod.name}")
    finally:
        out.close()
    return process, out_path


def finish_client(process, out_path):
    process.wait(timeout=STREAM_SECONDS + 30)
    proc.stop(process)
    with open(out_path) as f:
        text = f.read()
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"client printed no result: {text!r}")


def link_programs(agent, name):
    """{program name: (link id, prog id)} as the agent reads them from the kernel."""
    detail = agent.cli_json("workload", name)
    return {p["program"]: (p["link_id"], p["prog_id"]) for p in detail["programs"]}


def run_traffic_across(topo, agent, bounce):
    """Starts the stream and the connect loop from A to B, calls bounce() while they run, and
    returns both results plus when bounce started and ended (epoch seconds)."""
    start_mesh(topo, agent, a={}, b={})
    start_digest_server(topo.b)
    before = {pod.name: link_programs(agent, pod.name) for pod in topo.pods}
    marks = {pod.short: pod.sidecar.log.mark() for pod in topo.pods}
    stream = start_client(topo.a, topo.b.ip4, "stream")
    loop = start_client(topo.a, topo.b.ip4, "loop", interval=0.005)
    time.sleep(AGENT_DOWN_AT)
    bounce_started = time.time()
    bounce()
    bounce_ended = time.time()
    results = {"stream": finish_client(*stream), "loop": finish_client(*loop)}
    after = {pod.name: link_programs(agent, pod.name) for pod in topo.pods}
    return results, marks, before, after, (bounce_started, bounce_ended)


def assert_no_loss(topo, agent, results, marks, window):
    stream, loop = results["stream"], results["loop"]
    context = f"\nagent log tail:\n{agent.log_text()[-3000:]}\n{topo.describe()}"
    assert stream["ok"], f"stream broke across the restart: {stream}{context}"
    assert loop["ok"], f"connect loop saw errors across the restart: {loop}{context}"
    # The restart must really have happened while traffic flowed.
    started, ended = window
    assert stream["started"] < started and ended < stream["ended"], (
        f"the agent restart ({started:.2f}..{ended:.2f}) did not fall inside the stream "
        f"({stream['started']:.2f}..{stream['ended']:.2f})")
    assert loop["connections"] > 100, f"too few connections to mean anything: {loop}"
    # ... and the traffic was intercepted: every connection went through both proxies.
    out_a = [e for e in topo.a.sidecar.log.wait_for(marks["a"], count=loop["connections"] + 1,
                                                   timeout=15)
             if e.direction == "outbound" and e.frontend_addr == (topo.b.ip4, DIGEST_PORT)]
    assert len(out_a) >= loop["connections"] + 1, (
        f"A's proxy logged {len(out_a)} outbound connections to {DIGEST_PORT}, the clients made "
        f"{loop['connections'] + 1}{context}")
    in_b = [e for e in topo.b.sidecar.log.since(marks["b"])
            if e.direction == "inbound" and e.frontend_addr == (topo.b.ip4, DIGEST_PORT)]
    assert len(in_b) >= loop["connections"] + 1, (
        f"B's proxy logged {len(in_b)} inbound connections on {DIGEST_PORT}{context}")


def assert_relinked(before, after):
    """Same links (nothing detached or re-created), each now running a new program."""
    for name, programs in before.items():
        assert set(after[name]) == set(programs), f"{name}: programs changed: {after[name]}"
        for program, (link_id, prog_id) in programs.items():
            new_link, new_prog = after[name][program]
            assert new_link == link_id, f"{name}/{program}: link re-created ({link_id}->{new_link})"
            assert new_prog != prog_id, f"{name}/{program}: link not re-pointed (prog {prog_id})"


def test_sigkill_and_restart_loses_nothing(topo, agent):
    def crash_and_restart():
        agent.kill()
        assert not agent.alive()
        time.sleep(0.5)  # traffic flows with no agent at all
        agent.start()

    results, marks, before, after, window = run_traffic_across(topo, agent, crash_and_restart)
    assert_no_loss(topo, agent, results, marks, window)
    assert_relinked(before, after)
    assert "re-adopted workload" in agent.log_text()


def test_upgrade_to_new_binary_loses_nothing(topo, agent):
    # "Upgrade": SIGTERM, then a different executable file (a fresh copy of the build) starts on
    # the same state and pins.
    upgraded = os.path.join(agent.dir, "meshlane-upgraded")
    shutil.copy2(agent.binary, upgraded)

    def stop_and_upgrade():
        agent.stop()
        assert not agent.alive()
        agent.binary = upgraded
        agent.start()

    results, marks, before, after, window = run_traffic_across(topo, agent, stop_and_upgrade)
    assert_no_loss(topo, agent, results, marks, window)
    assert_relinked(before, after)
    assert os.path.realpath(f"/proc/{agent.process.pid}/exe") == os.path.realpath(upgraded)
