#include "agent/model/pod_identity.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <utility>

#include "agent/common/in_netns.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace meshlane {

namespace {

std::string canonical(const std::string& path) {
    char resolved[PATH_MAX];
    if (::realpath(path.c_str(), resolved) == nullptr) return {};
    return resolved;
}

std::string namespace_type_name(int type) {
    switch (type) {
        case CLONE_NEWNS:
            return "mount";
        case CLONE_NEWUTS:
            return "uts";
        case CLONE_NEWIPC:
            return "ipc";
        case CLONE_NEWUSER:
            return "user";
        case CLONE_NEWPID:
            return "pid";
        case CLONE_NEWCGROUP:
            return "cgroup";
        case CLONE_NEWTIME:
            return "time";
        default:
            return "unknown";
    }
}

struct NetnsFacts {
    std::uint64_t cookie = 0;
    std::vector<PodAddress> addresses;
};

// Runs inside the target netns (agent/common/in_netns.h).
Result<NetnsFacts> read_netns_facts(int netns_fd, bool want_cookie) {
    Result<NetnsFacts> result = Error{EIO, "netns thread did not run"};
    auto joined = in_netns(netns_fd, [&] {
        NetnsFacts facts;
        if (want_cookie) {
            UniqueFd sock(::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
            if (!sock.valid()) sock.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
            socklen_t len = sizeof(facts.cookie);
            if (!sock.valid() ||
                ::getsockopt(sock.get(), SOL_SOCKET, SO_NETNS_COOKIE, &facts.cookie, &len) != 0) {
                result = Error::last_errno("read the network namespace cookie (SO_NETNS_COOKIE)");
                return;
            }
        }
        ifaddrs* list = nullptr;
        if (::getifaddrs(&list) != 0) {
            result = Error::last_errno("list addresses in the network namespace");
            return;
        }
        for (ifaddrs* it = list; it; it = it->ifa_next) {
            if (!it->ifa_addr) continue;
            PodAddress pod;
            char text[INET6_ADDRSTRLEN] = {};
            if (it->ifa_addr->sa_family == AF_INET) {
                auto* sin = reinterpret_cast<sockaddr_in*>(it->ifa_addr);
                pod.is_v4 = true;
                pod.addr[10] = pod.addr[11] = 0xff;
                std::memcpy(&pod.addr[12], &sin->sin_addr, 4);
                ::inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
            } else if (it->ifa_addr->sa_family == AF_INET6) {
                auto* sin6 = reinterpret_cast<sockaddr_in6*>(it->ifa_addr);
                std::memcpy(pod.addr.data(), &sin6->sin6_addr, 16);
                ::inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
            } else {
                continue;
            }
            pod.text = text;
            if (it->ifa_name) pod.interface = it->ifa_name;
            facts.addresses.push_back(std::move(pod));
        }
        ::freeifaddrs(list);
        result = std::move(facts);
    });
    if (!joined) return joined.error();
    return result;
}

// An errno from resolving or opening a path the client gave: the client's mistake (400 naming
// the field), except a missing file (404) and a permission problem (403).
Error path_error(const std::string& field, const std::string& path, int code) {
    switch (code) {
        case ENOENT:
        case EACCES:
        case EPERM:
        case ENOMEM:
        case EMFILE:
        case ENFILE:
            return Error::from_errno(code, field + " " + path);
        default:  // ENOTDIR, ENAMETOOLONG, ELOOP, ENXIO, EISDIR, EINTR, ...
            return Error::invalid(field + " " + path + ": " + std::strerror(code));
    }
}

// (st_dev, st_ino) of a namespace file; nullopt when it cannot be read.
std::optional<std::pair<dev_t, ino_t>> namespace_identity(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return std::pair{st.st_dev, st.st_ino};
}

// The agent's own cgroup, absolute under the cgroup2 mount ("0::/PATH" in /proc/self/cgroup).
std::string own_cgroup(const std::string& cgroup2_mount) {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("0::", 0) == 0) return canonical(cgroup2_mount + line.substr(3));
    return {};
}

bool is_within(const std::string& path, const std::string& ancestor) {
    return path == ancestor ||
           (path.size() > ancestor.size() && path.compare(0, ancestor.size(), ancestor) == 0 &&
            path[ancestor.size()] == '/');
}

}  // namespace

