#!/usr/bin/python3
"""meshlane benchmark driver: direct vs Istio iptables capture vs meshlane (vs meshlane fast path)
with the same HAProxy sidecars and the same load tools, in namespaces this run creates.

Each configuration gets its own pair of pods (two netns joined by a veth, a cgroup v2 tree per
pod), set up once; rounds then alternate between the configurations metric by metric, rotating
the order every round, so slow drift of the machine hits all of them alike. Results are medians
over the rounds. Everything created carries the run id and is removed on exit, failure and
signals; `--cleanup-only --run-id ID` removes what a killed run left (bench/run.sh calls it from
its trap). Processes are ended by PID only. Not a test: nothing may depend on these timings.
"""
import argparse
import ctypes
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
APP_UID = APP_GID = 1000
PROXY_UID = PROXY_GID = 1337
OUTBOUND_PORT, INBOUND_PORT = 15001, 15006
IPERF_PORT, SOCKPERF_PORT, CRR_PORT = 5201, 11111, 8080
# sockperf's TCP minimum is 14 bytes (its header) and its maximum 65506; these stand for the
# 1 B / 1 KiB / 64 KiB messages of the issue.
RR_SIZES = (14, 1024, 65506)
CONFIGS = ("direct", "iptables", "meshlane", "meshlane_noobs", "meshlane_fast",
           "meshlane_fast_pp")
# What `meshlane enroll` gets per fast-path configuration (docs/fastpath.md).
FAST_PATH_FLAGS = {"meshlane_fast": ["--fast-path"],
                   "meshlane_fast_pp": ["--fast-path=app-proxy,proxy-proxy"]}
# "meshlane" is the default configuration: what `meshlane enroll` does without flags (no fast
# path) under the agent's default config (observers on).
COLUMN_NAMES = {"meshlane": "meshlane (default)", "meshlane_fast": "fast",
                "meshlane_fast_pp": "fast+pp", "meshlane_noobs": "obs off"}
# The sidecar's settings (--haproxy): "single" is one thread and no logging (the proxy's own
# cost stays small, so capture and hop differences show); "threaded-log" is nbthread = the
# machine's cores with a log line per connection, as a production sidecar would run, so the
# ratios are not a property of one proxy setup only.
HAPROXY_PROFILES = ("single", "threaded-log")
HAPROXY_PROFILE = "single"
# "obs off": the same datapath under a second agent with `observe = false` (no connect/drop
# tracepoints, no TLS wire/libssl observers), so the datapath's own cost is visible next to the
# product default. Only these loads, to keep the run bounded.
NOOBS_CONFIG = "meshlane_noobs"
NOOBS_METRICS = ("rr_1024", "crr")
# Paced bulk: one iperf3 stream at these multiples of iptables' unpaced median of the same run,
# one pass after the rounds, for these columns: how much the fast path carries before a proxy
# falls 4 MiB behind and the connection spills to TCP (docs/fastpath-measurements.md, "bulk: the ceiling").
PACED_RATES = (0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
PACED_CONFIGS = ("iptables", "meshlane", "meshlane_fast", "meshlane_fast_pp")
PACED_HELD_FRACTION = 0.95
# The issue's own topology (one pod, app -> its sidecar -> a server in the same netns; OnePod),
# bulk only, in the same rounds as everything else.
ONE_POD_PREFIX = "pod1_"
ONE_POD_CONFIGS = ("direct", "iptables", "meshlane", "meshlane_fast")

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


class Interrupted(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args, check=True, timeout=60, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} -> exit {proc.returncode}\n"
                           f"{proc.stdout.strip()}\n{proc.stderr.strip()}")
    return proc


def mount_of(fstype, default=None):
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == fstype:
                return fields[1]
    if default:
        return default
    raise RuntimeError(f"no {fstype} mount in /proc/mounts")


def child_setup(netns_path=None, cgroup_dir=None, uid=None, gid=None):
    """preexec_fn: cgroup first (the cgroup2 mount is not visible after `ip netns exec`, and we
    need root), then setns, then drop privileges; PDEATHSIG last (credential changes clear it)."""
    def setup():
        if cgroup_dir:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if netns_path:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            finally:
                os.close(fd)
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return setup


ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "HOME": "/"}


def proc_start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


class Run:
    """Names and resources of one benchmark run; everything is derived from the run id, so a
    later `--cleanup-only` finds it all."""

    def __init__(self, run_id, meshlane_bin, crr_bin):
        self.id = run_id
        self.meshlane_bin = meshlane_bin
        self.crr_bin = crr_bin
        self.workdir = f"/tmp/meshlane-bench-{run_id}"
        self.cgroup_root = os.path.join(mount_of("cgroup2"), f"mlb-{run_id}")
        self.pin_name = f"meshlane-bench-{run_id}"
        self.pin_path = os.path.join(mount_of("bpf", "/sys/fs/bpf"), self.pin_name)
        self.pids_file = os.path.join(self.workdir, "pids")
        self.processes = []
        self.agents = {}  # agent name -> process; "agent" observes, "agent-noobs" does not

    @property
    def agent(self):
        """The (observing) agent's process, for overhead.py and hop_latency.py."""
        return self.agents.get("agent")

    def api_socket(self, agent="agent"):
        return os.path.join(self.workdir, f"{agent}.sock")

    def netns_name(self, config, pod):
        return f"mlb-{self.id}-{config.replace('_', '-')}-{pod}"

    # -- processes ---------------------------------------------------------------------------
    def spawn(self, args, name, netns=None, cgroup=None, uid=None, gid=None):
        out = open(os.path.join(self.workdir, f"{name}.log"), "ab")
        try:
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=ENV,
                                 cwd="/", preexec_fn=child_setup(
                                     f"/var/run/netns/{netns}" if netns else None, cgroup,
                                     uid, gid))
        finally:
            out.close()
        p.bench_name = name
        self.processes.append(p)
        with open(self.pids_file, "a") as f:
            f.write(f"{p.pid} {proc_start_time(p.pid)}\n")
        return p

    def run_in(self, args, netns, cgroup, uid=APP_UID, gid=APP_GID, timeout=60):
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV,
                              cwd="/", stdin=subprocess.DEVNULL, preexec_fn=child_setup(
                                  f"/var/run/netns/{netns}", cgroup, uid, gid))

    def stop_processes(self):
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for p in reversed(self.processes):
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.processes = []

    # -- setup ----------------------------------------------------------------------------------
    def create(self):
        os.makedirs(self.workdir, mode=0o755)
        os.chmod(self.workdir, 0o755)
        os.mkdir(self.cgroup_root)

    def start_agent(self, agent="agent", observe=True):
        """An agent with its own state, sockets and pins (<bpffs>/meshlane-bench-<run>[-noobs]),
        so two can run side by side; pod discovery off: it enrols only what we tell it."""
        config = os.path.join(self.workdir, f"{agent}.conf")
        suffix = agent[len("agent"):]
        with open(config, "w") as f:
            f.write(f"state_dir = {self.workdir}/state{suffix}\n"
                    f"api_socket = {self.api_socket(agent)}\n"
                    f"grpc_socket = {self.workdir}/{agent}-grpc.sock\n"
                    f"pin_dir = {self.pin_name}{suffix}\nlog_level = info\n"
                    f"discover_pods = false\n{'' if observe else 'observe = false'}\n")
        proc = self.agents[agent] = self.spawn([self.meshlane_bin, "agent", "--config", config],
                                               agent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{agent} exited {proc.returncode}: "
                                   f"{read_tail(self.workdir, agent + '.log')}")
            if self.cli("status", check=False, agent=agent).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{agent} did not answer `status` within 15 s")

    def cli(self, *args, check=True, agent="agent"):
        return run([self.meshlane_bin, "--server", self.api_socket(agent), *args], check=check,
                   timeout=30)


