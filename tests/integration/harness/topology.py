"""Two pods = two network namespaces joined by a veth pair created directly inside them (nothing
on the host side), IPv4 + IPv6 (nodad) addresses, lo up, and a cgroup v2 tree per pod:
<cgroup2>/ml-<id>/<pod>/{app,sidecar}. The pod cgroup is what meshlane enrolls."""
import json
import os

from . import cleanup, proc, util
from .sidecar import Sidecar

APP_UID = 1000
APP_GID = 1000
APP_PORT = 8080


class Pod:
    def __init__(self, topo, short, ip4, ip6, peer_ip4=None, peer_ip6=None):
        self.topo = topo
        self.short = short                      # "a" / "b"
        self.name = f"ml-{topo.id}-{short}"      # netns name, also the default workload name
        self.netns_path = f"/var/run/netns/{self.name}"
        self.ip4, self.ip6 = ip4, ip6
        self.cgroup_dir = os.path.join(topo.cgroup_root, short)
        self.cgroup_rel = os.path.relpath(self.cgroup_dir, util.cgroup2_mount())
        self.workdir = topo.workdir
        self.sidecar = None
        self.apps = []

    def cgroup(self, child=None):
        return os.path.join(self.cgroup_dir, child) if child else self.cgroup_dir

    # -- processes --------------------------------------------------------------------------------
    def run(self, args, cgroup="app", uid=None, gid=None, groups=None, timeout=20):
        return proc.run_in(args, netns_path=self.netns_path,
                           cgroup_dir=self.cgroup(cgroup) if cgroup else None,
                           uid=uid, gid=gid, groups=groups, timeout=timeout)

    def ip(self, *args, check=True):
        return util.run(["ip", "-n", self.name, *args], check=check)

    def exec(self, *args, check=True, timeout=30):
        """Root command inside the netns, in no particular cgroup (iptables, bpftool, ss)."""
        return util.run(["ip", "netns", "exec", self.name, *args], check=check, timeout=timeout)

    def start_app(self, ports=(APP_PORT,), name=None, v4_addr="0.0.0.0", v6_addr="::",
                  uid=APP_UID, gid=APP_GID, cgroup="app"):
        """HTTP server in the app cgroup on v4_addr:P and [v6_addr]:P for every port."""
        args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "http_server.py"),
                "--name", name or f"{self.short}-app"]
        for port in ports:
            if v4_addr:
                args += ["--listen", f"{v4_addr}:{port}"]
            if v6_addr:
                args += ["--listen", f"[{v6_addr}]:{port}"]
        err = open(os.path.join(self.workdir, f"app-{self.short}-{len(self.apps)}.err"), "ab")
        try:
            process = proc.spawn(args, netns_path=self.netns_path, cgroup_dir=self.cgroup(cgroup),
                                 uid=uid, gid=gid, groups=[], stdout=err, stderr=err,
                                 description=f"app of {self.name}")
        finally:
            err.close()
        util.wait_until(lambda: process.poll() is not None or self.listening(ports, pid=process.pid),
                        timeout=5, message=f"app in {self.name} listening on {list(ports)}")
        if process.poll() is not None:
            raise RuntimeError(f"app in {self.name} exited {process.returncode}")
        self.apps.append(process)
        return process

    def client(self, host, port, uid=APP_UID, gid=APP_GID, groups=(), cgroup="app",
               family=None, bind=None, timeout=5.0):
        """One HTTP GET from inside the pod; returns the client's JSON result (see
        scripts/http_client.py): ok, status, json (the server's view), peername, sockname."""
        args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "http_client.py"), host, str(port),
                "--timeout", str(timeout)]
        if family:
            args += ["--family", str(family)]
        if bind:
            args += ["--bind", bind]
        result = self.run(args, cgroup=cgroup, uid=uid, gid=gid, groups=list(groups),
                          timeout=timeout + 10)
        try:
            data = json.loads(result.stdout)
        except ValueError:
            raise RuntimeError(f"client failed: exit {result.returncode} {result.stderr}")
        data["host"], data["port"] = host, port
        return data

    def start_sidecar(self, **kwargs):
        self.sidecar = Sidecar(self, **kwargs).start()
        return self.sidecar

    # -- state ------------------------------------------------------------------------------------
    def listening(self, ports, pid=None):
        """True when every port has a TCP LISTEN socket in this netns (read via /proc, so no
        extra process is needed while polling)."""
        pid = pid or self._any_pid()
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

    def _any_pid(self):
        procs = ([self.sidecar.process] if self.sidecar and self.sidecar.process else []) + \
            self.apps
        for p in reversed(procs):
            if p.poll() is None:
                return p.pid
        raise RuntimeError(f"no live process in {self.name} to read its /proc/net")

    def iptables_save(self):
        """iptables-save + ip6tables-save output of this netns (nft backend)."""
        return (self.exec("iptables-save").stdout, self.exec("ip6tables-save").stdout)

    def nat_rules(self):
        """-A lines in the nat tables of this netns (v4 and v6)."""
        rules = []
        for text in self.iptables_save():
            table = None
            for line in text.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif table == "nat" and line.startswith("-A"):
                    rules.append(line)
        return rules