Result<CgroupHandle> open_cgroup(const std::string& given, const std::string& cgroup2_mount) {
    if (given.empty()) return Error::invalid("cgroup: path is empty");
    std::string joined = given.front() == '/' ? given : cgroup2_mount + "/" + given;
    if (joined.size() >= PATH_MAX)
        return path_error("cgroup", given.substr(0, 64) + "...", ENAMETOOLONG);
    std::string path = canonical(joined);
    if (path.empty()) return path_error("cgroup", joined, errno);
    // O_DIRECTORY fails on anything but a directory before the file is opened, so a FIFO or a
    // device in its place cannot block or act; O_NONBLOCK all the same.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid()) return path_error("cgroup", path, errno);
    struct statfs fs {};
    if (::fstatfs(fd.get(), &fs) != 0) return Error::last_errno("cgroup " + path);
    if (fs.f_type != CGROUP2_SUPER_MAGIC) {
        std::string kind =
            fs.f_type == CGROUP_SUPER_MAGIC ? "a cgroup v1 directory" : "not a cgroup directory";
        return Error::invalid("cgroup " + path + " is " + kind +
                              "; meshlane attaches to cgroup v2 only (mounted at " + cgroup2_mount +
                              ")");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Error::last_errno("cgroup " + path);
    // On cgroup2 the directory inode number is the cgroup id BPF sees.
    return CgroupHandle{path, static_cast<std::uint64_t>(st.st_ino), std::move(fd)};
}

Result<NetnsHandle> open_netns(const std::string& path) {
    if (path.empty()) return Error::invalid("netns: path is empty");
    if (path.size() >= PATH_MAX)
        return path_error("netns", path.substr(0, 64) + "...", ENAMETOOLONG);
    // O_PATH first: it resolves the path without opening the file, so a FIFO (whose open() would
    // block until a writer comes), a unix socket or a device is refused by type before anything
    // can block or act. Only an nsfs file is then opened for real (through /proc/self/fd).
    UniqueFd where(::open(path.c_str(), O_PATH | O_CLOEXEC));
    if (!where.valid()) return path_error("netns", path, errno);
    struct statfs fs {};
    if (::fstatfs(where.get(), &fs) != 0) return path_error("netns", path, errno);
    if (fs.f_type != NSFS_MAGIC)
        return Error::invalid("netns " + path +
                              " is not a namespace file (expected /var/run/netns/NAME or "
                              "/proc/PID/ns/net)");
    const std::string reopen = "/proc/self/fd/" + std::to_string(where.get());
    UniqueFd fd(::open(reopen.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid()) return path_error("netns", path, errno);
    int type = ::ioctl(fd.get(), NS_GET_NSTYPE);
    if (type < 0) return Error::last_errno("netns " + path + ": query namespace type");
    if (type != CLONE_NEWNET)
        return Error::invalid("netns " + path + " is a " + namespace_type_name(type) +
                              " namespace, not a network namespace");
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Error::last_errno("netns " + path);
    auto facts = read_netns_facts(fd.get(), true);
    if (!facts) return facts.error().with_context("netns " + path);
    NetnsHandle handle;
    handle.path = path;
    handle.inode = st.st_ino;
    handle.cookie = facts->cookie;
    handle.addresses = std::move(facts->addresses);
    handle.fd = std::move(fd);
    return handle;
}

Status refuse_node_wide(const CgroupHandle& cgroup, const std::string& cgroup2_mount) {
    const std::string root = canonical(cgroup2_mount);
    if (cgroup.path == root)
        return Error::invalid("cgroup " + cgroup.path +
                              " is the cgroup2 root: enrolling it would capture every process of "
                              "the node; give the pod's own cgroup");
    const std::string agent = own_cgroup(cgroup2_mount);
    if (!agent.empty() && is_within(agent, cgroup.path))
        return Error::invalid("cgroup " + cgroup.path + " contains the agent itself (" + agent +
                              "): enrolling it would capture node-wide processes and the agent; "
                              "give the pod's own cgroup");
    return Ok{};
}

Status refuse_node_wide(const NetnsHandle& netns) {
    struct stat st {};
    if (::fstat(netns.fd.get(), &st) != 0) return Error::last_errno("netns " + netns.path);
    const std::pair<dev_t, ino_t> target{st.st_dev, st.st_ino};
    const std::pair<const char*, const char*> host[] = {
        {"/proc/1/ns/net", "the host network namespace (init's)"},
        {"/proc/self/ns/net", "the agent's own network namespace"}};
    for (const auto& [path, what] : host)
        if (namespace_identity(path) == target)
            return Error::invalid("netns " + netns.path + " is " + what +
                                  ": enrolling it would steer the whole node's connections; give "
                                  "the pod's network namespace");
    return Ok{};
}

bool cgroups_nested(const std::string& a, const std::string& b) {
    return is_within(a, b) || is_within(b, a);
}

Result<std::vector<PodAddress>> netns_addresses(int netns_fd) {
    auto facts = read_netns_facts(netns_fd, false);
    if (!facts) return facts.error();
    return std::move(facts->addresses);
}

}  // namespace meshlane
