// The TCP sockets in LISTEN state of the calling thread's network namespace, asked from the
// kernel with sock_diag (NETLINK_SOCK_DIAG, inet_diag with a LISTEN-only state mask). The kernel
// then walks only its listening hash, so the cost does not grow with established or TIME_WAIT
// sockets — /proc/net/tcp prints every one of them, which on a busy pod (thousands of new
// connections a second) cost more than everything else the agent does. Combine with in_netns()
// to ask about a pod's namespace.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agent/common/result.h"

namespace meshlane {

struct TcpListener {
    std::string local;  // "127.0.0.1:15001", "[::]:15006"
    std::uint16_t port = 0;
    bool ipv6 = false;
    std::uint32_t uid = 0;    // the socket's owner (the creating process's fsuid)
    std::uint64_t inode = 0;  // matches the "socket:[INODE]" fd links in /proc/PID/fd
    // For a LISTEN socket inet_diag reports the accept queue: connections waiting for accept()
    // (idiag_rqueue) and its limit, the listen() backlog (idiag_wqueue).
    std::uint32_t accept_queue = 0;
    std::uint32_t backlog = 0;
};

// Every LISTEN socket, IPv4 and IPv6, of the calling thread's netns.
Result<std::vector<TcpListener>> list_tcp_listeners();

// A TCP socket in any state (verify's view of its probe connections).
struct TcpSocket {
    std::string local;   // "10.0.0.1:40000", "[::ffff:127.0.0.1]:15001"
    std::string remote;  // same form
    std::uint16_t local_port = 0;
    std::uint16_t remote_port = 0;
    bool ipv6 = false;       // an AF_INET6 socket (dual-stack ones too)
    std::uint8_t state = 0;  // TCP_ESTABLISHED, TCP_LISTEN, ... (netinet/tcp.h)
    std::uint32_t uid = 0;
    std::uint64_t inode = 0;
    // inet_diag's idiag_rqueue / idiag_wqueue: for a LISTEN socket the accept queue and the
    // listen() backlog, otherwise unread and unsent bytes.
    std::uint32_t receive_queue = 0;
    std::uint32_t send_queue = 0;
};

// The TCP sockets, IPv4 and IPv6, of the calling thread's netns whose state is in `state_mask`
// (bit 1 << TCP_xxx), from the same sock_diag dump: an AF_INET6 socket that accepts IPv4 (a
// dual-stack [::]:15001 listener, IPV6_V6ONLY=0) is in the AF_INET6 dump only.
Result<std::vector<TcpSocket>> list_tcp_sockets(std::uint32_t state_mask);

}  // namespace meshlane
