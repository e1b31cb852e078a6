"""The sidecar proxy of a pod: HAProxy 2.6 (Debian) as uid/gid 1337, or the Envoy-like
origdst_proxy.py for IPv6 redirects (HAProxy 2.6 reads SO_ORIGINAL_DST only for AF_INET sockets).
Both log one line per connection to a per-sidecar file; SidecarLog parses and waits on it."""
import dataclasses
import os
import time

from . import proc, util

LOG_TAG = "MLCONN"
# %f frontend, %ci:%cp client, %fi:%fp the accepted socket's destination (HAProxy reports the
# SO_ORIGINAL_DST answer here for AF_INET), %si:%sp where the server connection went, %ts the
# termination state, %B bytes to the client. HAProxy logs at connection end.
HAPROXY_LOG_FORMAT = f"{LOG_TAG} %f %ci %cp %fi %fp %si %sp %ts %B"

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
PROXY_UID = 1337
PROXY_GID = 1337


def _unmap(ip):
    """::ffff:10.1.2.3 -> 10.1.2.3, so v4 over a dual-stack socket compares like v4."""
    if ip.lower().startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def _port(text):
    try:
        return int(text)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class LogEntry:
    frontend: str        # outbound | inbound (| inbound_v6 when split)
    client: tuple        # (ip, port)
    frontend_addr: tuple  # (ip, port): original destination / local address of accepted socket
    server: tuple        # (ip, port) the proxy connected to
    termination: str
    bytes_to_client: int
    raw: str

    @property
    def direction(self):
        return self.frontend.split("_")[0]

    @classmethod
    def parse(cls, line):
        fields = line.split()
        if len(fields) < 10 or fields[0] != LOG_TAG:
            return None
        return cls(frontend=fields[1], client=(_unmap(fields[2]), _port(fields[3])),
                   frontend_addr=(_unmap(fields[4]), _port(fields[5])),
                   server=(_unmap(fields[6]), _port(fields[7])), termination=fields[8],
                   bytes_to_client=_port(fields[9]) or 0, raw=line.rstrip("\n"))


class SidecarLog:
    def __init__(self, path):
        self.path = path

    def entries(self):
        try:
            with open(self.path, errors="replace") as f:
                return [e for e in map(LogEntry.parse, f) if e is not None]
        except FileNotFoundError:
            return []

    def mark(self):
        """Position to compare against later: the number of entries so far."""
        return len(self.entries())

    def since(self, mark):
        return self.entries()[mark:]

    def wait_for(self, mark, count=1, timeout=5.0):
        """Waits until at least count entries follow mark; then waits a short settle time so a
        loop (which logs many) or a duplicate shows up too. Returns the entries after mark."""
        util.wait_until(lambda: len(self.since(mark)) >= count, timeout=timeout,
                        message=f"{count} proxy log entries in {self.path}; have "
                                f"{[e.raw for e in self.since(mark)]}")
        time.sleep(0.2)
        return self.since(mark)

    def quiet_since(self, mark, grace=0.4):
        """Entries after mark once a grace period has passed (absence cannot be polled for: the
        proxy logs at connection end, right after the client's own close)."""
        time.sleep(grace)
        return self.since(mark)

    def text(self):
        try:
            with open(self.path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def haproxy_config(inbound_bind="dual", passthrough_source=False,
                   outbound_port=OUTBOUND_PORT, inbound_port=INBOUND_PORT, maxconn=256):
    """inbound_bind "dual": one `:::15006 v4v6` socket (meshlane: sk_lookup keeps the local
    address, no SO_ORIGINAL_DST needed). "split": 0.0.0.0:15006 + [::]:15006 v6only, needed with
    iptables REDIRECT because HAProxy asks SO_ORIGINAL_DST only on AF_INET sockets.
    passthrough_source: bind 127.0.0.6 for inbound forwarding like Envoy, so Istio's
    `-o lo ! -d 127.0.0.1 --uid-owner 1337 -j ISTIO_IN_REDIRECT` rule does not loop."""
    lines = [
        "global",
        f"    maxconn {maxconn}",
        "    log stdout format raw local0",
        "defaults",
        "    mode tcp",
        "    log global",
        f'    log-format "{HAPROXY_LOG_FORMAT}"',
        "    timeout connect 3s",
        "    timeout client 10s",
        "    timeout server 10s",
        "frontend outbound",
        f"    bind 127.0.0.1:{outbound_port}",
        f"    bind [::1]:{outbound_port} v6only",
        "    default_backend outbound_dst",
        "backend outbound_dst",
        "    server s 0.0.0.0:0",
    ]
    if inbound_bind == "dual":
        lines += ["frontend inbound", f"    bind :::{inbound_port} v4v6",
                  "    default_backend inbound_dst",
                  "backend inbound_dst", "    server s 0.0.0.0:0"]
    else:
        source = " source 127.0.0.6" if passthrough_source else ""
        lines += ["frontend inbound", f"    bind 0.0.0.0:{inbound_port}",
                  "    default_backend inbound_dst",
                  "backend inbound_dst", f"    server s 0.0.0.0:0{source}",
                  "frontend inbound_v6", f"    bind :::{inbound_port} v6only",
                  "    default_backend inbound_v6_dst",
                  "backend inbound_v6_dst", "    server s 0.0.0.0:0"]
        # No v6 passthrough source: HAProxy 2.6 cannot serve IPv6 REDIRECT anyway (it never asks
        # IP6T_SO_ORIGINAL_DST); the IPv6 baseline uses origdst_proxy.py.
    return "\n".join(lines) + "\n"


def pyproxy_args(inbound_bind="dual", passthrough_source=False,
                 outbound_port=OUTBOUND_PORT, inbound_port=INBOUND_PORT):
    args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "origdst_proxy.py"),
            "--listen", f"outbound=127.0.0.1:{outbound_port}",
            "--listen", f"outbound=[::1]:{outbound_port}/v6only"]
    if inbound_bind == "dual":
        args += ["--listen", f"inbound=[::]:{inbound_port}/v4v6"]
    else:
        args += ["--listen", f"inbound=0.0.0.0:{inbound_port}",
                 "--listen", f"inbound_v6=[::]:{inbound_port}/v6only"]
    if passthrough_source:
        args.append("--inbound-passthrough-source")
    return args