def read_tail(workdir, name, n=2000):
    try:
        with open(os.path.join(workdir, name), errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def cleanup(run_id, processes_run=None):
    """Idempotent removal of everything named after run_id. Order: processes (by recorded PID
    and start time), netns, cgroups (deepest first), BPF pins, workdir."""
    if processes_run is not None:
        processes_run.stop_processes()
    workdir = f"/tmp/meshlane-bench-{run_id}"
    pids_file = os.path.join(workdir, "pids")
    if os.path.exists(pids_file):
        with open(pids_file) as f:
            for line in f:
                pid, start = line.split()
                if proc_start_time(int(pid)) == start:  # still the process we started
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        time.sleep(0.2)
    netns_dir = "/var/run/netns"
    if os.path.isdir(netns_dir):
        for name in os.listdir(netns_dir):
            if name.startswith(f"mlb-{run_id}-"):
                run(["ip", "netns", "del", name], check=False)
    cgroup_root = os.path.join(mount_of("cgroup2"), f"mlb-{run_id}")
    if os.path.isdir(cgroup_root):
        for _ in range(50):
            for dirpath, dirnames, _files in sorted(os.walk(cgroup_root, topdown=False)):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
            if not os.path.exists(cgroup_root):
                break
            time.sleep(0.1)
        if os.path.exists(cgroup_root):
            log(f"warning: could not remove {cgroup_root}")
    bpffs = mount_of("bpf", "/sys/fs/bpf")
    for name in os.listdir(bpffs):  # the agents' pins
        if name == f"meshlane-bench-{run_id}" or name.startswith(f"meshlane-bench-{run_id}-"):
            shutil.rmtree(os.path.join(bpffs, name), ignore_errors=True)
    # Keep the logs of a failed run one level up for diagnosis? No: the results file carries
    # what matters; the workdir goes.
    shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Topology


def haproxy_config():
    """The same sidecar for iptables and meshlane. Inbound is split v4 (0.0.0.0:15006, where
    HAProxy 2.6 asks SO_ORIGINAL_DST, needed with REDIRECT) and forwards from 127.0.0.6 like
    Envoy, so Istio's `-o lo --uid-owner 1337 ! -d 127.0.0.1 -j ISTIO_IN_REDIRECT` rule does not
    loop. Profile "single" (HAPROXY_PROFILE): one thread, no per-connection logging (it would
    dominate the connection-rate numbers); "threaded-log": nbthread = cores, one tcplog line
    per connection to stdout (a file in the run's workdir)."""
    threaded = HAPROXY_PROFILE == "threaded-log"
    glob = ["global", "    maxconn 8000", f"    nbthread {os.cpu_count() if threaded else 1}"]
    if threaded:
        glob.append("    log stdout format raw local0 info")
    return "\n".join([
        *glob,
        "defaults", "    mode tcp", "    timeout connect 3s", "    timeout client 30s",
        "    timeout server 30s", *(["    log global", "    option tcplog"] if threaded else []),
        "frontend outbound", f"    bind 127.0.0.1:{OUTBOUND_PORT}",
        "    default_backend outbound_dst",
        "backend outbound_dst", "    server s 0.0.0.0:0",
        "frontend inbound", f"    bind 0.0.0.0:{INBOUND_PORT}", "    default_backend inbound_dst",
        "backend inbound_dst", "    server s 0.0.0.0:0 source 127.0.0.6", ""])


def istio_iptables_rules(first_output_rules=()):
    """istio-iptables' IPv4 nat rules for the defaults (capture all, 15008/15020/15021/15090
    excluded inbound): see /work/shared/DESIGN.md and tests/integration/harness/iptables.py.
    first_output_rules go at the head of ISTIO_OUTPUT (the one-pod topology's)."""
    lines = ["*nat", ":ISTIO_INBOUND - [0:0]", ":ISTIO_IN_REDIRECT - [0:0]",
             ":ISTIO_OUTPUT - [0:0]", ":ISTIO_REDIRECT - [0:0]",
             "-A PREROUTING -p tcp -j ISTIO_INBOUND", "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
             *first_output_rules]
    for port in (15008, 15020, 15021, 15090):
        lines.append(f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN")
    lines += ["-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
              f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_PORT}",
              "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"]
    for match in (f"--uid-owner {PROXY_UID}", f"--gid-owner {PROXY_GID}"):
        neg = match.replace("--", "! --", 1)
        lines += [f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner {match} "
                  "-j ISTIO_IN_REDIRECT",
                  f"-A ISTIO_OUTPUT -o lo -m owner {neg} -j RETURN",
                  f"-A ISTIO_OUTPUT -m owner {match} -j RETURN"]
    lines += ["-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
              f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}", "COMMIT", ""]
    return "\n".join(lines)


class Pair:
    """Client pod A and server pod B for one configuration. `kind` is what the configuration
    captures with (a CONFIGS name); `target` the address the client connects to."""
    pods = "ab"
    server_pod = "b"

    def __init__(self, bench, config, index, kind=None):
        self.bench, self.config, self.kind = bench, config, kind or config
        self.ns = {pod: bench.netns_name(config, pod) for pod in self.pods}
        self.ip = {"a": f"10.231.{index}.1", "b": f"10.231.{index}.2"}
        self.target = self.ip["b"]
        self.cg = {pod: os.path.join(bench.cgroup_root, config, pod) for pod in self.pods}
        self.sidecars = {}
        self.agent = "agent-noobs" if config == NOOBS_CONFIG else "agent"

    def workload_name(self, pod):
        return f"mlb-{self.bench.id}-{self.config.replace('_', '-')}-{pod}"

    def cgroup(self, pod, child):
        return os.path.join(self.cg[pod], child)

    def create(self):
        self.create_pods()
        run(["ip", "link", "add", "eth0", "netns", self.ns["a"], "type", "veth", "peer", "name",
             "eth0", "netns", self.ns["b"]])
        for pod in "ab":
            run(["ip", "-n", self.ns[pod], "addr", "add", f"{self.ip[pod]}/24", "dev", "eth0"])
            run(["ip", "-n", self.ns[pod], "link", "set", "eth0", "up"])

    def create_pods(self):
        for pod in self.pods:
            for child in ("app", "sidecar"):
                os.makedirs(self.cgroup(pod, child))
            run(["ip", "netns", "add", self.ns[pod]])
            run(["ip", "-n", self.ns[pod], "link", "set", "lo", "up"])
            # Thousands of connections per second: a wide port range and TIME_WAIT reuse for
            # connect(), inside the pod netns only.
            for key, value in (("net.ipv4.ip_local_port_range", "1024 65000"),
                               ("net.ipv4.tcp_tw_reuse", "1")):
                run(["ip", "netns", "exec", self.ns[pod], "sysctl", "-qw", f"{key}={value}"])

    def apply_iptables(self, rules=None):
        for pod in self.pods:
            p = subprocess.run(["ip", "netns", "exec", self.ns[pod], "iptables-restore",
                                "--noflush"], input=rules or istio_iptables_rules(),
                               capture_output=True,
                               text=True, timeout=30)
            if p.returncode != 0:
                raise RuntimeError(f"iptables-restore in {self.ns[pod]}: {p.stderr}")

    def enroll(self):
        for pod in self.pods:
            args = ["enroll", self.workload_name(pod), "--cgroup", self.cg[pod], "--netns",
                    f"/var/run/netns/{self.ns[pod]}"]
            self.bench.cli(*args, *FAST_PATH_FLAGS.get(self.kind, []), agent=self.agent)

    def start_sidecars(self):
        for pod in self.pods:
            cfg = os.path.join(self.bench.workdir, f"haproxy-{self.config}-{pod}.cfg")
            with open(cfg, "w") as f:
                f.write(haproxy_config())
            os.chmod(cfg, 0o644)
            self.sidecars[pod] = self.bench.spawn(
                ["/usr/sbin/haproxy", "-db", "-f", cfg], f"haproxy-{self.config}-{pod}",
                netns=self.ns[pod], cgroup=self.cgroup(pod, "sidecar"), uid=PROXY_UID,
                gid=PROXY_GID)
            self.wait_listening(pod, (OUTBOUND_PORT, INBOUND_PORT), self.sidecars[pod])

    def start_servers(self):
        b = self.server_pod
        app = self.cgroup(b, "app")
        servers = [
            (["iperf3", "-s", "-p", str(IPERF_PORT)], "iperf3"),
            (["sockperf", "sr", "--tcp", "-i", "0.0.0.0", "-p", str(SOCKPERF_PORT)], "sockperf"),
            ([self.bench.crr_bin, "server", "--listen", f"0.0.0.0:{CRR_PORT}", "--threads", "16"],
             "crr"),
        ]
        for args, name in servers:
            p = self.bench.spawn(args, f"{name}-{self.config}", netns=self.ns[b], cgroup=app,
                                 uid=APP_UID, gid=APP_GID)
            self.wait_listening(b, ({"iperf3": IPERF_PORT, "sockperf": SOCKPERF_PORT,
                                     "crr": CRR_PORT}[name],), p)

    def wait_listening(self, pod, ports, process, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.bench_name} exited {process.returncode}: "
                                   f"{read_tail(self.bench.workdir, process.bench_name + '.log')}")
            if listening_ports(process.pid) >= set(ports):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{process.bench_name} not listening on {ports} in {self.ns[pod]}")

    def client(self, args, timeout):
        return self.bench.run_in(args, self.ns["a"], self.cgroup("a", "app"), timeout=timeout)

    def evidence(self):
        """Proof that the configuration really captured the traffic, kept with the results."""
        if self.kind == "iptables":
            out = {}
            for pod in self.pods:
                text = run(["ip", "netns", "exec", self.ns[pod], "iptables", "-t", "nat", "-L",
                            "-v", "-n", "-x"]).stdout
                out[pod] = {chain: int(m.group(1)) for chain, m in (
                    (c, re.search(rf"\n\s*(\d+)\s+\d+\s+REDIRECT.*\n?", section))
                    for c, section in split_chains(text)) if m}
            return {"nat_redirect_packets": out}
        if self.kind.startswith("meshlane"):
            out = {}
            for pod in self.pods:
                name = self.workload_name(pod)
                p = self.bench.cli("workload", name, "--json", check=False, agent=self.agent)
                try:
                    out[pod] = json.loads(p.stdout)
                except ValueError:
                    out[pod] = p.stdout.strip() or p.stderr.strip()
            return {"workloads": out}
        return {}


    def __init__(self, bench, config, index, kind):
        super().__init__(bench, config, index, kind)
        self.target = f"10.233.{index}.9"

    def create(self):
        self.create_pods()
        ns = self.ns["a"]
        # The pod's interface: a veth whose peer stays in the netns (no dummy module here).
        run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
        run(["ip", "-n", ns, "addr", "add", f"{self.ip['a']}/24", "dev", "eth0"])
        for dev in ("eth0", "eth0p"):
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", ns, "route", "add", "local", f"{self.target}/32", "dev", "lo", "src",
             self.ip["a"], "table", "local"])

    def apply_iptables(self, rules=None):
        super().apply_iptables(rules or istio_iptables_rules((
            f"-A ISTIO_OUTPUT -d {self.target}/32 -m owner ! --uid-owner {PROXY_UID} "
            "-j ISTIO_REDIRECT", f"-A ISTIO_OUTPUT -d {self.target}/32 -j RETURN")))


