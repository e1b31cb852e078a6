#include "agent/workload/listener_adoption.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace meshlane {

namespace {

constexpr const char* kTcpListenState = "0A";

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

std::uint64_t ns_inode_of(const std::string& pid_dir) {
    struct stat st {};
    if (::stat((pid_dir + "/ns/net").c_str(), &st) != 0) return 0;
    return st.st_ino;
}

// "Uid:\treal\teffective\t..." -> true when any of real/effective matches.
bool owner_matches(const std::string& status, std::uint32_t uid, std::uint32_t gid) {
    std::istringstream lines(status);
    std::string line;
    bool match = false;
    while (std::getline(lines, line)) {
        bool is_uid = line.rfind("Uid:", 0) == 0;
        bool is_gid = line.rfind("Gid:", 0) == 0;
        if (!is_uid && !is_gid) continue;
        std::istringstream fields(line.substr(4));
        std::uint64_t real = 0, effective = 0;
        fields >> real >> effective;
        std::uint32_t want = is_uid ? uid : gid;
        match = match || real == want || effective == want;
    }
    return match;
}

}  // namespace

std::vector<ListeningSocket> parse_proc_net_tcp(std::string_view text, std::uint16_t port,
                                                bool ipv6) {
    std::vector<ListeningSocket> sockets;
    std::istringstream lines{std::string(text)};
    std::string line;
    std::getline(lines, line);  // header
    while (std::getline(lines, line)) {
        std::istringstream fields(line);
        std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
        if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
              timeout >> inode))
            continue;
        auto colon = local.rfind(':');
        if (colon == std::string::npos || state != kTcpListenState) continue;
        try {
            if (std::stoul(local.substr(colon + 1), nullptr, 16) != port) continue;
            sockets.push_back({std::stoull(inode), ipv6});
        } catch (const std::exception&) {
            continue;  // not a socket line
        }
    }
    return sockets;
}

Result<std::vector<AdoptedListener>> adopt_listeners(std::uint64_t netns_inode, std::uint16_t port,
                                                     std::uint32_t uid, std::uint32_t gid) {
    std::vector<AdoptedListener> adopted;
    std::map<std::uint64_t, bool> wanted;  // socket inode -> ipv6
    bool sockets_read = false;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const std::string pid_dir = entry.path().string();
        if (ns_inode_of(pid_dir) != netns_inode) continue;
        if (!sockets_read) {  // any process of the netns shows the netns' sockets
            for (bool v6 : {false, true})
                for (auto& s : parse_proc_net_tcp(
                         read_file(pid_dir + (v6 ? "/net/tcp6" : "/net/tcp")), port, v6))
                    wanted[s.inode] = s.ipv6;
            sockets_read = true;
            if (wanted.empty()) return adopted;
        }
        if (!owner_matches(read_file(pid_dir + "/status"), uid, gid)) continue;
        const pid_t pid = static_cast<pid_t>(std::stol(name));
        for (const auto& fd_entry : std::filesystem::directory_iterator(pid_dir + "/fd", ec)) {
            std::error_code link_ec;
            auto target = std::filesystem::read_symlink(fd_entry.path(), link_ec).string();
            if (link_ec || target.rfind("socket:[", 0) != 0) continue;
            std::uint64_t inode = std::stoull(target.substr(8));
            auto it = wanted.find(inode);
            if (it == wanted.end()) continue;
            UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
            if (!pidfd.valid()) return Error::last_errno("pidfd_open " + std::to_string(pid));
            int target_fd = std::stoi(fd_entry.path().filename().string());
            UniqueFd copy(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), target_fd, 0)));
            if (!copy.valid())
                return Error::last_errno("pidfd_getfd of the proxy's listener (pid " +
                                         std::to_string(pid) + ")");
            adopted.push_back({std::move(copy), it->second, pid});
            wanted.erase(it);
        }
    }
    return adopted;
}

}  // namespace meshlane
