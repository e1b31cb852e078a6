"""Differential worlds: one pod restored with Istio's own iptables rules, one enrolled in meshlane,
otherwise identical, so the same probe set can be run against both and the outcomes compared.

A world is two network namespaces created by the test: the pod (interface `vpod`, 10.44.0.2 /
fd00:44::2, ::6 on lo as istio-iptables adds it) and a peer (10.44.0.1 / fd00:44::1) that holds
every "remote" address on its lo and runs the remote probe server. Both worlds use the same
addresses: each lives in its own namespaces, so outcomes compare verbatim. Probe listeners are
harness/scripts/probe_server.py (one JSON line per connection: who answered, original dst)."""
import json
import os

from . import cleanup, proc, util

POD_IF = "vpod"   # deliberately not eth0/eth1: see ISTIO -k in docs/istio-mapping.md
POD4, PEER4 = "10.44.0.2", "10.44.0.1"
POD6, PEER6 = "fd00:44::2", "fd00:44::1"
# Remote destinations, all on the peer's lo: inside 10.0.0.0/8, 9.9.0.0/16 and 1.1.0.0/16 (the
# goldens' include/exclude ranges), none of them; 2001:db8::/32 (the IPv6 goldens) and outside.
REMOTE4 = ("10.99.0.1", "9.9.0.1", "1.1.0.1", "203.0.113.1")
REMOTE6 = ("2001:db8::1", "fd00:99::1")
APP_UID = APP_GID = 1000
APP_PORTS = (8080, 80, 22, 4000, 6000, 31000)
PROXY_PORTS = (15001, 15006, 15008, 15020, 15021, 15090)
REMOTE_PORTS = (8080, 80, 22, 32000)
PROBE_SERVER = os.path.join(util.SCRIPTS_DIR, "probe_server.py")
PROBE_CLIENT = os.path.join(util.SCRIPTS_DIR, "probe_client.py")


def _listen_args(ports):
    args = []
    for port in ports:
        args += ["--listen", f"0.0.0.0:{port}", "--listen", f"[::]:{port}"]
    return args


def _listening(pid, ports):
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        found.add(int(fields[1].rsplit(":", 1)[1], 16))
        except (OSError, StopIteration):
            return False
    return all(p in found for p in ports)