def split_chains(text):
    chains = re.split(r"\nChain ", "\n" + text)
    for section in chains[1:]:
        yield section.split()[0], section


def listening_ports(pid):
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
            pass
    return found


# ---------------------------------------------------------------------------------------------
# Metrics. Each returns a dict of numbers; "cpu_*" fields are CpuMeter's pods+ksoftirqd CPU per
# transaction, "machine_cpu_*" the whole-machine /proc/stat equivalent.


def machine_busy_seconds():
    """All CPUs from /proc/stat: user+nice+system+irq+softirq (not idle, iowait, steal)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def ksoftirqd_pids():
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


KSOFTIRQD = []


class CpuMeter:
    """CPU spent for one load run. Primary: the configuration's own cgroup tree (client, both
    sidecars, servers; cpu.stat usage_usec, scheduler-exact, including softirq work done inline
    in those tasks, as this kernel has no IRQ time accounting) plus the ksoftirqd threads (the
    softirq work deferred out of them). Secondary: the whole machine from /proc/stat, which
    also counts any other load on the VM (a compiler next door shows up here)."""

    def __init__(self, pair):
        self.cgroup_stat = os.path.join(pair.bench.cgroup_root, pair.config, "cpu.stat")

    def _read(self):
        with open(self.cgroup_stat) as f:
            usage = int(next(line for line in f if line.startswith("usage_usec")).split()[1])
        soft = 0
        for pid in KSOFTIRQD:
            try:
                with open(f"/proc/{pid}/schedstat") as f:
                    soft += int(f.read().split()[0])
            except OSError:
                pass
        return usage / 1e6 + soft / 1e9, machine_busy_seconds()

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        self.pods, self.machine = end[0] - self.start[0], end[1] - self.start[1]
        return False

    def per(self, n, scale=1e6):
        """(pods+ksoftirqd, machine) CPU per unit, in scale units (µs by default)."""
        if not n:
            return None, None
        return self.pods * scale / n, self.machine * scale / n


# Fast-path counters kept per bulk sample (deltas over the sample, both pods summed); the last
# one exists only once the spill is temporary (tolerated when absent).
FAST_PATH_BULK_COUNTERS = ("redirected_bytes", "passed_bytes", "conns_accelerated",
                           "proxy_proxy_redirected_bytes", "proxy_app_redirected_bytes",
                           "spilled_to_tcp", "returned_to_fast_path")


def fast_path_counters(pair):
    """The fast-path counters of the pair's workloads, summed over its pods (a connection is
    counted on its connecting end's workload); None when the configuration has no fast path."""
    if pair.kind not in FAST_PATH_FLAGS:
        return None
    total = {}
    for pod in pair.pods:
        p = pair.bench.cli("workload", pair.workload_name(pod), "--json", check=False,
                           agent=pair.agent)
        try:
            counters = json.loads(p.stdout).get("fast_path", {}).get("counters", {})
        except (ValueError, AttributeError):
            raise MetricError(f"`meshlane workload {pair.workload_name(pod)} --json`: "
                              f"{p.stdout.strip()[:200]} {p.stderr.strip()[:200]}")
        for key, value in counters.items():
            if isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    return total


