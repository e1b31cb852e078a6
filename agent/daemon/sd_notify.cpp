#include "agent/daemon/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "agent/common/unique_fd.h"

namespace meshlane {

Status sd_notify(std::string_view state) {
    const char* env = std::getenv("NOTIFY_SOCKET");
    if (env == nullptr || *env == '\0') return Ok{};
    const std::string path = env;
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof(address.sun_path) || (path[0] != '/' && path[0] != '@'))
        return Error::invalid("NOTIFY_SOCKET '" + path + "': not a unix socket path");
    std::memcpy(address.sun_path, path.data(), path.size());
    // '@': abstract namespace, whose name starts with a NUL byte and is not NUL-terminated.
    if (path[0] == '@') address.sun_path[0] = '\0';
    const auto length =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '/'));
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return Error::last_errno("sd_notify: socket");
    const ssize_t sent = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                                  reinterpret_cast<const sockaddr*>(&address), length);
    if (sent < 0) return Error::last_errno("sd_notify: send to " + path);
    return Ok{};
}

}  // namespace meshlane