class Sidecar:
    """One running sidecar process of a pod, in the pod's sidecar cgroup, as uid/gid 1337."""

    def __init__(self, pod, kind="haproxy", inbound_bind="dual", passthrough_source=False,
                 uid=PROXY_UID, gid=PROXY_GID, maxconn=256, config=None):
        self.pod = pod
        self.config = config  # HAProxy only: a whole config instead of haproxy_config()
        self.maxconn = maxconn  # HAProxy only (the stress tests need > 1000)
        self.kind = kind
        self.inbound_bind = inbound_bind
        self.passthrough_source = passthrough_source
        self.uid, self.gid = uid, gid
        self.log_path = os.path.join(pod.workdir, f"sidecar-{pod.short}.log")
        self.err_path = os.path.join(pod.workdir, f"sidecar-{pod.short}.err")
        self.log = SidecarLog(self.log_path)
        self.process = None

    def start(self):
        if self.kind == "haproxy":
            cfg = os.path.join(self.pod.workdir, f"haproxy-{self.pod.short}.cfg")
            with open(cfg, "w") as f:
                f.write(self.config or haproxy_config(self.inbound_bind, self.passthrough_source,
                                                      maxconn=self.maxconn))
            os.chmod(cfg, 0o644)
            args = ["/usr/sbin/haproxy", "-db", "-f", cfg]
        else:
            args = pyproxy_args(self.inbound_bind, self.passthrough_source)
        # O_APPEND: the file is shared with the writer; truncation or rotation must never happen.
        out = open(self.log_path, "ab")
        err = open(self.err_path, "ab")
        try:
            self.process = proc.spawn(args, netns_path=self.pod.netns_path,
                                      cgroup_dir=self.pod.cgroup("sidecar"), uid=self.uid,
                                      gid=self.gid, groups=[], stdout=out, stderr=err,
                                      description=f"sidecar {self.kind} of {self.pod.name}")
        finally:
            out.close()
            err.close()
        ports = [OUTBOUND_PORT, INBOUND_PORT]
        util.wait_until(lambda: self._died() or self.pod.listening(ports, pid=self.process.pid),
                        timeout=5, message=f"sidecar of {self.pod.name} listening on {ports}")
        if self._died():
            raise RuntimeError(f"sidecar of {self.pod.name} exited "
                               f"{self.process.returncode}: {self.stderr_text()}")
        return self

    def _died(self):
        return self.process.poll() is not None

    def stop(self):
        if self.process:
            proc.stop(self.process)

    def stderr_text(self):
        try:
            with open(self.err_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""