def measure_iperf(pair, seconds, rate_bps=None):
    """One iperf3 stream, receiver-side Gbit/s. rate_bps: paced (`-b`, iperf3's own pacing of
    its writes), else flat out. With a fast path, the counters' deltas over the run: bytes
    redirected per delivered byte (1 per accelerated hop), passed on TCP, spills."""
    before = fast_path_counters(pair)
    pace = ["-b", str(int(rate_bps))] if rate_bps else []
    with CpuMeter(pair) as cpu:
        p = pair.client(["iperf3", "-c", pair.target, "-p", str(IPERF_PORT), "-t",
                         str(seconds), *pace, "-J"], timeout=seconds + 20)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        raise MetricError(f"iperf3 failed: exit {p.returncode}, no JSON: "
                          f"{p.stdout[-300:]!r} {p.stderr[-300:]!r}")
    if data.get("error"):  # iperf3 -J reports a failed stream here, with exit status 0 or 1
        raise MetricError(f"iperf3 failed: {data['error']}")
    try:
        received = data["end"]["sum_received"]
    except KeyError:
        raise MetricError(f"iperf3 failed: exit {p.returncode}, no end.sum_received")
    pods, machine = cpu.per(received["bytes"] / 1e9, scale=1e3)
    result = {"gbit_s": received["bits_per_second"] / 1e9, "cpu_ms_per_gb": pods,
              "machine_cpu_ms_per_gb": machine}
    if before is not None:
        after = fast_path_counters(pair)
        delta = {k: after[k] - before.get(k, 0) for k in FAST_PATH_BULK_COUNTERS if k in after}
        result["fast_path"] = delta  # not a number: medians() leaves it to the JSON
        result["redirected_per_delivered_byte"] = (
            delta.get("redirected_bytes", 0) / received["bytes"] if received["bytes"] else None)
        result["spilled"] = delta.get("spilled_to_tcp", 0)
    return result


