// Pods that existed before the agent (first start on a busy node, or lost state): found from the
// container runtime's CNI result cache and the kubepods cgroup hierarchy, and enrolled with the
// options meshlane-cni would have sent for them.
//
// libcni writes <cache>/<network>-<containerID>-<ifname> (kind "cniCacheV1") after a successful
// ADD of a network list: the list's bytes (base64), CNI_ARGS, the capability args, the result
// (pod IPs). Older libcni versions do not record the netns path, so the pod's network namespace
// is found by its IP on the cached interface, among /var/run/netns/* and /proc/*/ns/net, narrowed
// to the namespaces of the processes in the pod's cgroup when that is known. The pod cgroup is
// what meshlane-cni would have used (runtimeConfig.cgroupPath, ...), else the pod<uid> cgroup of
// K8S_POD_UID under a kubepods parent (systemd driver
// kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice, cgroupfs driver
// kubepods/<qos>/pod<uid>) found under the cgroup2 root.
//
// Only lists that chain meshlane-cni are enrolled. Each cache file is considered once per agent
// run (by name and mtime): a pod an operator unenrolled is not adopted again behind their back.
#pragma once

#include <sys/types.h>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/common/result.h"
#include "agent/model/pod_identity.h"
#include "agent/model/workload_registry.h"
#include "agent/model/workload_spec.h"

namespace meshlane {

struct DiscoveryOptions {
    std::string cni_cache_dir = "/var/lib/cni/results";
    std::string cgroup2_mount;
    std::string netns_dir = "/var/run/netns";
    std::string proc_dir = "/proc";
};

// One libcni cache file.
struct CniCacheEntry {
    std::string container_id;
    std::string ifname;
    std::string network_name;
    std::string netns;          // recorded by newer libcni only
    boost::json::value config;  // the network config (list) as the runtime ran it
    boost::json::object capability_args;
    std::vector<std::pair<std::string, std::string>> cni_args;
    std::vector<std::string> ips;  // result.ips[].address without the prefix length

    std::string cni_args_text() const;  // "K=V;K=V", as CNI_ARGS
    std::string cni_arg(std::string_view key) const;
};

// Errors name the malformed field; `kind` other than cniCacheV1 is an error too.
Result<CniCacheEntry> parse_cni_cache_entry(std::string_view text);

// "kubepods-burstable-pod1234_5678.slice" (systemd driver, '-' of the uid written '_'),
// "kubepods-pod<uid>.slice", "pod1234-5678" (cgroupfs driver) -> the pod UID; nullopt otherwise.
std::optional<std::string> pod_uid_from_cgroup_name(std::string_view name);

// Pod UID -> pod cgroup (absolute path), for every kubepods.slice / kubepods directory found
// within three levels under the cgroup2 mount.
std::map<std::string, std::string> find_kube_pod_cgroups(const std::string& cgroup2_mount);

struct DiscoveryOutcome {
    std::string source;  // the cache file name
    std::string workload;
    bool adopted = false;
    std::string reason;  // why it was skipped
};

class PodDiscovery {
  public:
    explicit PodDiscovery(DiscoveryOptions options);

    // Enrolls every pod of a cache entry not considered before; returns what happened to each.
    // Idempotent: a pod enrolled already (restored state, CNI ADD) is reported, not touched.
    std::vector<DiscoveryOutcome> run(WorkloadRegistry& registry);

  private:
    struct NetnsInfo {
        std::string path;  // /var/run/netns/NAME when there is one, else /proc/PID/ns/net
        std::vector<PodAddress> addresses;
    };
    using NetnsIndex = std::map<std::uint64_t, NetnsInfo>;  // by inode

    DiscoveryOutcome consider(const std::string& file, WorkloadRegistry& registry,
                              std::optional<NetnsIndex>& netns_index,
                              std::optional<std::map<std::string, std::string>>& pod_cgroups);
    NetnsIndex index_network_namespaces() const;
    std::vector<std::uint64_t> netns_of_cgroup(const std::string& cgroup_dir) const;

    DiscoveryOptions options_;
    std::map<std::string, std::int64_t> considered_;  // cache file -> mtime
};

}  // namespace meshlane
