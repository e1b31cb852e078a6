"""Differential worlds: one pod restored with Istio's own iptables rules, one enrolled in meshlane,
otherwise identical, so the same probe set can be run against both and the outcomes compared.

A world is two network namespaces created by the test: the pod (interface `vpod`, 10.44.0.2 /
fd00:44::2, ::6 on lo as istio-iptables adds it) and a peer (10.44.0.1 / fd00:44::1) that holds
every "remote" address on its lo and runs the remote probe server. Both worlds use the same
addresses: each lives in its own namespaces, so outcomes compare verbatim. Probe listeners are
harness/scripts/probe_server.py (one JSON line per connection: who answered, original dst).

DNS (spawn_dns): three dnsmasq servers per world, each answering DNS_NAME with its own address
so the answer names the side that answered, none forwarding anywhere (--no-resolv, --no-hosts,
no config file): the proxy's DNS listener (127.0.0.1 / ::1 :15053, as the proxy uid/gid in the
sidecar cgroup), a pod-local real server (port 53 on 127.0.0.53, the loopback nameserver of the
DNS goldens, and on the pod's other local addresses, as the app) and a remote real server in the
peer (port 53 on REMOTE_DNS, among them ::127.0.0.53, the goldens' IPv6 nameserver, which is
not local and so leaves the pod by its default route)."""
import json
import os
import select
import subprocess
import threading

from . import cleanup, proc, util

POD_IF = "vpod"   # deliberately not eth0/eth1: see ISTIO -k in docs/istio-mapping.md
POD4, PEER4 = "10.44.0.2", "10.44.0.1"
POD6, PEER6 = "fd00:44::2", "fd00:44::1"
# Remote destinations, all on the peer's lo: inside 10.0.0.0/8, 9.9.0.0/16 and 1.1.0.0/16 (the
# goldens' include/exclude ranges), none of them; 2001:db8::/32 (the IPv6 goldens) and outside.
REMOTE4 = ("10.99.0.1", "9.9.0.1", "1.1.0.1", "203.0.113.1")
REMOTE6 = ("2001:db8::1", "fd00:99::1")
# The goldens' IPv6 nameserver (IPv4-compatible form of 127.0.0.53): on the peer's lo.
REMOTE6_DNS_ONLY = ("::127.0.0.53",)
REMOTE_DNS = ("10.99.0.1", "9.9.0.1", "fd00:99::1", *REMOTE6_DNS_ONLY)
LOCAL_DNS = ("127.0.0.53", "127.0.0.1", "127.1.2.3", POD4, "::1", POD6)
DNS_NAME = "svc.meshlane-diff.test"  # probe_client.py asks for it
DNS_ANSWERS = {"198.51.100.1": "dns-listener", "198.51.100.2": "peer-dns:53",
               "198.51.100.3": "pod-dns:53"}
DNS_LISTENER_PORT = 15053
APP_UID = APP_GID = 1000
APP_PORTS = (8080, 80, 22, 4000, 6000, 31000)
PROXY_PORTS = (15001, 15006, 15008, 15020, 15021, 15090)
REMOTE_PORTS = (8080, 80, 22, 32000)
PROBE_SERVER = os.path.join(util.SCRIPTS_DIR, "probe_server.py")
PROBE_CLIENT = os.path.join(util.SCRIPTS_DIR, "probe_client.py")


