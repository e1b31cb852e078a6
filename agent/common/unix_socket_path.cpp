#include "agent/common/unix_socket_path.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>

namespace meshlane {

Status create_parent_directories(const std::string& socket_path) {
    for (auto slash = socket_path.find('/', 1); slash != std::string::npos;
         slash = socket_path.find('/', slash + 1)) {
        const std::string dir = socket_path.substr(0, slash);
        if (::mkdir(dir.c_str(), 0755) == 0) {
            // The umask may have narrowed it; the API directory must be traversable.
            if (::chmod(dir.c_str(), 0755) != 0) return Error::last_errno("chmod " + dir);
        } else if (errno != EEXIST) {
            return Error::last_errno("create directory " + dir);
        }
    }
    return Ok{};
}

Status remove_stale_socket(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return Ok{};
        return Error::last_errno("stat " + path);
    }
    if (!S_ISSOCK(st.st_mode)) {
        return Error{EEXIST, path + " exists and is not a socket; refusing to replace it"};
    }
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Error::last_errno("socket(AF_UNIX)");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    path.copy(address.sun_path, sizeof address.sun_path - 1);
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address);
    const int connect_errno = errno;
    ::close(fd);
    if (rc == 0) {
        return Error{EADDRINUSE,
                     "another process is serving on " + path + " (is another agent running?)"};
    }
    if (connect_errno != ECONNREFUSED) {
        return Error::from_errno(connect_errno, "probe existing socket " + path);
    }
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return Error::last_errno("remove stale socket " + path);
    }
    spdlog::info("removed stale API socket {}", path);
    return Ok{};
}

Status prepare_unix_socket_path(const std::string& path) {
    if (path.empty() || path.front() != '/')
        return Error::invalid("socket path \"" + path + "\" must be absolute");
    if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return Error{ENAMETOOLONG, "socket path " + path + " is longer than " +
                                       std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) +
                                       " bytes"};
    }
    if (auto s = create_parent_directories(path); !s) return s;
    return remove_stale_socket(path);
}

}  // namespace meshlane
