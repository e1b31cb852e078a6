"""meshlane-cni as a node runs it, in an empty root: a chroot that holds only the static binary
and the agent's API socket (a hard link to the running agent's socket), no libc, no libraries,
no /proc. Every verb of CNI 1.1 (ADD, CHECK, DEL, STATUS, GC, VERSION) on every config version
0.3.0 to 1.1.0 against a real agent and a real pod (netns + cgroup of the harness topology), the
agent-down answers (11 try-later, 50 for STATUS), and the spec cases of
tests/data/cni/spec_cases.json (source named there), each compared with Debian's reference
plugin (containernetworking-plugins' `tuning`) on the same inputs where that speaks the case's
spec version."""
import json
import os
import shutil
import subprocess

import pytest

from harness.cni import CNI_BIN_DIR, meshlane_cni_bin

CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "cni",
                     "spec_cases.json")
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
REFERENCE = os.path.join(CNI_BIN_DIR, "tuning")
SOCKET_IN_ROOT = "/run/meshlane/api.sock"


def test_binary_is_static_and_small():
    binary = meshlane_cni_bin()
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr, ldd.stdout + ldd.stderr
    readelf = subprocess.run(["readelf", "-lS", binary], capture_output=True, text=True).stdout
    assert "INTERP" not in readelf and ".dynamic" not in readelf
    assert ".debug_info" not in readelf, "not stripped"
    assert os.path.getsize(binary) < 4 * 1024 * 1024


@pytest.fixture
def empty_root(agent):
    """<root>/meshlane-cni and <root>/run/meshlane/api.sock (the agent's socket), nothing else."""
    root = os.path.join(agent.dir, "chroot")
    os.makedirs(os.path.join(root, "run", "meshlane"))
    shutil.copy2(meshlane_cni_bin(), os.path.join(root, "meshlane-cni"))
    # A hard link to a socket reaches the same listener (connect resolves the inode); both live
    # in the agent's directory, on one file system. The agent's finalizer removes the directory.
    os.link(agent.api_socket, os.path.join(root, SOCKET_IN_ROOT.lstrip("/")))
    assert sorted(os.listdir(root)) == ["meshlane-cni", "run"]
    return root


class Runner:
    def __init__(self, root, topo):
        self.root = root
        self.topo = topo
        self.pod = topo.a

    def env(self, command, **over):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"ctr-{self.topo.id}",
               "CNI_NETNS": self.pod.netns_path, "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=conf;K8S_POD_NAME=pod-{self.topo.id}"}
        env.update(over)
        return {k: v for k, v in env.items() if v is not None}

    def config(self, version, **extra):
        doc = {"cniVersion": version, "name": "conformance", "type": "meshlane-cni",
               "agentSocket": SOCKET_IN_ROOT, "timeoutMs": 3000,
               "runtimeConfig": {"cgroupPath": "/" + self.pod.cgroup_rel}}
        doc.update(extra)
        return doc

    def run(self, env, config):
        stdin = config if isinstance(config, str) else json.dumps(config)
        return subprocess.run([shutil.which("chroot"), self.root, "/meshlane-cni"], input=stdin, env=env,
                              capture_output=True, text=True, timeout=30)

    def workload(self):
        return f"conf.pod-{self.topo.id}"


def prev_result(version, pod):
    return {"cniVersion": version,
            "interfaces": [{"name": "eth0", "sandbox": pod.netns_path}],
            "ips": [{"address": "10.200.9.9/24", "interface": 0}], "dns": {}}


def error_of(result):
    assert result.returncode != 0, result.stdout
    return json.loads(result.stdout)


