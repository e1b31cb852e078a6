// agent/observe/tls_aggregate.h: decoding, per-destination stats, bounds, failing_or_slow.
#include "agent/observe/tls_aggregate.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace meshlane {
namespace {

constexpr std::uint64_t kCookie = 77;

tls_handshake_event event(const std::string& sni, std::uint8_t outcome, std::uint64_t latency_ms,
                          std::uint8_t source = MESHLANE_TLS_SOURCE_WIRE) {
    tls_handshake_event e{};
    e.netns_cookie = kCookie;
    e.workload_id = 3;
    e.latency_ns = latency_ms * 1'000'000;
    e.outcome = outcome;
    e.source = source;
    e.side = MESHLANE_SIDE_UPSTREAM;
    e.version = 0x0304;
    e.sni_len = static_cast<std::uint8_t>(sni.size());
    std::memcpy(e.sni, sni.data(), sni.size());
    e.saddr[10] = e.saddr[11] = 0xff;
    e.daddr[10] = e.daddr[11] = 0xff;
    e.saddr[12] = 10, e.saddr[15] = 1;
    e.daddr[12] = 10, e.daddr[15] = 2;
    e.sport = 40000;
    e.dport = 443;
    return e;
}

TEST(TlsAggregate, PerDestinationStatsAndFailures) {
    TlsAggregate aggregate;
    aggregate.add_event(event("api.test", MESHLANE_TLS_OK, 200), 1'000'000'000);
    aggregate.add_event(event("api.test", MESHLANE_TLS_OK, 210), 2'000'000'000);
    auto alert = event("api.test", MESHLANE_TLS_ALERT, 5);
    alert.alert_level = 2;
    alert.alert_description = 48;
    aggregate.add_event(alert, 3'000'000'000);
    aggregate.add_event(event("", MESHLANE_TLS_RESET, 1), 4'000'000'000);

    const auto view = aggregate.view(3, kCookie);
    ASSERT_EQ(view.destinations.size(), 2u);
    const auto& api = view.destinations[1].destination == "api.test" ? view.destinations[1]
                                                                     : view.destinations[0];
    EXPECT_EQ(api.handshakes, 2u);
    EXPECT_EQ(api.failures, 1u);
    EXPECT_EQ(api.last_failure_reason, "alert fatal 48 (unknown_ca)");
    EXPECT_EQ(api.last_failure_unix_ns, 3'000'000'000);
    EXPECT_EQ(api.last_version, "TLS1.3");
    EXPECT_GE(api.p50_us(), 131072.0);  // 200 ms lands in [131.072, 262.144) ms
    EXPECT_LE(api.p99_us(), 262144.0);
    // No SNI: keyed by the peer.
    const auto& peer = view.destinations[0].destination == "10.0.0.2:443" ? view.destinations[0]
                                                                          : view.destinations[1];
    EXPECT_EQ(peer.destination, "10.0.0.2:443");
    EXPECT_EQ(peer.last_failure_reason, "connection reset mid-handshake");

    ASSERT_EQ(view.recent.size(), 4u);
    EXPECT_EQ(view.recent[0].sni, "api.test");
    EXPECT_EQ(view.recent[0].local, "10.0.0.1:40000");
    EXPECT_EQ(view.recent[2].outcome, "alert");
    EXPECT_EQ(view.recent[3].outcome, "reset");

    const auto bad = failing_or_slow(view, std::chrono::milliseconds(500));
    EXPECT_EQ(bad.size(), 2u);  // both failed once
}

TEST(TlsAggregate, SlowDestinationsAndSourcesApart) {
    TlsAggregate aggregate;
    aggregate.add_event(event("slow.test", MESHLANE_TLS_OK, 900), 1);
    aggregate.add_event(event("fast.test", MESHLANE_TLS_OK, 2), 2);
    aggregate.add_event(event("fast.test", MESHLANE_TLS_OK, 3, MESHLANE_TLS_SOURCE_LIBSSL), 3);
    const auto view = aggregate.view(3, kCookie);
    EXPECT_EQ(view.destinations.size(), 3u);  // fast.test once per source
    const auto slow = failing_or_slow(view, std::chrono::milliseconds(100));
    ASSERT_EQ(slow.size(), 1u);
    EXPECT_EQ(slow[0].destination, "slow.test");
}

TEST(TlsAggregate, BoundsAreKept) {
    TlsAggregate aggregate(TlsAggregateLimits{4, 8, 16, 20});
    for (int i = 0; i < 100; ++i)
        aggregate.add_event(event("d" + std::to_string(i), MESHLANE_TLS_OK, 1), i);
    const auto view = aggregate.view(3, kCookie);
    EXPECT_EQ(view.destinations.size(), 8u);
    EXPECT_EQ(view.recent.size(), 16u);
    EXPECT_EQ(view.recent.back().sni, "d99");
    EXPECT_GT(aggregate.evicted(), 0u);
    EXPECT_LE(aggregate.memory_bytes(), aggregate.memory_limit_bytes());

    // A snapshot without the workload forgets it.
    aggregate.apply_snapshot({});
    EXPECT_TRUE(aggregate.view(3, kCookie).recent.empty());
}

TEST(TlsAggregate, NamesAndUnprintableSni) {
    EXPECT_EQ(tls_version_name(0x0303), "TLS1.2");
    EXPECT_EQ(tls_version_name(0), "");
    EXPECT_EQ(tls_alert_text(0, -1), "alert (encrypted)");
    EXPECT_EQ(tls_alert_text(1, 0), "alert warning 0 (close_notify)");
    TlsAggregate aggregate;
    aggregate.add_event(event(std::string("a\x01\xff", 3), MESHLANE_TLS_OK, 1), 1);
    EXPECT_EQ(aggregate.view(3, kCookie).recent[0].sni, "a??");
}

TEST(TlsAggregate, GlobalDestinationCapEvictsFromTheLargest) {
    TlsAggregate aggregate(TlsAggregateLimits{8, 100, 16, 64, 10});
    auto add = [&](std::uint64_t cookie, int i) {
        auto e = event("w" + std::to_string(cookie) + "-d" + std::to_string(i), MESHLANE_TLS_OK, 1);
        e.netns_cookie = cookie;
        e.workload_id = static_cast<std::uint32_t>(cookie);
        aggregate.add_event(e, i);
    };
    for (int i = 0; i < 20; ++i) add(1, i);  // one busy workload fills the global cap
    EXPECT_EQ(aggregate.destinations(), 10u);
    EXPECT_EQ(aggregate.destinations_evicted(), 10u);
    for (int i = 0; i < 3; ++i) add(2, i);  // a quiet one still gets room, taken from the busy one
    EXPECT_EQ(aggregate.destinations(), 10u);
    EXPECT_EQ(aggregate.destinations_evicted(), 13u);
    EXPECT_EQ(aggregate.view(2, 2).destinations.size(), 3u);
    const auto busy = aggregate.view(1, 1);
    ASSERT_EQ(busy.destinations.size(), 7u);
    // The least recently seen went first: d13..d19 are left.
    EXPECT_EQ(busy.destinations.front().destination, "w1-d13");
    EXPECT_EQ(aggregate.destinations_limit(), 10u);
    EXPECT_LE(aggregate.memory_bytes(), aggregate.memory_limit_bytes());

    // Forgetting a workload gives its destinations back.
    aggregate.apply_snapshot({TlsWorkloadTotals{2, 2, {}}});
    EXPECT_EQ(aggregate.destinations(), 3u);
}

TEST(TlsAggregate, ManyWorkloadsStayWithinTheBoundAndItIsTensOfMegabytes) {
    TlsAggregate aggregate(TlsAggregateLimits{64, 32, 4, 128, 256});
    for (std::uint64_t cookie = 1; cookie <= 64; ++cookie)
        for (int i = 0; i < 40; ++i) {
            auto e = event("d" + std::to_string(i), MESHLANE_TLS_OK, 1);
            e.netns_cookie = cookie;
            aggregate.add_event(e, i);
            ASSERT_LE(aggregate.memory_bytes(), aggregate.memory_limit_bytes());
        }
    EXPECT_EQ(aggregate.destinations(), 256u);
    EXPECT_EQ(aggregate.destinations_evicted(), 64u * 40u - 256u);
    // The agent's defaults (4096 workloads, 256 per workload, 16384 in all, 16384 events).
    const TlsAggregate defaults(TlsAggregateLimits{4096, 256, 256, 16384, 16384});
    EXPECT_LT(defaults.memory_limit_bytes(), std::size_t{64} << 20);
}

}  // namespace
}  // namespace meshlane
