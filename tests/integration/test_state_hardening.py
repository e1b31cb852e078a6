"""The agent's files against a hostile or broken environment (issue 18, the Low items): the
state directory is checked (owner, mode, a directory and not a symlink) and never chmod'ed,
agent.lock and workloads.json.tmp are never opened through a symlink, a bad state file is
refused whole (version, duplicate ids or names, bad names) before anything is adopted, a key
given twice in the config is an error with file:line, `meshlane uninstall` removes only sockets
nobody serves on, a bpffs path that is relative or a non-empty directory is refused, refused
requests are logged rate-limited, and a 429 on a full unix socket arrives as an answer."""
import json
import os
import socket
import subprocess
import tempfile
import time

import pytest

from harness import cleanup, util
from harness.api import curl
from harness.meshlane import Agent, meshlane_bin


def run_agent(agent, timeout=20):
    """Starts the agent in the foreground and expects it to stop on its own."""
    return subprocess.run([agent.binary, "agent", "--config", agent.config_path],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fresh_agent():
    instance = Agent(meshlane_bin())
    instance.prepare()
    yield instance
    instance.destroy()


@pytest.fixture
def scratch():
    directory = tempfile.mkdtemp(prefix=f"meshlane-state-{util.unique_id()}-")
    token = cleanup.REGISTRY.add(f"rm {directory}", lambda: cleanup.remove_tree(directory),
                                 {"kind": "dir", "path": directory})
    yield directory
    cleanup.REGISTRY.undo(token)


# -- 6: state directory and its files ----------------------------------------------------------
def test_state_dir_writable_by_others_is_refused_not_chmoded(fresh_agent):
    os.chmod(fresh_agent.state_dir, 0o1777)
    result = run_agent(fresh_agent)
    assert result.returncode == 1, result
    assert "writable by group or others (mode 1777)" in result.stdout + result.stderr
    assert os.stat(fresh_agent.state_dir).st_mode & 0o7777 == 0o1777


def test_state_dir_owned_by_another_user_is_refused(fresh_agent):
    os.chown(fresh_agent.state_dir, 65534, 65534)
    result = run_agent(fresh_agent)
    assert result.returncode == 1, result
    assert "is owned by uid 65534" in result.stdout + result.stderr


def test_lock_file_symlink_is_not_followed(fresh_agent, scratch):
    victim = os.path.join(scratch, "victim")
    with open(victim, "w") as f:
        f.write("root's file\n")
    os.chmod(victim, 0o600)
    os.symlink(victim, os.path.join(fresh_agent.state_dir, "agent.lock"))
    result = run_agent(fresh_agent)
    assert result.returncode == 1, result
    assert open(victim).read() == "root's file\n"


def test_state_file_temporary_symlink_is_not_followed(topo, agent, scratch):
    victim = os.path.join(scratch, "victim")
    with open(victim, "w") as f:
        f.write("root's file\n")
    os.symlink(victim, os.path.join(agent.state_dir, "workloads.json.tmp"))
    result = agent.enroll(topo.a)
    assert result.returncode != 0, "the state could not be written: the enrolment is undone"
    assert open(victim).read() == "root's file\n"
    assert agent.workload_names() == []


# -- 11: state file validated on restore -------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    (lambda state: state.update(version=999), "version 999"),
    (lambda state: state["workloads"].append(json.loads(json.dumps(state["workloads"][0]))),
     "workload_id"),
    (lambda state: state["workloads"][0]["spec"].update(name="PODB/../x"), "name"),
])
def test_bad_state_file_is_refused_whole(topo, agent, damage, message):
    agent.enroll_ok(topo.a)
    agent.enroll_ok(topo.b)
    agent.stop()
    path = os.path.join(agent.state_dir, "workloads.json")
    with open(path) as f:
        state = json.load(f)
    damage(state)
    with open(path, "w") as f:
        json.dump(state, f)
    result = run_agent(agent)
    assert result.returncode == 1, result
    output = result.stdout + result.stderr
    assert "restore workloads from" in output and message in output, output[-2000:]
    assert "re-adopted workload" not in output, "nothing is half-adopted"


# -- 12: duplicate config keys -------------------------------------------------------------------
def test_duplicate_config_key_is_an_error_with_file_and_line(fresh_agent):
    with open(fresh_agent.config_path, "a") as f:
        f.write("log_level = info\n")
    result = run_agent(fresh_agent)
    assert result.returncode == 1, result
    output = result.stdout + result.stderr
    assert "log_level is set again (first at " in output, output
    assert f"{fresh_agent.config_path}:" in output, output


# -- 7: uninstall removes only its own sockets ---------------------------------------------------
def test_uninstall_leaves_a_file_at_the_socket_path(fresh_agent):
    with open(fresh_agent.api_socket, "w") as f:
        f.write("not a socket\n")
    result = subprocess.run([fresh_agent.binary, "uninstall", "--config",
                             fresh_agent.config_path], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert open(fresh_agent.api_socket).read() == "not a socket\n"


# -- 8: bpffs path ---------------------------------------------------------------------------------
def test_bpffs_over_a_non_empty_directory_is_refused(fresh_agent, scratch):
    keep = os.path.join(scratch, "keep")
    with open(keep, "w") as f:
        f.write("content\n")
    fresh_agent.extra_config["bpffs"] = scratch
    fresh_agent._write_config()
    fresh_agent.start()
    status = curl(fresh_agent, "GET", "/v1/status").json()
    reason = status["feature_states"]["redirect"]["reason"]
    assert "not an empty directory" in reason, reason
    assert os.path.exists(keep)
    assert not any(line.split()[1] == scratch for line in open("/proc/mounts"))


def test_relative_bpffs_is_refused(fresh_agent):
    fresh_agent.extra_config["bpffs"] = "relative/bpffs"
    fresh_agent._write_config()
    fresh_agent.start()
    reason = curl(fresh_agent, "GET", "/v1/status").json()["feature_states"]["redirect"]["reason"]
    assert "absolute" in reason, reason
    assert not os.path.exists("/relative/bpffs")


# -- 12: a 429 on the unix socket is an answer, not a reset ------------------------------------
def test_full_unix_socket_answers_429_to_a_client_that_sent_its_request(agent):
    held = []
    try:
        for _ in range(256):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(agent.api_socket)
            held.append(s)
        time.sleep(0.3)
        resets = answered = 0
        for _ in range(50):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(agent.api_socket)
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                try:
                    while chunk := s.recv(4096):
                        data += chunk
                except ConnectionResetError:
                    resets += 1
                answered += data.startswith(b"HTTP/1.1 429")
        assert resets == 0 and answered == 50, (resets, answered)
    finally:
        for s in held:
            s.close()


# -- 10: refused requests are logged rate-limited ------------------------------------------------
def test_refused_requests_cannot_flood_the_log(topo, request):
    from test_api_tls import Pki, start_agent
    pki = Pki()
    request.addfinalizer(pki.remove)
    agent = start_agent(request, pki, api_token_file=pki.token_file)
    before = os.path.getsize(agent.log_path)
    import ssl
    context = ssl.create_default_context(cafile=pki.path("ca.crt"))
    target = "/v1/workloads?" + "x" * 15000
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", agent.rest_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n".encode())
                while s.recv(65536):
                    pass
    grown = os.path.getsize(agent.log_path) - before
    assert grown < 200 * 1024, grown  # before: 200 x 15 KB = 3 MB
