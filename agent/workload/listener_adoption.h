// A proxy that was already listening when its pod was enrolled never passes through the
// sockops TCP_LISTEN_CB hook, so the agent finds its listening socket itself: the processes in
// the pod's netns (/proc/PID/ns/net), their LISTEN sockets on the inbound port
// (/proc/PID/net/tcp{,6}), owned by the proxy uid or gid, duplicated here with pidfd_getfd(2).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "agent/common/result.h"
#include "agent/common/unique_fd.h"

namespace meshlane {

struct AdoptedListener {
    UniqueFd fd;
    bool ipv6 = false;
    pid_t pid = 0;
};

struct ListeningSocket {
    std::uint64_t inode = 0;
    bool ipv6 = false;
};

// Parses /proc/net/tcp or tcp6 text: LISTEN sockets on `port`.
std::vector<ListeningSocket> parse_proc_net_tcp(std::string_view text, std::uint16_t port,
                                                bool ipv6);

Result<std::vector<AdoptedListener>> adopt_listeners(std::uint64_t netns_inode, std::uint16_t port,
                                                     std::uint32_t uid, std::uint32_t gid);

}  // namespace meshlane
