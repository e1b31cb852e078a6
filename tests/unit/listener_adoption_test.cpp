#include "agent/workload/listener_adoption.h"

#include <gtest/gtest.h>

namespace meshlane {
namespace {

// Captured from /proc/net/tcp with HAProxy listening on 127.0.0.1:15001 and an established
// connection on 15006 (state 01): only LISTEN (0A) sockets on the wanted port count.
constexpr const char* kTcp =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode\n"
    "   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 "
    "111 1 0000000000000000 100 0 0 10 0\n"
    "   1: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 "
    "222 1 0000000000000000 100 0 0 10 0\n"
    "   2: 0200000A:3A9E 0100000A:A3F2 01 00000000:00000000 00:00000000 00000000  1337        0 "
    "333 1 0000000000000000 20 4 30 10 -1\n";

TEST(ListenerAdoption, ParsesListeningSocketsOnPort) {
    auto sockets = parse_proc_net_tcp(kTcp, 15006, false);
    ASSERT_EQ(sockets.size(), 1u);
    EXPECT_EQ(sockets[0].inode, 222u);
    EXPECT_FALSE(sockets[0].ipv6);
    EXPECT_TRUE(parse_proc_net_tcp(kTcp, 8080, false).empty());
    EXPECT_EQ(parse_proc_net_tcp(kTcp, 15001, true).at(0).inode, 111u);
}

TEST(ListenerAdoption, ToleratesGarbage) {
    EXPECT_TRUE(parse_proc_net_tcp("", 15006, false).empty());
    EXPECT_TRUE(parse_proc_net_tcp("header\nnot a socket line\n", 15006, false).empty());
}

}  // namespace
}  // namespace meshlane
