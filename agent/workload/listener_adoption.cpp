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

#include "agent/common/in_netns.h"
#include "agent/common/tcp_listeners.h"

namespace meshlane {

namespace {

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
        if (!sockets_read) {  // any process of the netns leads to the netns' sockets
            Result<std::vector<TcpListener>> listeners = Error{EIO, "not read"};
            auto joined = in_netns(pid_dir + "/ns/net", [&] { listeners = list_tcp_listeners(); });
            if (!joined) {
                if (joined.error().code == ENOENT) continue;  // the process just exited
                return joined.error();
            }
            if (!listeners) return listeners.error();
            for (const auto& s : *listeners)
                if (s.port == port) wanted[s.inode] = s.ipv6;
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
