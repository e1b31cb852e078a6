#include "agent/common/in_netns.h"

#include <fcntl.h>
#include <sched.h>

#include <thread>

#include "agent/common/unique_fd.h"

namespace meshlane {

Status in_netns(int netns_fd, const std::function<void()>& fn) {
    Status result;
    std::thread helper([&] {
        if (::setns(netns_fd, CLONE_NEWNET) != 0) {
            result = Error::last_errno("enter network namespace");
            return;
        }
        fn();
    });
    helper.join();
    return result;
}

Status in_netns(const std::string& netns_path, const std::function<void()>& fn) {
    UniqueFd ns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns.valid()) return Error::last_errno("open " + netns_path);
    auto joined = in_netns(ns.get(), fn);
    if (!joined) return joined.error().with_context(netns_path);
    return joined;
}

}  // namespace meshlane
