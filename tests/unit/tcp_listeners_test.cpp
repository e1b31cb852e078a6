#include "agent/common/tcp_listeners.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "agent/common/in_netns.h"
#include "agent/common/unique_fd.h"

namespace meshlane {
namespace {

struct Listening {
    UniqueFd fd;
    std::uint16_t port = 0;
    std::uint64_t inode = 0;
};

// A real listener on an ephemeral port of loopback (v4) or [::1] (v6).
Listening listen_on_loopback(bool ipv6) {
    Listening out;
    out.fd.reset(::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_TRUE(out.fd.valid());
    sockaddr_storage address{};
    socklen_t length = 0;
    if (ipv6) {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&address);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        length = sizeof(*sin6);
    } else {
        auto* sin = reinterpret_cast<sockaddr_in*>(&address);
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        length = sizeof(*sin);
    }
    EXPECT_EQ(::bind(out.fd.get(), reinterpret_cast<sockaddr*>(&address), length), 0);
    EXPECT_EQ(::listen(out.fd.get(), 4), 0);
    EXPECT_EQ(::getsockname(out.fd.get(), reinterpret_cast<sockaddr*>(&address), &length), 0);
    out.port = ntohs(ipv6 ? reinterpret_cast<sockaddr_in6*>(&address)->sin6_port
                          : reinterpret_cast<sockaddr_in*>(&address)->sin_port);
    struct stat st {};
    EXPECT_EQ(::fstat(out.fd.get(), &st), 0);
    out.inode = st.st_ino;
    return out;
}

const TcpListener* find(const std::vector<TcpListener>& all, std::uint64_t inode) {
    auto it = std::find_if(all.begin(), all.end(),
                           [&](const TcpListener& l) { return l.inode == inode; });
    return it == all.end() ? nullptr : &*it;
}

TEST(TcpListeners, FindsOwnIpv4ListenerWithOwnerAndAddress) {
    auto v4 = listen_on_loopback(false);
    auto listeners = list_tcp_listeners();
    ASSERT_TRUE(listeners) << listeners.error().message;
    const auto* found = find(*listeners, v4.inode);
    ASSERT_NE(found, nullptr);
    EXPECT_FALSE(found->ipv6);
    EXPECT_EQ(found->port, v4.port);
    EXPECT_EQ(found->uid, ::geteuid());
    EXPECT_EQ(found->local, "127.0.0.1:" + std::to_string(v4.port));
}

TEST(TcpListeners, FindsIpv6ListenerAndIgnoresConnectedSockets) {
    auto v6 = listen_on_loopback(true);
    if (!v6.fd.valid()) GTEST_SKIP() << "no IPv6 here";
    // a connected pair on the same port must not be reported: only LISTEN sockets are
    UniqueFd client(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in6 to{};
    to.sin6_family = AF_INET6;
    to.sin6_addr = in6addr_loopback;
    to.sin6_port = htons(v6.port);
    ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
    UniqueFd accepted(::accept4(v6.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(accepted.valid());
    auto listeners = list_tcp_listeners();
    ASSERT_TRUE(listeners) << listeners.error().message;
    const auto* found = find(*listeners, v6.inode);
    ASSERT_NE(found, nullptr);
    EXPECT_TRUE(found->ipv6);
    EXPECT_EQ(found->local, "[::1]:" + std::to_string(v6.port));
    const auto on_port = std::count_if(listeners->begin(), listeners->end(),
                                       [&](const TcpListener& l) { return l.port == v6.port; });
    EXPECT_EQ(on_port, 1);
}

TEST(TcpListeners, InNetnsRunsInTheGivenNamespaceAndNamesBadPaths) {
    auto v4 = listen_on_loopback(false);
    Result<std::vector<TcpListener>> listeners = Error{EIO, "not run"};
    auto joined = in_netns("/proc/self/ns/net", [&] { listeners = list_tcp_listeners(); });
    if (!joined && joined.error().code == EPERM) GTEST_SKIP() << "setns needs CAP_SYS_ADMIN";
    ASSERT_TRUE(joined) << joined.error().message;
    ASSERT_TRUE(listeners) << listeners.error().message;
    EXPECT_NE(find(*listeners, v4.inode), nullptr);

    auto missing = in_netns("/nonexistent/netns", [] {});
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
    EXPECT_NE(missing.error().message.find("/nonexistent/netns"), std::string::npos);
    auto not_a_netns = in_netns("/proc/self/status", [] {});
    ASSERT_FALSE(not_a_netns);
    EXPECT_EQ(not_a_netns.error().code, EINVAL);
}

}  // namespace
}  // namespace meshlane
