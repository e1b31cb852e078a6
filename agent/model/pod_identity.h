// Turns the paths an operator gives (cgroup, netns) into kernel identities, refusing anything
// that is not what it claims to be: a cgroup v2 directory, a network namespace file.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "agent/common/unique_fd.h"

namespace meshlane {

struct CgroupHandle {
    std::string path;  // canonical absolute path under the cgroup2 mount
    std::uint64_t id = 0;
    UniqueFd fd;  // O_DIRECTORY
};

struct PodAddress {
    std::array<std::uint8_t, 16> addr{};  // v4-mapped for IPv4
    bool is_v4 = false;
    std::string text;
    std::string interface;  // the device it is configured on, e.g. "eth0"
};

struct NetnsHandle {
    std::string path;
    std::uint64_t inode = 0;
    std::uint64_t cookie = 0;
    std::vector<PodAddress> addresses;  // every address configured inside, lo included
    UniqueFd fd;
};

// `given` is absolute, or relative to the cgroup2 mount.
Result<CgroupHandle> open_cgroup(const std::string& given, const std::string& cgroup2_mount);
// `path` is /var/run/netns/NAME, /proc/PID/ns/net or any bind mount of a netns.
Result<NetnsHandle> open_netns(const std::string& path);
// Node-wide targets, refused with EINVAL and the reason: the cgroup2 root, or any cgroup that
// contains the agent's own (every ancestor of it); the agent's own or init's network namespace.
Status refuse_node_wide(const CgroupHandle& cgroup, const std::string& cgroup2_mount);
Status refuse_node_wide(const NetnsHandle& netns);
// One canonical cgroup path is the other or lies under it.
bool cgroups_nested(const std::string& a, const std::string& b);
// Re-reads the addresses configured inside a network namespace.
Result<std::vector<PodAddress>> netns_addresses(int netns_fd);

}  // namespace meshlane
