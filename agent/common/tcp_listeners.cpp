#include "agent/common/tcp_listeners.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <array>
#include <cstring>

#include "agent/common/unique_fd.h"

namespace meshlane {

namespace {

std::string endpoint_text(bool ipv6, const __be32* address, std::uint16_t port) {
    char text[INET6_ADDRSTRLEN]{};
    ::inet_ntop(ipv6 ? AF_INET6 : AF_INET, address, text, sizeof(text));
    return ipv6 ? "[" + std::string(text) + "]:" + std::to_string(port)
                : std::string(text) + ":" + std::to_string(port);
}

TcpSocket socket_of(const inet_diag_msg& entry) {
    TcpSocket socket;
    socket.ipv6 = entry.idiag_family == AF_INET6;
    socket.local_port = ntohs(entry.id.idiag_sport);
    socket.remote_port = ntohs(entry.id.idiag_dport);
    socket.local = endpoint_text(socket.ipv6, entry.id.idiag_src, socket.local_port);
    socket.remote = endpoint_text(socket.ipv6, entry.id.idiag_dst, socket.remote_port);
    socket.state = entry.idiag_state;
    socket.uid = entry.idiag_uid;
    socket.inode = entry.idiag_inode;
    socket.receive_queue = entry.idiag_rqueue;
    socket.send_queue = entry.idiag_wqueue;
    return socket;
}

Status dump_family(int sock, int family, std::uint32_t state_mask, std::vector<TcpSocket>& out) {
    struct {
        nlmsghdr header;
        inet_diag_req_v2 request;
    } message{};
    message.header.nlmsg_len = sizeof(message);
    message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    message.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    message.header.nlmsg_seq = static_cast<__u32>(family);
    message.request.sdiag_family = static_cast<__u8>(family);
    message.request.sdiag_protocol = IPPROTO_TCP;
    message.request.idiag_states = state_mask;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(sock, &message, sizeof(message), 0, reinterpret_cast<sockaddr*>(&kernel),
                 sizeof(kernel)) < 0)
        return Error::last_errno("sock_diag: send the TCP socket dump request");

    alignas(nlmsghdr) std::array<char, 32768> buffer{};
    for (;;) {
        const ssize_t got = ::recv(sock, buffer.data(), buffer.size(), 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return Error::last_errno("sock_diag: read the TCP socket dump");
        }
        if (got == 0) return Error{EIO, "sock_diag: the dump ended without NLMSG_DONE"};
        // Walk the messages by hand: NLMSG_OK/NLMSG_NEXT compare signed with unsigned.
        const auto end = static_cast<std::size_t>(got);
        for (std::size_t offset = 0; offset + sizeof(nlmsghdr) <= end;) {
            auto* header = reinterpret_cast<nlmsghdr*>(buffer.data() + offset);
            if (header->nlmsg_len < sizeof(nlmsghdr) || header->nlmsg_len > end - offset) break;
            offset += NLMSG_ALIGN(header->nlmsg_len);
            if (header->nlmsg_type == NLMSG_DONE) return {};
            if (header->nlmsg_type == NLMSG_ERROR) {
                const auto* error = static_cast<const nlmsgerr*>(NLMSG_DATA(header));
                const int code = error->error < 0 ? -error->error : EIO;
                // No IPv6 in this namespace (or kernel): no IPv6 sockets.
                if (family == AF_INET6 && code == ENOENT) return {};
                return Error::from_errno(code, "sock_diag: TCP socket dump");
            }
            if (header->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
            if (header->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
            const auto* entry = static_cast<const inet_diag_msg*>(NLMSG_DATA(header));
            if (entry->idiag_state >= 32 || (state_mask & (1U << entry->idiag_state)) == 0)
                continue;
            out.push_back(socket_of(*entry));
        }
    }
}

}  // namespace

Result<std::vector<TcpSocket>> list_tcp_sockets(std::uint32_t state_mask) {
    UniqueFd sock(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
    if (!sock.valid()) return Error::last_errno("sock_diag: open a NETLINK_SOCK_DIAG socket");
    std::vector<TcpSocket> sockets;
    for (int family : {AF_INET, AF_INET6})
        if (auto dumped = dump_family(sock.get(), family, state_mask, sockets); !dumped)
            return dumped.error();
    return sockets;
}

Result<std::vector<TcpListener>> list_tcp_listeners() {
    auto sockets = list_tcp_sockets(1U << TCP_LISTEN);
    if (!sockets) return sockets.error();
    std::vector<TcpListener> listeners;
    listeners.reserve(sockets->size());
    for (auto& s : *sockets)
        listeners.push_back(TcpListener{std::move(s.local), s.local_port, s.ipv6, s.uid, s.inode,
                                        s.receive_queue, s.send_queue});
    return listeners;
}

}  // namespace meshlane
