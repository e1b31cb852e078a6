"""A minimal CNI runtime for the tests: runs a .conflist the way libcni does (each plugin gets the
list's cniVersion and name, its declared capability args as runtimeConfig, the previous result as
prevResult; DEL in reverse) with Debian's containernetworking-plugins and meshlane-cni, on
namespaces the test created. With cache_dir it also writes libcni's result cache after a
successful ADD (<cache_dir>/<network>-<containerID>-<ifname>, kind "cniCacheV1", the list's bytes
base64-encoded as Go encodes []byte, no netns path as in libcni before 1.2) and removes it on DEL,
which is what the agent's pod discovery reads."""
import base64
import json
import os
import subprocess

from . import cleanup

CNI_BIN_DIR = "/usr/lib/cni"


def meshlane_cni_bin():
    default = os.path.join(os.path.dirname(os.environ.get("MESHLANE_BIN") or
                                           "/work/main/build/meshlane"), "meshlane-cni")
    return os.environ.get("MESHLANE_CNI_BIN") or default


def check_plugins():
    """A message naming what is missing, or None."""
    for plugin in ("bridge", "host-local"):
        if not os.access(os.path.join(CNI_BIN_DIR, plugin), os.X_OK):
            return (f"{CNI_BIN_DIR}/{plugin} missing: apt-get install containernetworking-plugins"
                    " (scripts/install-deps.sh)")
    if not os.access(meshlane_cni_bin(), os.X_OK):
        return f"meshlane-cni not found at {meshlane_cni_bin()} (set MESHLANE_CNI_BIN)"
    return None


def cni_args(topo, pod):
    return [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "mltest"],
            ["K8S_POD_NAME", f"pod-{topo.id}-{pod.short}"],
            ["K8S_POD_UID", getattr(pod, "uid", f"u-{pod.short}")]]


def container_id(topo, pod):
    return f"ctr-{topo.id}-{pod.short}"


class CniNetwork:
    """A .conflist (bridge + host-local, then meshlane-cni unless with_meshlane is False) and a
    minimal runtime for it. range_start/range_end split one subnet between networks sharing the
    bridge."""

    def __init__(self, topo, agent_socket, fail_open=False, with_meshlane=True, name=None,
                 cache_dir=None, range_start=None, range_end=None):
        self.topo = topo
        self.bridge = f"mlbr{topo.id}"  # <= 15 characters
        self.subnet = f"10.200.{int(topo.id[:2], 16)}.0/24"
        self.name = name or f"meshlane-it-{topo.id}"
        self.cache_dir = cache_dir
        self.bin_dir = os.path.dirname(os.path.realpath(meshlane_cni_bin()))
        ip_range = {"subnet": self.subnet}
        if range_start:
            ip_range["rangeStart"] = range_start
        if range_end:
            ip_range["rangeEnd"] = range_end
        self.plugins = [
            {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[ip_range]],
                      "dataDir": os.path.join(topo.workdir, "cni-ipam")}},
        ]
        if with_meshlane:
            self.plugins.append(
                {"type": "meshlane-cni", "agentSocket": agent_socket, "failOpen": fail_open,
                 "dataDir": os.path.join(topo.workdir, "cni-meshlane"),
                 "capabilities": {"cgroupPath": True, "podAnnotations": True}})
        # The bridge plugin creates the bridge on first ADD; make sure it goes away (once).
        if not getattr(topo, "_cni_bridge_cleanup", False):
            topo._cni_bridge_cleanup = True
            cleanup_token = cleanup.REGISTRY.add(f"ip link del {self.bridge}",
                                                 lambda: cleanup.delete_link(self.bridge),
                                                 {"kind": "link", "name": self.bridge})
            topo._tokens.insert(0, cleanup_token)  # after the netns are gone (LIFO)

    def conflist_bytes(self):
        return json.dumps({"cniVersion": "1.0.0", "name": self.name,
                           "plugins": self.plugins}).encode()

    def _invoke(self, plugin, command, pod, runtime_config, prev_result=None):
        config = {"cniVersion": "1.0.0", "name": self.name, **plugin}
        capabilities = config.pop("capabilities", {})
        if capabilities:  # what libcni does with capability args
            config["runtimeConfig"] = {k: v for k, v in runtime_config.items()
                                       if capabilities.get(k)}
        if prev_result is not None:
            config["prevResult"] = prev_result
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_CONTAINERID": container_id(self.topo, pod),
               "CNI_NETNS": pod.netns_path, "CNI_IFNAME": "eth0",
               "CNI_ARGS": ";".join(f"{k}={v}" for k, v in cni_args(self.topo, pod)),
               "CNI_PATH": f"{CNI_BIN_DIR}:{self.bin_dir}"}
        binary = os.path.join(CNI_BIN_DIR if plugin["type"] != "meshlane-cni" else self.bin_dir,
                              plugin["type"])
        return subprocess.run([binary], input=json.dumps(config), capture_output=True,
                              text=True, env=env, timeout=30)

    def cache_path(self, pod):
        return os.path.join(self.cache_dir,
                            f"{self.name}-{container_id(self.topo, pod)}-eth0")

    def write_cache(self, pod, runtime_config, result):
        """libcni's cacheAdd: what a runtime records after a successful ADD of the list."""
        os.makedirs(self.cache_dir, exist_ok=True)
        entry = {"kind": "cniCacheV1", "containerId": container_id(self.topo, pod),
                 "config": base64.b64encode(self.conflist_bytes()).decode(),
                 "ifName": "eth0", "networkName": self.name,
                 "cniArgs": cni_args(self.topo, pod), "capabilityArgs": runtime_config,
                 "result": result}
        with open(self.cache_path(pod), "w") as f:
            json.dump(entry, f)

    def add(self, pod, runtime_config):
        """Runs ADD through the chain; returns (exit code of the failing plugin or 0, the last
        stdout parsed, per-plugin outputs)."""
        prev = None
        outputs = []
        for plugin in self.plugins:
            result = self._invoke(plugin, "ADD", pod, runtime_config, prev)
            outputs.append(result)
            if result.returncode != 0:
                return result.returncode, json.loads(result.stdout or "{}"), outputs
            prev = json.loads(result.stdout)
        if self.cache_dir:
            self.write_cache(pod, runtime_config, prev)
        return 0, prev, outputs

    def check(self, pod, runtime_config, prev_result):
        return [self._invoke(p, "CHECK", pod, runtime_config, prev_result) for p in self.plugins]

    def delete(self, pod, runtime_config, plugins=None):
        results = [self._invoke(p, "DEL", pod, runtime_config)
                   for p in reversed(plugins or self.plugins)]
        if self.cache_dir and os.path.exists(self.cache_path(pod)):
            os.unlink(self.cache_path(pod))
        return results


def pod_ip(result):
    return result["ips"][0]["address"].split("/")[0]


def cni_pods(topo):
    """The topology's pods without their direct veth: the bridge plugin gives them eth0."""
    topo.a.ip("link", "del", "veth-a")
    return topo.a, topo.b


def runtime_config_for(pod, annotations):
    # The cgroupPath capability names the pod cgroup from the cgroup root, as kubelet/containerd
    # do (e.g. /kubepods/burstable/pod<uid>), not by its mount path.
    return {"cgroupPath": "/" + pod.cgroup_rel, "podAnnotations": annotations}
