// Socket helpers shared by the bench load generators (crr.cpp, connrate.cpp): blocking sockets
// with timeouts, so every generator run is bounded in time.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

namespace meshlane_bench {

// "10.0.0.2:8080"; nullopt when it is not IPv4:PORT.
inline std::optional<sockaddr_in> parse_ipv4_endpoint(const std::string& text) {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<std::uint16_t>(std::atoi(text.c_str() + colon + 1)));
    if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &sin.sin_addr) != 1) return std::nullopt;
    return sin;
}

inline void set_socket_timeouts(int fd, int timeout_ms, bool nodelay) {
    const timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    const int one = 1;
    if (nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Reads exactly n bytes; returns 0, or an errno (EOF before n bytes is reported as EPIPE).
inline int read_exact(int fd, char* buf, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
        const ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r > 0)
            got += static_cast<std::size_t>(r);
        else if (r == 0)
            return EPIPE;
        else if (errno != EINTR)
            return errno;
    }
    return 0;
}

inline int write_all(int fd, const char* buf, std::size_t n) {
    std::size_t sent = 0;
    while (sent < n) {
        const ssize_t w = send(fd, buf + sent, n - sent, MSG_NOSIGNAL);
        if (w > 0)
            sent += static_cast<std::size_t>(w);
        else if (w < 0 && errno != EINTR)
            return errno;
    }
    return 0;
}

}  // namespace meshlane_bench
