// A proxy that was already listening when its pod was enrolled never passes through the
// sockops TCP_LISTEN_CB hook, so the agent finds its listening socket itself: the processes in
// the pod's netns (/proc/PID/ns/net), the netns' LISTEN sockets on the inbound port (sock_diag,
// see agent/common/tcp_listeners.h), held by a process owned by the proxy uid or gid, duplicated
// here with pidfd_getfd(2).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "agent/common/result.h"
#include "agent/common/unique_fd.h"

namespace meshlane {

struct AdoptedListener {
    UniqueFd fd;
    bool ipv6 = false;
    pid_t pid = 0;
};

Result<std::vector<AdoptedListener>> adopt_listeners(std::uint64_t netns_inode, std::uint16_t port,
                                                     std::uint32_t uid, std::uint32_t gid);

}  // namespace meshlane