class Topology:
    def __init__(self, run_id=None):
        self.id = run_id or util.unique_id()
        octet2 = 100 + int(self.id[0:2], 16) % 100
        octet3 = int(self.id[2:4], 16)
        self.subnet4 = f"10.{octet2}.{octet3}.0/24"
        self.subnet6 = f"fd00:{octet2:x}:{octet3:x}::/64"
        self.cgroup_root = os.path.join(util.cgroup2_mount(), f"ml-{self.id}")
        self.workdir = f"/tmp/meshlane-it-{self.id}"
        self.a = Pod(self, "a", f"10.{octet2}.{octet3}.1", f"fd00:{octet2:x}:{octet3:x}::1")
        self.b = Pod(self, "b", f"10.{octet2}.{octet3}.2", f"fd00:{octet2:x}:{octet3:x}::2")
        self._tokens = []

    @property
    def pods(self):
        return (self.a, self.b)

    def _register(self, description, fn, record):
        self._tokens.append(cleanup.REGISTRY.add(description, fn, record))

    def create(self):
        os.makedirs(self.workdir)
        os.chmod(self.workdir, 0o755)
        self._register(f"rm {self.workdir}", lambda: cleanup.remove_tree(self.workdir),
                       {"kind": "dir", "path": self.workdir})
        os.mkdir(self.cgroup_root)
        self._register(f"rmdir {self.cgroup_root}",
                       lambda: cleanup.remove_cgroup_tree(self.cgroup_root),
                       {"kind": "cgroup", "path": self.cgroup_root})
        for pod in self.pods:
            for child in ("app", "sidecar"):
                os.makedirs(pod.cgroup(child))
            util.run(["ip", "netns", "add", pod.name])
            self._register(f"ip netns del {pod.name}",
                           lambda n=pod.name: cleanup.delete_netns(n),
                           {"kind": "netns", "name": pod.name})
            pod.ip("link", "set", "lo", "up")
        util.run(["ip", "link", "add", "veth-a", "netns", self.a.name, "type", "veth",
                  "peer", "name", "veth-b", "netns", self.b.name])
        for pod, dev in ((self.a, "veth-a"), (self.b, "veth-b")):
            pod.veth = dev
            pod.ip("addr", "add", f"{pod.ip4}/24", "dev", dev)
            pod.ip("-6", "addr", "add", f"{pod.ip6}/64", "dev", dev, "nodad")
            pod.ip("link", "set", dev, "up")
        return self

    def destroy(self):
        """Processes first (by PID), then netns, cgroups, files: the registry's LIFO order."""
        for pod in self.pods:
            if pod.sidecar:
                pod.sidecar.stop()
            for app in pod.apps:
                proc.stop(app)
        while self._tokens:
            cleanup.REGISTRY.undo(self._tokens.pop())

    def describe(self):
        """Text for failure messages: both proxy logs and stderr."""
        parts = []
        for pod in self.pods:
            if pod.sidecar:
                parts.append(f"--- {pod.name} sidecar log ---\n{pod.sidecar.log.text()[-3000:]}"
                             f"--- {pod.name} sidecar stderr ---\n"
                             f"{pod.sidecar.stderr_text()[-1500:]}")
        return "\n".join(parts)
