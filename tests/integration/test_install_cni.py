"""install-cni (deploy/kubernetes/install-cni.sh) as the DaemonSet runs it: a long-running
process over a temporary CNI config and bin directory. It copies the plugin binary, chains
meshlane-cni into the primary config, puts it back whenever the primary plugin rewrites its
config (as Calico, Cilium and flannel do on restart: in place, or by write-and-rename), converts a
single-plugin .conf primary to a .conflist, and removes everything again on SIGTERM."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from harness.cni import meshlane_cni_bin
from harness.util import wait_until

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                      "kubernetes", "install-cni.sh")
PLUGIN = {"type": "meshlane-cni", "agentSocket": "/run/meshlane/api.sock", "failOpen": False,
          "capabilities": {"cgroupPath": True}}
CALICO = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
          "plugins": [{"type": "calico", "ipam": {"type": "calico-ipam"}},
                      {"type": "portmap", "capabilities": {"portMappings": True}}]}


@pytest.fixture
def node():
    """A temporary node: CNI conf and bin dirs, the plugin entry, and install-cni's process."""
    if not shutil.which("inotifywait"):
        pytest.fail("inotifywait missing: apt-get install inotify-tools (scripts/install-deps.sh)")
    root = tempfile.mkdtemp(prefix="meshlane-install-cni-")
    state = {"root": root, "conf": os.path.join(root, "net.d"), "bin": os.path.join(root, "bin"),
             "proc": None}
    os.makedirs(state["conf"])
    with open(os.path.join(root, "plugin.json"), "w") as f:
        json.dump(PLUGIN, f)

    def start(**env):
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_BIN_DIR": state["bin"],
                    "CNI_CONF_DIR": state["conf"],
                    "CNI_PLUGIN_JSON": os.path.join(root, "plugin.json"),
                    "MESHLANE_CNI_SOURCE": meshlane_cni_bin(), "RESYNC_SECONDS": "30", **env}
        state["log"] = open(os.path.join(root, "install-cni.log"), "w+")
        state["proc"] = subprocess.Popen(["bash", SCRIPT], env=full_env, stdout=state["log"],
                                         stderr=subprocess.STDOUT)
        return state["proc"]

    state["start"] = start
    try:
        yield state
    finally:
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if "log" in state:
            state["log"].seek(0)
            print(state["log"].read())
            state["log"].close()
        shutil.rmtree(root, ignore_errors=True)


def write(path, doc, rename=False):
    if rename:  # how most plugins write: a temporary file renamed over the old one
        tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, path)
    else:
        with open(path, "w") as f:
            json.dump(doc, f)


def read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def log_text(node):
    with open(node["log"].name) as f:
        return f.read()


def chained(path, expected_before):
    """True once path is expected_before's plugins + exactly one meshlane-cni entry, last."""
    doc = read(path)
    return (doc is not None and doc.get("name") == expected_before["name"]
            and doc["plugins"] == expected_before["plugins"] + [PLUGIN])


def test_install_chains_repairs_after_rewrites_and_removes_on_sigterm(node):
    primary = os.path.join(node["conf"], "10-calico.conflist")
    write(primary, CALICO)
    # A later file is not the primary (libcni uses the first by name).
    other = os.path.join(node["conf"], "99-other.conflist")
    write(other, {"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]})
    proc = node["start"]()

    wait_until(lambda: chained(primary, CALICO), timeout=10, message="meshlane-cni chained")
    binary = os.path.join(node["bin"], "meshlane-cni")
    with open(binary, "rb") as a, open(meshlane_cni_bin(), "rb") as b:
        assert a.read() == b.read()
    assert os.access(binary, os.X_OK)
    assert read(other)["plugins"] == [{"type": "bridge"}]
    # Nothing left behind from the atomic writes.
    assert sorted(os.listdir(node["conf"])) == ["10-calico.conflist", "99-other.conflist"]
    assert sorted(os.listdir(node["bin"])) == ["meshlane-cni"]

    # The primary plugin restarts and rewrites its config, in place and by rename, with new
    # content: meshlane-cni is chained again into the new content (nothing old written back).
    for round_, rename in enumerate((False, True, True)):
        new = json.loads(json.dumps(CALICO))
        new["plugins"][0]["mtu"] = 1400 + round_
        write(primary, new, rename=rename)
        wait_until(lambda: chained(primary, new), timeout=10,
                   message=f"re-chained after rewrite {round_} (rename={rename})")

    # Idempotent: when nothing changes, nothing is rewritten.
    time.sleep(0.5)  # its log line follows the rename
    inode = os.stat(primary).st_ino
    writes = log_text(node).count("chained meshlane-cni")
    write(other, {"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]})
    time.sleep(1.5)  # the event is handled within 0.3 s
    assert os.stat(primary).st_ino == inode
    assert log_text(node).count("chained meshlane-cni") == writes

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert read(primary)["plugins"] == new["plugins"]
    assert not os.path.exists(binary)


def test_single_plugin_conf_becomes_a_conflist_and_a_late_primary_is_found(node):
    node["start"]()
    # No config yet (the primary CNI is not installed): install-cni waits.
    wait_until(lambda: "watching" in log_text(node), timeout=10, message="install-cni watching")
    assert "no network config" in log_text(node)
    flannel = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
               "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    conf = os.path.join(node["conf"], "10-flannel.conf")
    write(conf, flannel, rename=True)
    conflist = os.path.join(node["conf"], "10-flannel.conflist")
    expected = {"cniVersion": "0.3.1", "name": "cbr0",
                "plugins": [{"type": "flannel",
                             "delegate": {"hairpinMode": True, "isDefaultGateway": True}}]}
    wait_until(lambda: not os.path.exists(conf) and chained(conflist, expected), timeout=10,
               message=".conf converted")
    assert read(conflist)["cniVersion"] == "0.3.1"

    # flannel restarts and writes its .conf again: it is the primary again, and converted again.
    write(conf, flannel)
    wait_until(lambda: not os.path.exists(conf) and chained(conflist, expected), timeout=10,
               message="re-converted after flannel rewrote its .conf")


def test_keep_on_exit_leaves_the_chain_for_upgrades(node):
    primary = os.path.join(node["conf"], "10-calico.conflist")
    write(primary, CALICO)
    proc = node["start"](CNI_UNINSTALL_ON_EXIT="false")
    wait_until(lambda: chained(primary, CALICO), timeout=10, message="chained")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert chained(primary, CALICO)
    assert os.path.exists(os.path.join(node["bin"], "meshlane-cni"))
    # The explicit removal (cleanup-daemonset.yaml) takes it out.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_BIN_DIR": node["bin"],
           "CNI_CONF_DIR": node["conf"]}
    subprocess.run(["bash", SCRIPT, "--remove"], env=env, check=True, timeout=30)
    assert read(primary) == CALICO
    assert not os.path.exists(os.path.join(node["bin"], "meshlane-cni"))