class World:
    def __init__(self, tag):
        self.id = util.unique_id()
        self.pod = f"mld-{self.id}-{tag}"
        self.peer = f"mld-{self.id}-{tag}r"
        self.pod_path = f"/var/run/netns/{self.pod}"
        self.peer_path = f"/var/run/netns/{self.peer}"
        self.cgroup = os.path.join(util.cgroup2_mount(), f"mld-{self.id}-{tag}")
        self.processes = []
        self._tokens = []

    def _register(self, description, fn, record):
        self._tokens.append(cleanup.REGISTRY.add(description, fn, record))

    def ip(self, ns, *args):
        util.run(["ip", "-n", ns, *args])

    def create(self):
        os.mkdir(self.cgroup)
        self._register(f"rmdir {self.cgroup}", lambda: cleanup.remove_cgroup_tree(self.cgroup),
                       {"kind": "cgroup", "path": self.cgroup})
        for child in ("app", "sidecar"):
            os.mkdir(os.path.join(self.cgroup, child))
        for ns in (self.pod, self.peer):
            util.run(["ip", "netns", "add", ns])
            self._register(f"ip netns del {ns}", lambda n=ns: cleanup.delete_netns(n),
                           {"kind": "netns", "name": ns})
        # One batch per namespace: `ip -batch` is one process instead of a dozen.
        util.run(["ip", "link", "add", POD_IF, "netns", self.pod, "type", "veth", "peer", "name",
                  "vpeer", "netns", self.peer])
        pod_cmds = ["link set lo up", "addr add ::6/128 dev lo nodad",
                    f"addr add {POD4}/24 dev {POD_IF}", f"addr add {POD6}/64 dev {POD_IF} nodad",
                    f"link set {POD_IF} up", f"route add default via {PEER4}",
                    f"route add default via {PEER6}"]
        peer_cmds = ["link set lo up", f"addr add {PEER4}/24 dev vpeer",
                     f"addr add {PEER6}/64 dev vpeer nodad", "link set vpeer up"]
        peer_cmds += [f"addr add {a}/32 dev lo" for a in REMOTE4]
        peer_cmds += [f"addr add {a}/128 dev lo nodad" for a in REMOTE6]
        for ns, cmds in ((self.pod, pod_cmds), (self.peer, peer_cmds)):
            util.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")
        # The app listens on 22 and 80 as uid 1000 (per-netns sysctl).
        util.run(["ip", "netns", "exec", self.pod, "sysctl", "-qw",
                  "net.ipv4.ip_unprivileged_port_start=0"])
        return self

    def restore(self, v4_rules, v6_rules):
        """Istio's rules, as istio-iptables feeds them to iptables-restore / ip6tables-restore."""
        for tool, rules in (("iptables-restore", v4_rules), ("ip6tables-restore", v6_rules)):
            if rules:
                util.run(["ip", "netns", "exec", self.pod, tool], input=rules)

    def start_servers(self, proxy_uid, proxy_gid):
        """Probe listeners: the proxy's ports as the proxy uid/gid in the sidecar cgroup, the
        app's ports as the app in the app cgroup, the remote ports in the peer."""
        specs = ((self.pod_path, "sidecar", proxy_uid, proxy_gid, "proxy", PROXY_PORTS),
                 (self.pod_path, "app", APP_UID, APP_GID, "app", APP_PORTS),
                 (self.peer_path, None, None, None, "remote", REMOTE_PORTS))
        started = []
        for netns, cgroup, uid, gid, label, ports in specs:
            process = proc.spawn([util.PYTHON, PROBE_SERVER, "--label", label,
                                  *_listen_args(ports)],
                                 netns_path=netns,
                                 cgroup_dir=os.path.join(self.cgroup, cgroup) if cgroup else None,
                                 uid=uid, gid=gid, groups=[] if uid is not None else None,
                                 description=f"probe server {label} in {self.pod}")
            self.processes.append(process)
            started.append((process, ports, label))
        for process, ports, label in started:
            util.wait_until(lambda: process.poll() is not None or _listening(process.pid, ports),
                            timeout=10, message=f"{label} probe server in {self.pod}")
            if process.poll() is not None:
                raise RuntimeError(f"{label} probe server exited {process.returncode}")

    def probe(self, probes, from_peer=False):
        """Runs probes from the pod's app cgroup (or the peer); returns {id: outcome}."""
        if not probes:
            return {}
        result = proc.run_in([util.PYTHON, PROBE_CLIENT],
                             netns_path=self.peer_path if from_peer else self.pod_path,
                             cgroup_dir=None if from_peer else os.path.join(self.cgroup, "app"),
                             input=json.dumps(probes), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"probe client: exit {result.returncode}: {result.stderr}")
        return json.loads(result.stdout)

    def destroy(self):
        for process in self.processes:
            proc.stop(process)
        while self._tokens:
            cleanup.REGISTRY.undo(self._tokens.pop())


def parse_golden(text):
    """Splits an istio-iptables golden (the commands TestIptables recorded) into the
    iptables-restore input for IPv4 and for IPv6. istio-iptables runs the IPv4 restore first,
    then (EnableIPv6) the IPv6 one; a table seen a second time therefore starts the IPv6 part."""
    parts, seen, current = [[], []], set(), None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            current = 1 if table in seen or current == 1 else 0
            seen.add(table)
            parts[current].append(f"*{table}")
        elif line.startswith("-") or line == "COMMIT":
            if current is None:
                raise ValueError(f"rule outside a table: {line}")
            parts[current].append(line)
        # other lines are the iptables-save / ip6tables-save commands istio-iptables ran
    v4, v6 = ("\n".join(p) + "\n" if p else "" for p in parts)
    if v6 and "::6/128" not in v6:
        raise ValueError("second restore block is not IPv6")
    return v4, v6