class World:
    def __init__(self, tag):
        self.id = util.unique_id()
        self.pod = f"mld-{self.id}-{tag}"
        self.peer = f"mld-{self.id}-{tag}r"
        self.pod_path = f"/var/run/netns/{self.pod}"
        self.peer_path = f"/var/run/netns/{self.peer}"
        self.cgroup = os.path.join(util.cgroup2_mount(), f"mld-{self.id}-{tag}")
        self.workdir = f"/tmp/meshlane-it-mld-{self.id}-{tag}"  # probe servers' stderr
        self.processes = []
        self._tokens = []

    def _register(self, description, fn, record):
        self._tokens.append(cleanup.REGISTRY.add(description, fn, record))

    def ip(self, ns, *args):
        util.run(["ip", "-n", ns, *args])

    def create(self):
        os.makedirs(self.workdir)
        self._register(f"rm {self.workdir}", lambda: cleanup.remove_tree(self.workdir),
                       {"kind": "dir", "path": self.workdir})
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
        peer_cmds += [f"addr add {a}/128 dev lo nodad" for a in REMOTE6 + REMOTE6_DNS_ONLY]
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

    def spawn_servers(self, proxy_uid, proxy_gid):
        """Probe listeners, one process forking three groups: the proxy's ports as the proxy
        uid/gid in the sidecar cgroup, the app's ports as the app in the app cgroup, the remote
        ports in the peer. Call from the main thread: children started from other threads were
        seen landing in the wrong netns. wait_servers() waits until all listen."""
        groups = [("proxy", proxy_uid, proxy_gid, os.path.join(self.cgroup, "sidecar"), "-",
                   PROXY_PORTS),
                  ("app", APP_UID, APP_GID, os.path.join(self.cgroup, "app"), "-", APP_PORTS),
                  ("remote", "-", "-", "-", self.peer_path, REMOTE_PORTS)]
        args = [util.PYTHON, PROBE_SERVER]
        for label, uid, gid, cgroup, netns, ports in groups:
            args += ["--group", f"{label},{uid},{gid},{cgroup},{netns},"
                                f"{':'.join(map(str, ports))}"]
        with open(os.path.join(self.workdir, "servers.err"), "ab") as err:
            self._server = proc.spawn(args, netns_path=self.pod_path, stdout=subprocess.PIPE,
                                      stderr=err, description=f"probe servers of {self.pod}")
        self.processes.append(self._server)

    def spawn_dns(self, proxy_uid, proxy_gid):
        """The three dnsmasq servers (module docstring); wait_dns() waits until they serve."""
        answer = {label: addr for addr, label in DNS_ANSWERS.items()}
        self._dns = []
        for tag, listen, port, ids, cgroup, netns in (
                ("listener", ("127.0.0.1", "::1"), DNS_LISTENER_PORT, (proxy_uid, proxy_gid),
                 "sidecar", self.pod_path),
                ("pod", LOCAL_DNS, 53, (APP_UID, APP_GID), "app", self.pod_path),
                ("peer", REMOTE_DNS, 53, (None, None), None, self.peer_path)):
            log = os.path.join(self.workdir, f"dnsmasq-{tag}.log")
            args = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                    "--no-hosts", "--pid-file=", "--user=", f"--port={port}",
                    f"--listen-address={','.join(listen)}", "--bind-interfaces",
                    f"--address=/{DNS_NAME}/"
                    f"{answer['dns-listener' if tag == 'listener' else tag + '-dns:53']}",
                    "--log-facility=-"]
            with open(log, "ab") as out:
                process = proc.spawn(
                    args, netns_path=netns, uid=ids[0], gid=ids[1],
                    groups=[] if ids[0] is not None else None,
                    cgroup_dir=os.path.join(self.cgroup, cgroup) if cgroup else None,
                    stdout=out, stderr=out, description=f"dnsmasq {tag} of {self.pod}")
            self.processes.append(process)
            self._dns.append((tag, process, log))

    def wait_dns(self, timeout=10):
        """dnsmasq logs "started" once its sockets are bound."""
        for tag, process, log in self._dns:
            util.wait_until(lambda: process.poll() is not None or "started," in open(log).read(),
                            timeout=timeout, message=f"dnsmasq {tag} of {self.pod} started")
            if process.poll() is not None:
                raise RuntimeError(f"dnsmasq {tag} of {self.pod} exited: {open(log).read()}")

    def wait_servers(self, timeout=20):
        ready, _, _ = select.select([self._server.stdout], [], [], timeout)
        line = self._server.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"probe servers of {self.pod} not ready: {line!r} "
                               f"{self.server_errors()}")

    def start_probes(self, probes, from_peer=False):
        """Starts probe_client.py in the pod's app cgroup (or in the peer); finish_probes()
        returns {id: outcome}. Runs overlap as processes, without threads."""
        process = subprocess.Popen(
            [util.PYTHON, PROBE_CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=proc.pod_env(), cwd="/",
            preexec_fn=proc._child_setup(
                self.peer_path if from_peer else self.pod_path,
                None if from_peer else os.path.join(self.cgroup, "app"), None, None, None))
        return process, json.dumps(probes)

    @staticmethod
    def finish_probes(started):
        process, text = started
        out, err = process.communicate(text, timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"probe client: exit {process.returncode}: {err}")
        return json.loads(out)

    def server_errors(self):
        """The probe servers' stderr, for failure messages."""
        text = ""
        for name in sorted(os.listdir(self.workdir)) if os.path.isdir(self.workdir) else []:
            if name.startswith("dnsmasq-"):  # dnsmasq logs its start: not an error
                continue
            with open(os.path.join(self.workdir, name), errors="replace") as f:
                body = f.read()
            if body:
                text += f"--- {self.pod} {name} ---\n{body[-2000:]}\n"
        return text

    def destroy(self):
        for process in self.processes:
            proc.stop(process)
        while self._tokens:
            cleanup.REGISTRY.undo(self._tokens.pop())


def parallel(*calls):
    """Runs the callables in threads; returns their results in order, raises the first error.
    The work is waiting on processes (ip, python, iptables-restore), so threads overlap it."""
    results, errors = [None] * len(calls), []

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


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
