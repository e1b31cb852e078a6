"""A private podman 4.3 (Debian) for the end-to-end CNI test: its own containers.conf
(CONTAINERS_CONF), storage (--root/--runroot, vfs), CNI config dir and plugin dir, so nothing
global changes. What this host needs, measured: `runtime = "runc"` (crun refuses the hybrid
cgroup layout), `default_ulimits = []` (raising rlimits is refused in this sandbox), the
"cni" network backend (the one that writes libcni's result cache, /var/lib/cni/results).

Images are built locally with buildah from scratch (no registry): busybox (Debian's
busybox-static) for apps, HAProxy with the libraries it links for the sidecar. Pods run in the
test's own bridge and subnet (10.244.<n>.0/24) and their own cgroup parent
(/mltest-pm-<id>/<pod>, what meshlane-cni's cgroupTemplate names); everything is registered
with the cleanup registry and removed at the end, also on failure."""
import json
import os
import shutil

from . import cleanup, util
from .cni import CNI_BIN_DIR, meshlane_cni_bin
from .sidecar import LogEntry, haproxy_config

BUSYBOX = "/bin/busybox"
HAPROXY = "/usr/sbin/haproxy"


def check_tools():
    """A message naming what is missing, or None."""
    for tool in ("podman", "buildah", "runc"):
        if not shutil.which(tool):
            return f"{tool} missing: scripts/install-deps.sh installs podman, buildah and runc"
    ldd = util.run(["ldd", BUSYBOX], check=False) if os.path.exists(BUSYBOX) else None
    if ldd is None or "not a dynamic executable" not in ldd.stdout + ldd.stderr:
        return f"{BUSYBOX} is not Debian's busybox-static (scripts/install-deps.sh)"
    if not os.path.exists("/usr/libexec/podman/catatonit"):
        return "catatonit missing (podman builds its pod infra image from it)"
    return None