SOCKPERF_PCT = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
SOCKPERF_TOTAL = re.compile(r"Total\s+(\d+)\s+observations")


def measure_sockperf(pair, seconds, size):
    with CpuMeter(pair) as cpu:
        p = pair.client(["sockperf", "pp", "--tcp", "-i", pair.target, "-p",
                         str(SOCKPERF_PORT), "-m", str(size), "-t", str(seconds), "--full-rtt"],
                        timeout=seconds + 20)
    text = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout + p.stderr)
    pct = {float(k): float(v) for k, v in SOCKPERF_PCT.findall(text)}
    total = SOCKPERF_TOTAL.search(text)
    if p.returncode != 0 or 50.0 not in pct or not total:
        raise MetricError(f"sockperf -m {size} failed: exit {p.returncode} {text[-600:]}")
    n = int(total.group(1))
    pods, machine = cpu.per(n)
    return {"p50_us": pct[50.0], "p99_us": pct[99.0], "rtt_per_s": n / seconds,
            "cpu_us_per_txn": pods, "machine_cpu_us_per_txn": machine}


def measure_crr(pair, seconds, threads):
    with CpuMeter(pair) as cpu:
        p = pair.client([pair.bench.crr_bin, "client", "--connect", f"{pair.target}:{CRR_PORT}",
                         "--threads", str(threads), "--seconds", str(seconds), "--request",
                         "64", "--response", "64", "--timeout-ms", "2000"],
                        timeout=seconds + 30)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        raise MetricError(f"meshlane_crr failed: exit {p.returncode} {p.stderr[-500:]}")
    pods, machine = cpu.per(data["transactions"])
    result = {"conn_per_s": data["rate"], "p50_us": data["p50_us"], "p99_us": data["p99_us"],
              "errors": data["errors"], "cpu_us_per_txn": pods,
              "machine_cpu_us_per_txn": machine}
    if data["errors"]:
        result["error_kinds"] = data["error_kinds"]
    return result


class MetricError(RuntimeError):
    pass


def paced_held(result, target_gbit_s):
    """A paced rate is held when the receiver got >= 95% of it and, with a fast path, no
    direction spilled to TCP and TCP carried under 1% of the bytes the fast path carried."""
    if result["gbit_s"] < PACED_HELD_FRACTION * target_gbit_s:
        return False
    fast = result.get("fast_path")
    if fast is None:
        return True
    return not fast.get("spilled_to_tcp") and \
        fast.get("passed_bytes", 0) <= 0.01 * fast.get("redirected_bytes", 0)


def measure_paced(pairs, columns, base_gbit_s, rates, seconds, failures):
    """One pass of paced iperf3 runs, rates ascending, as multiples of base_gbit_s (iptables'
    unpaced median of this run); the column order rotates per rate."""
    out = {c: [] for c in columns}
    for i, rate_x in enumerate(rates):
        target = rate_x * base_gbit_s
        for c in columns[i % len(columns):] + columns[:i % len(columns)]:
            try:
                result = measure_iperf(pairs[c], seconds, target * 1e9)
            except (MetricError, subprocess.TimeoutExpired) as e:
                failures.append({"round": "paced", "config": c, "metric": f"paced_{rate_x:g}x",
                                 "error": str(e)[-800:]})
                log(f"  {c} paced {rate_x:g}x: FAILED {str(e)[:300]}")
                continue
            result.update(rate_x=rate_x, target_gbit_s=target,
                          held=paced_held(result, target))
            out[c].append(result)
        log(f"paced {rate_x:g}x iptables ({target:.2f} Gbit/s): " + ", ".join(
            f"{COLUMN_NAMES.get(c, c)} {r['gbit_s']:.2f}{paced_mark(r)}"
            for c in columns for r in out[c] if r["rate_x"] == rate_x))
    return out


def paced_mark(result):
    """'' when held; ' short' when under the rate; ' spill NN%' (the share of the fast path's
    bytes that still took the redirect) when a direction moved to TCP."""
    fast = result.get("fast_path", {})
    if fast.get("spilled_to_tcp"):
        total = fast.get("redirected_bytes", 0) + fast.get("passed_bytes", 0)
        return f" spill {fast.get('redirected_bytes', 0) / total:.0%}" if total else " spill"
    return "" if result["held"] else " short"


def highest_held(results):
    """The highest paced rate held with every lower rate held too (one pass: a noisy failure
    ends the climb rather than being skipped over); a string for the table."""
    best = None
    for r in sorted(results, key=lambda r: r["rate_x"]):
        if not r["held"]:
            break
        best = r["rate_x"]
    if best is None:
        return f"<{min(r['rate_x'] for r in results):.2f}x" if results else None
    return f"{best:.2f}x"


# ---------------------------------------------------------------------------------------------
# Report

ROWS = [  # (metric, field, label, better)
    ("iperf", "gbit_s", "bulk throughput, iperf3 1 stream (Gbit/s)", "higher"),
    ("iperf", "cpu_ms_per_gb", "  CPU per GB moved (CPU-ms/GB)", "lower"),
    ("paced", "held_x", "  highest paced rate held, fast path without spill (x iptables)",
     "higher"),
]
for _size, _label in zip(RR_SIZES, ("14 B", "1 KiB", "64 KiB")):
    ROWS += [(f"rr_{_size}", "p50_us", f"req/resp {_label} RTT p50 (µs)", "lower"),
             (f"rr_{_size}", "p99_us", f"req/resp {_label} RTT p99 (µs)", "lower"),
             (f"rr_{_size}", "cpu_us_per_txn", f"  CPU per round trip {_label} (CPU-µs)",
              "lower")]
ROWS += [("crr", "conn_per_s", "new connections/s (connect+64 B req/resp+close)", "higher"),
         ("crr", "p50_us", "  connection transaction p50 (µs)", "lower"),
         ("crr", "p99_us", "  connection transaction p99 (µs)", "lower"),
         ("crr", "cpu_us_per_txn", "  CPU per connection (CPU-µs)", "lower"),
         ("crr", "errors", "  failed connections (sum over rounds)", "lower")]


