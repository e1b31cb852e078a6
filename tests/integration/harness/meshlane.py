"""The meshlane agent and CLI as the tests drive them, plus "what is attached" helpers."""
import json
import os
import signal
import subprocess

from . import cleanup, proc, util

DEFAULT_BIN = "/work/main/build/meshlane"
# `meshlane status` exit codes (cli/commands.h, docs/api.md): the agent answered and is ready, not
# ready (interception disabled) or degraded (an optional part off).
STATUS_READY, STATUS_NOT_READY, STATUS_DEGRADED = 0, 5, 6
STATUS_ANSWERED = (STATUS_READY, STATUS_NOT_READY, STATUS_DEGRADED)
BPFTOOL = "/usr/sbin/bpftool"


def meshlane_bin():
    return os.environ.get("MESHLANE_BIN") or DEFAULT_BIN


def cli_flags(options):
    """{"exclude_outbound_ports": [80, 443], "proxy_self_to_inbound": True} ->
    ["--exclude-outbound-ports", "80,443", "--proxy-self-to-inbound"]."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


class Agent:
    """One agent process with a per-instance state dir, API socket and pin dir
    (/sys/fs/bpf/meshlane-test-<id>). kill()/start() simulate a crash and a restart with the
    same configuration. extra_config: more `key = value` lines for agent.conf
    ({"tls_slow_handshake_threshold_ms": 100})."""

    def __init__(self, binary, run_id=None, extra_config=None):
        self.binary = binary
        self.extra_config = dict(extra_config or {})
        self.id = run_id or util.unique_id()
        self.dir = f"/tmp/meshlane-agent-{self.id}"
        self.state_dir = os.path.join(self.dir, "state")
        self.api_socket = os.path.join(self.dir, "api.sock")
        self.grpc_socket = os.path.join(self.dir, "grpc.sock")
        self.config_path = os.path.join(self.dir, "agent.conf")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.pin_dir_name = f"meshlane-test-{self.id}"
        self.pin_path = os.path.join(util.bpffs_mount(), self.pin_dir_name)
        self.process = None
        # Prepended to the agent's command line, e.g. setpriv with the unit's capability set.
        self.launch_prefix = []
        self._tokens = []

    def _write_config(self):
        os.makedirs(self.state_dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        with open(self.config_path, "w") as f:
            f.write("# written by tests/integration/harness/meshlane.py\n"
                    f"state_dir = {self.state_dir}\n"
                    f"api_socket = {self.api_socket}\n"
                    f"grpc_socket = {self.grpc_socket}\n"
                    f"pin_dir = {self.pin_dir_name}\n"
                    "log_level = debug\n")
            for key, value in self.extra_config.items():
                f.write(f"{key} = {value}\n")

    def prepare(self):
        """Registers the cleanup of the dirs and pins (before anything can create them, so a
        crash mid-start still removes them) and writes the config. Idempotent."""
        if not self._tokens:
            self._tokens.append(cleanup.REGISTRY.add(
                f"rm {self.dir}", lambda: cleanup.remove_tree(self.dir),
                {"kind": "dir", "path": self.dir}))
            self._tokens.append(cleanup.REGISTRY.add(
                f"rm {self.pin_path}", lambda: cleanup.remove_tree(self.pin_path),
                {"kind": "pin_dir", "path": self.pin_path}))
            self._write_config()

    def start(self, timeout=15.0):
        self.prepare()
        log = open(self.log_path, "ab")
        try:
            self.process = proc.spawn([*self.launch_prefix, self.binary, "agent", "--config",
                                       self.config_path],
                                      stdout=log, stderr=log, env=dict(os.environ),
                                      description=f"meshlane agent {self.id}")
        finally:
            log.close()

        def ready():
            if self.process.poll() is not None:
                return True
            return self.cli("status", timeout=5).returncode in STATUS_ANSWERED
        util.wait_until(ready, timeout=timeout, interval=0.05,
                        message=f"agent {self.id} answering `status`")
        if self.process.poll() is not None:
            raise RuntimeError(f"agent exited {self.process.returncode}:\n{self.log_text()}")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.process is not None:
            proc.stop(self.process, sig=sig, timeout=10)

    def kill(self):
        """SIGKILL by PID: what a crash looks like."""
        self.stop(signal.SIGKILL)

    def restart(self):
        self.stop()
        return self.start()

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- CLI --------------------------------------------------------------------------------------
    def cli(self, *args, uid=None, gid=None, timeout=20, server=None):
        """meshlane --server SOCK ARGS...; returns CompletedProcess (text)."""
        cmd = [self.binary, "--server", server or self.api_socket, *map(str, args)]
        kwargs = {}
        if uid is not None:
            kwargs["preexec_fn"] = proc._child_setup(None, None, uid, gid if gid is not None
                                                     else uid, [])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)

    def cli_ok(self, *args, **kwargs):
        result = self.cli(*args, **kwargs)
        assert result.returncode == 0, (f"meshlane {' '.join(map(str, args))} -> exit "
                                        f"{result.returncode}: {result.stderr.strip()}")
        return result

    def cli_json(self, *args, codes=(0,)):
        """--json output; `codes`: the exit codes that count as an answer (e.g. STATUS_ANSWERED
        for `status` on a degraded agent)."""
        result = self.cli(*args, "--json")
        assert result.returncode in codes, (f"meshlane {' '.join(map(str, args))} --json -> exit "
                                            f"{result.returncode}: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def enroll(self, pod, name=None, cgroup=None, netns=None, **options):
        """Enrolls a pod (its pod cgroup: parent of app and sidecar) under a name; returns the
        CompletedProcess. options are CLI flags in snake_case."""
        return self.cli("enroll", name or pod.name, "--cgroup", cgroup or pod.cgroup(),
                        "--netns", netns or pod.netns_path, *cli_flags(options))

    def enroll_ok(self, pod, name=None, **options):
        result = self.enroll(pod, name, **options)
        assert result.returncode == 0, (f"enroll {name or pod.name} -> exit "
                                        f"{result.returncode}: {result.stderr.strip()}\n"
                                        f"agent log tail:\n{self.log_text()[-2000:]}")
        return result

    def unenroll(self, name):
        return self.cli("unenroll", name)

    def workloads(self):
        return self.cli_json("workloads").get("workloads", [])

    def workload_names(self):
        return sorted(w.get("spec", {}).get("name") or w.get("name") for w in self.workloads())

    # -- teardown ---------------------------------------------------------------------------------
    def destroy(self):
        """Unenrolls every workload (while the agent runs), stops it by PID, removes the pin dir
        (removing link pins detaches programs once no fd holds them) and the state dir."""
        try:
            if self.alive():
                try:
                    for name in self.workload_names():
                        self.unenroll(name)
                except (AssertionError, ValueError, subprocess.TimeoutExpired) as e:
                    print(f"[harness] unenroll at teardown: {e}")
            self.stop()
        finally:
            while self._tokens:
                cleanup.REGISTRY.undo(self._tokens.pop())


# -- what is attached ----------------------------------------------------------------------------
def bpftool_json(*args, netns=None):
    cmd = [BPFTOOL, "-j", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    result = util.run(cmd, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return json.loads(result.stdout)


def cgroup_programs(cgroup_dir):
    """Programs attached directly to a cgroup (bpftool cgroup show PATH)."""
    data = bpftool_json("cgroup", "show", cgroup_dir)
    return data or []


def netns_inode(netns_path):
    return os.stat(netns_path).st_ino


def netns_links(netns_path):
    """BPF links attached to a network namespace (sk_lookup shows up as a netns link)."""
    inode = netns_inode(netns_path)
    links = bpftool_json("link", "show") or []
    return [link for link in links if link.get("type") == "netns"
            and link.get("netns_ino") == inode]


def attached_summary(pod):
    """Everything meshlane could have attached for a pod: cgroup programs on the pod cgroup and
    its children, and netns links."""
    summary = {}
    for child in (None, "app", "sidecar"):
        progs = cgroup_programs(pod.cgroup(child))
        if progs:
            summary[f"cgroup:{child or 'pod'}"] = progs
    links = netns_links(pod.netns_path)
    if links:
        summary["netns"] = links
    return summary


def pin_entries(agent):
    """Names in the agent's pin dir (recursively, relative), [] when absent."""
    result = []
    for root, dirs, files in os.walk(agent.pin_path):
        for entry in dirs + files:
            result.append(os.path.relpath(os.path.join(root, entry), agent.pin_path))
    return sorted(result)