def test_every_verb_and_version_in_an_empty_root(topo, agent, empty_root):
    r = Runner(empty_root, topo)
    version = r.run(r.env("VERSION"), {"cniVersion": "1.1.0"})
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout) == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}

    for v in VERSIONS:
        prev = prev_result(v, r.pod)
        add = r.run(r.env("ADD"), r.config(v, prevResult=prev))
        assert add.returncode == 0, (v, add.stdout, add.stderr)
        assert json.loads(add.stdout) == prev, "prevResult passed through unchanged"
        assert agent.workload_names() == [r.workload()]
        check = r.run(r.env("CHECK"), r.config(v, prevResult=prev))
        if v in ("0.3.0", "0.3.1"):
            assert error_of(check)["code"] == 1, check.stdout
        else:
            assert check.returncode == 0 and check.stdout == "", (v, check.stdout, check.stderr)
        if v == "1.1.0":
            status = r.run(r.env("STATUS", CNI_CONTAINERID=None, CNI_NETNS=None,
                                 CNI_IFNAME=None), r.config(v))
            assert status.returncode == 0 and status.stdout == "", status.stdout
        for _ in range(2):  # DEL is idempotent
            delete = r.run(r.env("DEL"), r.config(v, prevResult=prev))
            assert delete.returncode == 0, (v, delete.stdout, delete.stderr)
            assert agent.workload_names() == []


def test_gc_unenrolls_attachments_the_runtime_no_longer_lists(topo, agent, empty_root):
    r = Runner(empty_root, topo)
    prev = prev_result("1.1.0", r.pod)
    add = r.run(r.env("ADD"), r.config("1.1.0", prevResult=prev))
    assert add.returncode == 0, add.stdout + add.stderr
    gc_env = r.env("GC", CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None)
    still = [{"containerID": f"ctr-{topo.id}", "ifname": "eth0"}]
    gc = r.run(gc_env, r.config("1.1.0", **{"cni.dev/valid-attachments": still}))
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert agent.workload_names() == [r.workload()], "a listed attachment stays"
    gc = r.run(gc_env, r.config("1.1.0", **{"cni.dev/valid-attachments": []}))
    assert gc.returncode == 0 and gc.stdout == "", gc.stdout + gc.stderr
    assert agent.workload_names() == []
    # The record is gone with it: the next GC has nothing to do.
    assert os.listdir(os.path.join(empty_root, "var/lib/cni/meshlane/conformance")) == []


def test_agent_down_answers(topo, agent, empty_root):
    r = Runner(empty_root, topo)
    agent.stop()
    for v in VERSIONS:
        add = r.run(r.env("ADD"), r.config(v, prevResult=prev_result(v, r.pod)))
        error = error_of(add)
        assert (error["code"], error["cniVersion"]) == (11, v), add.stdout
        assert "meshlane agent unreachable" in error["msg"]
        delete = r.run(r.env("DEL"), r.config(v))
        assert delete.returncode == 0, delete.stdout + delete.stderr
    status = r.run(r.env("STATUS", CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None),
                   r.config("1.1.0"))
    assert error_of(status)["code"] == 50, status.stdout
    open_add = r.run(r.env("ADD"), r.config("1.1.0", failOpen=True,
                                             prevResult=prev_result("1.1.0", r.pod)))
    assert open_add.returncode == 0, open_add.stdout + open_add.stderr
    assert "failOpen" in open_add.stderr


def load_cases():
    with open(CASES) as f:
        return json.load(f)["cases"]


@pytest.mark.parametrize("case", load_cases(), ids=lambda c: c["name"])
def test_spec_case(case, topo, agent, empty_root):
    r = Runner(empty_root, topo)
    stdin = case["config"] if isinstance(case["config"], str) else json.dumps(case["config"])
    ours = r.run(case["env"], stdin)
    error = error_of(ours)
    assert error["code"] == case["code"], (case["spec"], ours.stdout)
    assert error["cniVersion"] in VERSIONS
    if case["msg_contains"]:
        assert case["msg_contains"] in error["msg"] + error.get("details", ""), ours.stdout
    assert agent.workload_names() == []
    if case["reference"]:
        theirs = subprocess.run([REFERENCE], input=stdin, env=case["env"], capture_output=True,
                                text=True, timeout=30)
        assert theirs.returncode != 0, theirs.stdout
        assert json.loads(theirs.stdout)["code"] == case["code"], (
            f"Debian's tuning answers differently: {theirs.stdout}")