def medians(samples):
    """samples[config][metric] = [dict per round] -> med[config][metric][field]."""
    out = {}
    for config, metrics in samples.items():
        out[config] = {}
        for metric, rounds in metrics.items():
            fields = {}
            for r in rounds:
                for k, v in r.items():
                    if isinstance(v, (int, float)) and v is not None:
                        fields.setdefault(k, []).append(v)
            out[config][metric] = {k: (sum(v) if k == "errors" else statistics.median(v))
                                   for k, v in fields.items()}
    return out


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def build_table(med, configs_run):
    """One column per configuration that ran, then value / iptables for every other one."""
    columns = [c for c in list(CONFIGS) if c in configs_run]
    name = lambda c: COLUMN_NAMES.get(c, c)  # noqa: E731
    versus = [c for c in columns if c != "iptables"] if "iptables" in columns else []
    header = ["metric (median)"] + [name(c) for c in columns] + \
        [f"{name(c)} / iptables" for c in versus]
    rows = []
    for metric, field, label, better in ROWS:
        vals = {c: med.get(c, {}).get(metric, {}).get(field) for c in columns}
        base = vals.get("iptables")

        def ratio(c):
            v = vals[c]
            if field in ("errors", "held_x"):
                return ""
            return f"{v / base:.2f}x" if v is not None and base else "n/a"
        rows.append([label] + [fmt(vals[c]) for c in columns] + [ratio(c) for c in versus])
    return header, rows


TOPOLOGIES = (("two pods: app -> A's proxy -> veth -> B's proxy -> server", ""),
              ("one pod: app -> its proxy -> server, loopback", ONE_POD_PREFIX))


def build_topology_table(med, configs, one_pod):
    """Bulk per topology side by side: the ceiling (direct) and each capture, as ratios to the
    iptables of the same topology, and how many hops the fast path carried."""
    kinds = [k for k in ("direct", "iptables", "meshlane", "meshlane_fast", "meshlane_fast_pp")
             if k in configs]
    name = lambda k: COLUMN_NAMES.get(k, k)  # noqa: E731
    fast_kinds = [k for k in kinds if k in FAST_PATH_FLAGS]
    header = ["topology"] + [f"{name(k)} Gbit/s" for k in kinds] + \
        [f"{name(k)} / ipt" for k in kinds if k != "iptables"] + \
        [f"{name(k)}: hops redirected" for k in fast_kinds]
    rows = []
    for label, prefix in TOPOLOGIES:
        if prefix and not one_pod:
            continue
        get = lambda k, f="gbit_s": med.get(prefix + k, {}).get("iperf", {}).get(f)  # noqa
        base = get("iptables")
        rows.append([label] + [fmt(get(k)) for k in kinds] +
                    [f"{get(k) / base:.2f}x" if get(k) and base else "n/a"
                     for k in kinds if k != "iptables"] +
                    [fmt(get(k, "redirected_per_delivered_byte")) for k in fast_kinds])
    return header, rows


def build_paced_table(paced):
    columns = list(paced)
    header = ["rate (x iptables = Gbit/s)"] + [COLUMN_NAMES.get(c, c) for c in columns]
    rates = sorted({r["rate_x"]: r["target_gbit_s"] for c in columns for r in paced[c]}.items())
    rows = []
    for rate_x, target in rates:
        cells = []
        for c in columns:
            r = next((r for r in paced[c] if r["rate_x"] == rate_x), None)
            cells.append(f"{fmt(r['gbit_s'])}{paced_mark(r)}" if r else "failed")
        rows.append([f"{rate_x:.2f}x = {target:.2f}"] + cells)
    rows.append(["highest held"] + [highest_held(paced[c]) or "n/a" for c in columns])
    return header, rows


def render_text(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "-" * (sum(widths) + 2 * len(widths))] + [line(r) for r in rows])