class Podman:
    def __init__(self, workdir, agent_socket, run_id=None, fail_open=True):
        self.id = run_id or util.unique_id()
        self.dir = os.path.join(workdir, f"podman-{self.id}")
        self.conf_dir = os.path.join(self.dir, "net.d")
        self.plugin_dir = os.path.join(self.dir, "cni-bin")
        self.network = f"mltest-pm-{self.id}"
        self.bridge = f"mlpm{self.id}"  # <= 15 characters
        self.subnet = f"10.244.{int(self.id[:2], 16)}.0/24"
        self.cgroup_parent = f"/mltest-pm-{self.id}"
        self.agent_socket = agent_socket
        self.fail_open = fail_open
        self.pods = []
        self._tokens = []

    # -- setup ------------------------------------------------------------------------------------
    def setup(self):
        # LIFO: the bridge and cgroups go after every pod (pods are removed first).
        self._register(f"rm {self.dir}", lambda: self._remove_storage(), "dir", path=self.dir)
        self._register(f"ip link del {self.bridge}", lambda: cleanup.delete_link(self.bridge),
                       "link", name=self.bridge)
        self._register(f"rm cgroups {self.cgroup_parent}", self._remove_cgroups)
        for d in ("root", "rr", "tmp", "net.d", "cni-bin", "ipam", "meshlane-cni"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        with open(os.path.join(self.dir, "containers.conf"), "w") as f:
            f.write(self._containers_conf())
        for plugin in os.listdir(CNI_BIN_DIR):
            if plugin == "meshlane-cni":  # an installed one (install-and-run.sh): ours wins
                continue
            os.symlink(os.path.join(CNI_BIN_DIR, plugin), os.path.join(self.plugin_dir, plugin))
        os.symlink(os.path.realpath(meshlane_cni_bin()),
                   os.path.join(self.plugin_dir, "meshlane-cni"))
        with open(os.path.join(self.conf_dir, f"10-{self.network}.conflist"), "w") as f:
            json.dump(self.conflist(), f, indent=1)
        return self

    def _register(self, description, fn, kind=None, **record):
        record = {"kind": kind, **record} if kind else None
        self._tokens.append(cleanup.REGISTRY.add(description, fn, record))

    def _containers_conf(self):
        return "\n".join([
            "[containers]",
            "default_ulimits = []",
            'log_driver = "k8s-file"',
            "[network]",
            'network_backend = "cni"',
            f'cni_plugin_dirs = ["{self.plugin_dir}"]',
            f'network_config_dir = "{self.conf_dir}"',
            "[engine]",
            'runtime = "runc"',
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
            f'events_logfile_path = "{self.dir}/events.log"',
            f'tmp_dir = "{self.dir}/tmp"',
            "",
        ])

    def conflist(self):
        """The CNI chain [bridge, host-local, meshlane-cni]; podman passes no cgroupPath, so
        meshlane-cni finds the pod cgroup from the pod name (cgroupTemplate)."""
        return {"cniVersion": "1.0.0", "name": self.network, "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                      "dataDir": os.path.join(self.dir, "ipam")}},
            {"type": "meshlane-cni", "agentSocket": self.agent_socket,
             "failOpen": self.fail_open,
             "cgroupTemplate": self.cgroup_parent + "/{K8S_POD_NAME}",
             "dataDir": os.path.join(self.dir, "meshlane-cni")},
        ]}

    # -- commands ---------------------------------------------------------------------------------
    def env(self):
        return {**os.environ, "CONTAINERS_CONF": os.path.join(self.dir, "containers.conf")}

    def _storage(self):
        # podman refuses a runroot longer than 50 characters: keep the work dir short.
        return ["--root", os.path.join(self.dir, "root"),
                "--runroot", os.path.join(self.dir, "rr"), "--storage-driver", "vfs"]

    def podman(self, *args, check=True, timeout=120):
        cmd = ["podman", *self._storage(), "--cni-config-dir", self.conf_dir, *args]
        return util.run(cmd, check=check, timeout=timeout, env=self.env())

    def buildah(self, *args, check=True, timeout=120):
        return util.run(["buildah", *self._storage(), *args], check=check, timeout=timeout,
                        env=self.env())

    # -- images -----------------------------------------------------------------------------------
    def build_images(self):
        """localhost/mltest-app (busybox: sh, httpd, nc, sleep) and localhost/mltest-sidecar
        (HAProxy 2.6 and its libraries, the test harness's sidecar config)."""
        self._build("localhost/mltest-app:1", self._fill_busybox, ["/bin/sleep", "infinity"])
        self._build("localhost/mltest-sidecar:1", self._fill_haproxy,
                    ["/usr/sbin/haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"])

    def _build(self, tag, fill, cmd):
        container = self.buildah("from", "scratch").stdout.strip()
        try:
            mount = self.buildah("mount", container).stdout.strip()
            fill(mount)
            self.buildah("config", "--cmd", json.dumps(cmd), container)
            self.buildah("commit", "-q", container, tag)
        finally:
            self.buildah("rm", container, check=False)

    @staticmethod
    def _fill_busybox(root):
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
        for applet in ("sh", "sleep", "httpd", "nc", "printf", "cat", "ip", "echo"):
            os.symlink("busybox", os.path.join(root, "bin", applet))
        os.makedirs(os.path.join(root, "www"))
        with open(os.path.join(root, "www", "index.html"), "w") as f:
            f.write("hello from the server pod\n")

    @staticmethod
    def _fill_haproxy(root):
        files = [HAPROXY]
        for line in util.run(["ldd", HAPROXY]).stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                files.append(path)
        for path in files:
            target = os.path.join(root, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.realpath(path), target)
        os.makedirs(os.path.join(root, "etc", "haproxy"))
        with open(os.path.join(root, "etc", "haproxy", "haproxy.cfg"), "w") as f:
            f.write(haproxy_config(inbound_bind="dual"))
        os.makedirs(os.path.join(root, "tmp"))

    # -- pods -------------------------------------------------------------------------------------
    def create_pod(self, name, app_cmd=None):
        """A pod (infra container: its netns, the CNI ADD) with an app container and an HAProxy
        sidecar container as uid/gid 1337. Returns the pod's IP."""
        cgroup_parent = f"{self.cgroup_parent}/{name}"
        # On a cgroup2-only host podman creates the pod cgroup itself; on this hybrid host its
        # cgroupfs manager creates only the v1 ones, and runc the cgroup2 one at the first
        # container start, after the CNI ADD. The pod cgroup must exist at ADD: created here.
        os.makedirs(os.path.join(util.cgroup2_mount(), cgroup_parent.lstrip("/")), exist_ok=True)
        self.pods.append(name)
        self._register(f"podman pod rm {name}", lambda: self.remove_pod(name, check=False))
        self.podman("pod", "create", "--name", name, "--network", self.network,
                    "--cgroup-parent", cgroup_parent)
        self.podman("run", "-d", "--pod", name, "--name", f"{name}-app", "localhost/mltest-app:1",
                    *(app_cmd or []))
        self.podman("run", "-d", "--pod", name, "--name", f"{name}-sidecar", "--user", "1337:1337",
                    "localhost/mltest-sidecar:1")
        return self.pod_ip(name)

    def remove_pod(self, name, check=True):
        return self.podman("pod", "rm", "-f", "-t", "0", name, check=check)

    def infra_id(self, name):
        return json.loads(self.podman("pod", "inspect", name).stdout)["InfraContainerID"]

    def pod_ip(self, name):
        infra = self.infra_id(name)
        data = json.loads(self.podman("inspect", infra).stdout)[0]
        return data["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def cni_cache_path(self, name):
        return f"/var/lib/cni/results/{self.network}-{self.infra_id(name)}-eth0"

    def exec_app(self, name, *args, timeout=30):
        return self.podman("exec", f"{name}-app", *args, check=False, timeout=timeout)

    def sidecar_entries(self, name):
        logs = self.podman("logs", f"{name}-sidecar", check=False)
        return [e for e in map(LogEntry.parse, (logs.stdout + logs.stderr).splitlines())
                if e is not None]

    # -- teardown ---------------------------------------------------------------------------------
    def _remove_cgroups(self):
        mounts = [util.cgroup2_mount()] + util.cgroup_v1_mounts()
        for mount in mounts:
            cleanup.remove_cgroup_tree(os.path.join(mount, self.cgroup_parent.lstrip("/")))

    def _remove_storage(self):
        # vfs layers are plain directories; containers are gone by now (pods removed first).
        self.podman("rm", "-a", "-f", "-t", "0", check=False)
        self.podman("pod", "rm", "-a", "-f", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def destroy(self):
        while self._tokens:
            cleanup.REGISTRY.undo(self._tokens.pop())

    def leftovers(self):
        """What would outlive the test if cleanup failed: mounts under our dir, our bridge,
        our CNI cache entries."""
        found = [line.split()[1] for line in open("/proc/mounts") if self.dir in line]
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            found.append(self.bridge)
        found += [f for f in os.listdir("/var/lib/cni/results")
                  if f.startswith(self.network + "-")] if os.path.isdir(
                      "/var/lib/cni/results") else []
        return found


def cgroup_of(podman, container):
    """The container's cgroup2 path (relative to the cgroup2 root)."""
    pid = podman.podman("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None

