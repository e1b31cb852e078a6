// Runs a function inside another network namespace without moving the agent: setns(2) changes
// only the calling thread's namespace, so the function runs on a short-lived thread that enters
// the namespace and ends right after. Sockets created there stay bound to that namespace.
#pragma once

#include <functional>
#include <string>

#include "agent/common/result.h"

namespace meshlane {

// `netns_path`: /var/run/netns/NAME, /proc/PID/ns/net or any bind mount of a netns.
Status in_netns(const std::string& netns_path, const std::function<void()>& fn);
// `netns_fd`: an open network-namespace file descriptor (not consumed).
Status in_netns(int netns_fd, const std::function<void()>& fn);

}  // namespace meshlane