def render_markdown(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def background_busy_percent(seconds=1.0):
    """How busy the machine is while we do nothing: other tenants' load skews everything."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) * 100 / seconds / os.cpu_count()


def fast_path_supported(meshlane_bin, config):
    """Whether this binary's `enroll --help` offers what the configuration needs."""
    p = run([meshlane_bin, "enroll", "--help"], check=False)
    text = p.stdout + p.stderr
    return "--fast-path" in text and (config != "meshlane_fast_pp" or "proxy-proxy" in text)


def git_rev():
    p = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False)
    rev = p.stdout.strip() or "unknown"
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                check=False).stdout.strip()
    return rev, bool(dirty)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 4 minutes instead of 11")
    ap.add_argument("--rounds", type=int, help="rounds (default 5, quick 2)")
    ap.add_argument("--seconds", type=float, help="seconds per load run (default 2, quick 1)")
    ap.add_argument("--crr-threads", type=int, default=4, help="concurrent CRR clients")
    ap.add_argument("--metrics", default=None,
                    help="comma-separated subset of iperf,rr_14,rr_1024,rr_65506,crr "
                         "(default all; e.g. for a perf profile of one load)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--meshlane-bin", default=os.environ.get("MESHLANE_BIN",
                                                             f"{REPO}/build/meshlane"))
    ap.add_argument("--crr-bin", default=f"{REPO}/build-bench/bench/meshlane_crr")
    ap.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"))
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--paced-rates", default=",".join(f"{x:g}" for x in PACED_RATES),
                    help="paced bulk: multiples of iptables' unpaced median ('' skips it)")
    ap.add_argument("--one-pod", default=",".join(ONE_POD_CONFIGS),
                    help="columns of the one-pod bulk topology, among "
                         f"{','.join(ONE_POD_CONFIGS)} and --configs ('' skips it)")
    ap.add_argument("--haproxy", choices=HAPROXY_PROFILES, default="single",
                    help="sidecar settings: single (1 thread, no logging) or threaded-log "
                         "(nbthread = cores, a log line per connection)")
    ap.add_argument("--cleanup-only", action="store_true",
                    help="remove what run --run-id left behind, then exit")
    args = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit("bench: needs root (netns, cgroups, BPF, iptables)")
    run_id = args.run_id or secrets.token_hex(3)
    if args.cleanup_only:
        cleanup(run_id)
        return 0
    global HAPROXY_PROFILE
    HAPROXY_PROFILE = args.haproxy
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    iperf_seconds = max(1, int(round(seconds)))
    for binary in (args.meshlane_bin, args.crr_bin):
        if not os.access(binary, os.X_OK):
            sys.exit(f"bench: {binary} not found (build it first; bench/run.sh does)")

    wanted = [c for c in args.configs.split(",") if c]
    unknown = [c for c in wanted if c not in CONFIGS]
    if unknown:
        sys.exit(f"bench: unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    fast = {c: fast_path_supported(args.meshlane_bin, c) for c in FAST_PATH_FLAGS}
    configs = [c for c in wanted if fast.get(c, True)]
    for c in wanted:
        if not fast.get(c, True):
            log(f"`meshlane enroll --help` lacks {FAST_PATH_FLAGS[c]}: column {c} left out")
    try:
        paced_rates = sorted(float(x) for x in args.paced_rates.split(",") if x)
    except ValueError:
        sys.exit(f"bench: --paced-rates {args.paced_rates!r}: comma-separated numbers expected")
    if any(x <= 0 for x in paced_rates):
        sys.exit(f"bench: --paced-rates {args.paced_rates!r}: rates must be > 0")
    one_pod_kinds = [k for k in args.one_pod.split(",") if k]
    if set(one_pod_kinds) - set(ONE_POD_CONFIGS):
        sys.exit(f"bench: --one-pod {sorted(set(one_pod_kinds) - set(ONE_POD_CONFIGS))}: "
                 f"known: {', '.join(ONE_POD_CONFIGS)}")
    bulk_wanted = not args.metrics or "iperf" in args.metrics.split(",")
    one_pod = {ONE_POD_PREFIX + k: k for k in one_pod_kinds if k in configs and bulk_wanted}
    paced_columns = [c for c in PACED_CONFIGS if c in configs] \
        if bulk_wanted and paced_rates and "iptables" in configs else []

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    KSOFTIRQD.extend(ksoftirqd_pids())
    loadavg_before = open("/proc/loadavg").read().split()[:3]
    background_before = background_busy_percent()
    if background_before > 10:
        log(f"warning: the machine is already {background_before:.0f}% busy without us: "
            "expect noisy numbers")
    bench = Run(run_id, args.meshlane_bin, args.crr_bin)
    rev, dirty = git_rev()
    started = datetime.datetime.now()
    all_configs = configs + list(one_pod)
    samples = {c: {} for c in all_configs}
    paced = {}
    failures = []
    evidence = {}
    try:
        log(f"run {run_id}: configs {all_configs}, {rounds} rounds, {seconds:g} s per load; "
            f"paced bulk {paced_rates if paced_columns else 'off'}")
        bench.create()
        pairs = {c: Pair(bench, c, i + 1) for i, c in enumerate(configs)}
        pairs.update({c: OnePod(bench, c, i + 1, kind) for i, (c, kind) in
                      enumerate(one_pod.items())})
        if any(p.kind.startswith("meshlane") and p.kind != NOOBS_CONFIG for p in pairs.values()):
            bench.start_agent()
        if NOOBS_CONFIG in configs:
            bench.start_agent("agent-noobs", observe=False)
        for c, pair in pairs.items():
            pair.create()
            if pair.kind == "iptables":
                pair.apply_iptables()
            elif pair.kind.startswith("meshlane"):
                pair.enroll()  # before the sidecars, as Istio
            if pair.kind != "direct":
                pair.start_sidecars()
            pair.start_servers()
        # Warm-up and a smoke check per configuration (not recorded).
        for c, pair in pairs.items():
            r = measure_crr(pair, 0.3, 1)
            if r["errors"] or not r["conn_per_s"]:
                raise RuntimeError(f"{c}: smoke connection failed: {r}")

        metrics = [("iperf", lambda p: measure_iperf(p, iperf_seconds))]
        metrics += [(f"rr_{s}", lambda p, s=s: measure_sockperf(p, seconds, s)) for s in RR_SIZES]
        metrics += [("crr", lambda p: measure_crr(p, seconds, args.crr_threads))]
        if args.metrics:
            names = [m for m in args.metrics.split(",") if m]
            known = [m for m, _ in metrics]
            if set(names) - set(known):
                raise SystemExit(f"bench: unknown metric(s) {sorted(set(names) - set(known))}; "
                                 f"known: {', '.join(known)}")
            metrics = [(m, fn) for m, fn in metrics if m in names]
        for r in range(rounds):
            order = all_configs[r % len(all_configs):] + all_configs[:r % len(all_configs)]
            log(f"round {r + 1}/{rounds} (order {', '.join(order)})")
            for metric, fn in metrics:
                for c in order:
                    if c == NOOBS_CONFIG and metric not in NOOBS_METRICS or \
                            c in one_pod and metric != "iperf":
                        continue
                    try:
                        result = fn(pairs[c])
                    except (MetricError, subprocess.TimeoutExpired) as e:
                        failures.append({"round": r + 1, "config": c, "metric": metric,
                                         "error": str(e)[-800:]})
                        log(f"  {c} {metric}: FAILED {str(e)[:300]}")
                        continue
                    samples[c].setdefault(metric, []).append(result)
                    if result.get("errors"):
                        log(f"  {c} {metric}: {result['errors']} failed connections "
                            f"{result.get('error_kinds')}")
        base = [x["gbit_s"] for x in samples.get("iptables", {}).get("iperf", [])]
        if paced_columns and base:
            paced = measure_paced(pairs, paced_columns, statistics.median(base), paced_rates,
                                  iperf_seconds, failures)
        elif paced_columns:
            log("paced bulk skipped: no unpaced iptables bulk sample to scale the rates by")
        for c, pair in pairs.items():
            evidence[c] = pair.evidence()
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        cleanup(run_id, bench)
        return 130
    except Exception:
        if os.path.isdir(bench.workdir):
            log("agent log tail:\n" + read_tail(bench.workdir, "agent.log"))
        cleanup(run_id, bench)
        raise
    cleanup(run_id, bench)
    background_after = background_busy_percent()

    med = medians(samples)
    for c, results in paced.items():
        med[c]["paced"] = {"held_x": highest_held(results)}
    header, rows = build_table(med, configs)
    extra_tables = []  # (title, header, rows)
    if one_pod:
        extra_tables.append(("Bulk ceiling by topology (iperf3, 1 stream, median Gbit/s; "
                             "ratios to iptables of the same topology)",
                             *build_topology_table(med, configs, one_pod)))
    if paced:
        extra_tables.append((f"Paced bulk (iperf3 -b, 1 stream, {iperf_seconds} s per rate, "
                             "one pass): receiver Gbit/s; 'spill NN%' = a direction moved to "
                             "TCP, NN% of the bytes still redirected; "
                             f"'short' = under {PACED_HELD_FRACTION:.0%} of the rate",
                             *build_paced_table(paced)))
    kernel = os.uname().release
    rev_text = rev + ("-dirty" if dirty else "")
    loadavg_after = open("/proc/loadavg").read().split()[:3]
    title = (f"meshlane bench {started:%Y-%m-%d %H:%M} rev {rev_text} kernel {kernel}, "
             f"{os.cpu_count()} CPUs, {rounds} rounds x {seconds:g} s, HAProxy {HAPROXY_PROFILE}"
             f"{' (quick)' if args.quick else ''}, load average {' '.join(loadavg_before)} "
             f"before, {' '.join(loadavg_after)} after")
    notes = [f"sockperf ping-pong --full-rtt, message sizes {RR_SIZES} (sockperf's TCP min/max "
             "stand for 1 B and 64 KiB)",
             f"CRR: meshlane_crr, {args.crr_threads} concurrent clients, 64 B each way, server "
             "closes first",
             "CPU = CPU time of this configuration's cgroups (client, sidecars, servers) + "
             "ksoftirqd, per transaction; the whole-machine /proc/stat figure (incl. softirq, "
             "and any other load) is in the JSON as machine_cpu_*",
             f"machine busy before the run: {background_before:.0f}% of all CPUs, after: "
             f"{background_after:.0f}% (load not ours; >10% means noisy numbers)",
             "ratios: value / iptables value (for throughput >1 is better, for latency and CPU "
             "<1 is better)"]
    notes.append("fast: `enroll --fast-path` on both pods (sk_msg between each app and "
                 "its own proxy); fast+pp: `--fast-path=app-proxy,proxy-proxy` "
                 "(also A's proxy <-> B's proxy across the veth); docs/fastpath.md")
    if NOOBS_CONFIG in configs:
        notes.append(f"obs off: meshlane under a second agent with `observe = false` (no "
                     f"connect/drop tracepoints, TLS wire or libssl observers of its own; the "
                     f"first agent's tracepoints still see every socket on the box and exit at "
                     f"the netns lookup, as they do for direct and iptables); measured for "
                     f"{', '.join(NOOBS_METRICS)} only")
    for c in FAST_PATH_FLAGS:
        if c in wanted and not fast[c]:
            notes.append(f"{c}: left out (the binary's `enroll --help` lacks "
                         f"{FAST_PATH_FLAGS[c]})")
    if one_pod:
        notes.append("one pod: the issue's topology, app -> its own sidecar (outbound capture) "
                     "-> a server in the same netns at a local (AnyIP) address, loopback only; "
                     "iptables = Istio's rules + 2 at the head of ISTIO_OUTPUT capturing the "
                     "app's connect to it (Istio never captures app -> own pod over lo); "
                     "'hops redirected' = fast-path redirected bytes per delivered byte "
                     "(1 per accelerated hop)")
    if paced:
        notes.append("paced: iperf3 -b at multiples of iptables' unpaced median of this run; "
                     f"'held' = receiver got >= {PACED_HELD_FRACTION:.0%} of the rate and, with "
                     "a fast path, no direction spilled to TCP (spilled_to_tcp unchanged) and "
                     "TCP carried < 1% of the redirected bytes; the row shows the highest rate "
                     "held with every lower rate held too; per rate in the JSON 'paced_bulk'")
    text = render_text(header, rows)
    print(title)
    print(text)
    for table_title, table_header, table_rows in extra_tables:
        print(f"\n{table_title}\n{render_text(table_header, table_rows)}")
    for n in notes:
        print(f"  - {n}")
    if failures:
        print(f"  - {len(failures)} measurement(s) failed: see JSON 'failures'")

    os.makedirs(args.results_dir, exist_ok=True)
    stem = os.path.join(args.results_dir,
                        f"{started:%Y%m%d-%H%M%S}-{rev_text}{'-quick' if args.quick else ''}")
    with open(stem + ".md", "w") as f:
        f.write(f"# {title}\n\n{render_markdown(header, rows)}\n\n")
        for table_title, table_header, table_rows in extra_tables:
            f.write(f"{table_title}:\n\n{render_markdown(table_header, table_rows)}\n\n")
        f.write("\n".join(f"- {n}" for n in notes) + "\n")
        if failures:
            f.write(f"\n## Failed measurements\n\n" + "\n".join(
                f"- round {x['round']} {x['config']} {x['metric']}: `{x['error'][:300]}`"
                for x in failures) + "\n")
    with open(stem + ".json", "w") as f:
        json.dump({"title": title, "revision": rev_text, "kernel": kernel,
                   "cpus": os.cpu_count(), "date": started.isoformat(timespec="seconds"),
                   "rounds": rounds, "seconds": seconds, "quick": args.quick, "haproxy": HAPROXY_PROFILE,
                   "configs": configs, "one_pod_configs": one_pod, "fast_path_supported": fast,
                   "paced_rates": paced_rates, "paced_bulk": paced,
                   "background_busy_percent": [background_before, background_after],
                   "loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
                   "medians": med,
                   "samples": samples, "failures": failures, "capture_evidence": evidence,
                   "notes": notes}, f, indent=1)
    print(f"results: {stem}.md {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
