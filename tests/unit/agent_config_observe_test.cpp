// The observation keys of the agent config (slow_connect_threshold_ms,
// tls_slow_handshake_threshold_ms, event_rate_limit_per_sec, recent_events_per_workload,
// drop_count_only_reasons, tls_destinations_per_workload, tls_destinations_total): the
// embedded default, the struct defaults and deploy/meshlane.conf agree; bad values are errors
// naming the line and the key.
#include <gtest/gtest.h>

#include "agent/daemon/config.h"

namespace meshlane {
namespace {

auto observe_keys(const AgentConfig& c) {
    return std::tuple{c.slow_connect_threshold_ms, c.tls_slow_handshake_threshold_ms,
                      c.event_rate_limit_per_sec,  c.recent_events_per_workload,
                      c.drop_count_only_reasons,   c.tls_destinations_per_workload,
                      c.tls_destinations_total,    c.observe};
}

TEST(AgentConfigObserve, DefaultsAgreeEverywhere) {
    auto embedded = load_agent_config("");
    ASSERT_TRUE(embedded.ok()) << embedded.error().message;
    EXPECT_EQ(observe_keys(*embedded), observe_keys(AgentConfig{}));
    auto shipped = load_agent_config(MESHLANE_SOURCE_DIR "/deploy/meshlane.conf");
    ASSERT_TRUE(shipped.ok()) << shipped.error().message;
    EXPECT_EQ(observe_keys(*shipped), observe_keys(*embedded));
    // Every key is written out in both, not just left to the struct default.
    for (const char* key :
         {"slow_connect_threshold_ms", "tls_slow_handshake_threshold_ms",
          "event_rate_limit_per_sec", "recent_events_per_workload", "drop_count_only_reasons",
          "tls_destinations_per_workload", "tls_destinations_total", "observe"})
        EXPECT_NE(kDefaultConfigText.find(std::string(key) + " = "), std::string_view::npos) << key;
}

TEST(AgentConfigObserve, ParsesValues) {
    auto c = parse_agent_config(
        "slow_connect_threshold_ms = 50\ntls_slow_handshake_threshold_ms = 1\n"
        "event_rate_limit_per_sec = 1000000\nrecent_events_per_workload = 65536\n",
        "t");
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_EQ(c->slow_connect_threshold_ms, 50u);
    EXPECT_EQ(c->tls_slow_handshake_threshold_ms, 1u);
    EXPECT_EQ(c->event_rate_limit_per_sec, 1000000u);
    EXPECT_EQ(c->recent_events_per_workload, 65536u);
    // The shipped default keeps the TLS destination tables to tens of MB.
    EXPECT_EQ(AgentConfig{}.drop_count_only_reasons, std::vector<std::string>{"QUEUE_PURGE"});
    EXPECT_LE(AgentConfig{}.tls_destinations_total, 16384u);

    auto lists = parse_agent_config(
        "drop_count_only_reasons = QUEUE_PURGE, socket_close ,SKB_DROP_REASON_TCP_CLOSE\n"
        "tls_destinations_per_workload = 1\ntls_destinations_total = 1048576\n",
        "t");
    ASSERT_TRUE(lists.ok()) << lists.error().message;
    EXPECT_EQ(
        lists->drop_count_only_reasons,
        (std::vector<std::string>{"QUEUE_PURGE", "socket_close", "SKB_DROP_REASON_TCP_CLOSE"}));
    EXPECT_EQ(lists->tls_destinations_per_workload, 1u);
    EXPECT_EQ(lists->tls_destinations_total, 1048576u);
    auto off = parse_agent_config("observe = false\n", "t");
    ASSERT_TRUE(off.ok()) << off.error().message;
    EXPECT_FALSE(off->observe);
    EXPECT_TRUE(AgentConfig{}.observe);
    auto bad = parse_agent_config("observe = maybe\n", "t");
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.error().message.find("observe"), std::string::npos) << bad.error().message;
    auto none = parse_agent_config("drop_count_only_reasons = none\n", "t");
    ASSERT_TRUE(none.ok()) << none.error().message;
    EXPECT_TRUE(none->drop_count_only_reasons.empty());
}

TEST(AgentConfigObserve, BadValuesNameLineAndKey) {
    struct Case {
        const char* text;
        const char* expect;
    } cases[] = {
        {"slow_connect_threshold_ms = 0\n",
         "t:1 slow_connect_threshold_ms: expected a number in "
         "1..600000, got '0'"},
        {"\nslow_connect_threshold_ms = 600001\n", "t:2 slow_connect_threshold_ms"},
        {"slow_connect_threshold_ms = 1.5\n", "slow_connect_threshold_ms"},
        {"tls_slow_handshake_threshold_ms = -1\n", "tls_slow_handshake_threshold_ms"},
        {"tls_slow_handshake_threshold_ms =\n", "tls_slow_handshake_threshold_ms"},
        {"event_rate_limit_per_sec = 0\n",
         "event_rate_limit_per_sec: expected a number in "
         "1..1000000"},
        {"event_rate_limit_per_sec = lots\n", "event_rate_limit_per_sec"},
        {"recent_events_per_workload = 0\n", "recent_events_per_workload"},
        {"recent_events_per_workload = 65537\n", "recent_events_per_workload"},
        {"recent_events_per_workload = 99999999999999999999\n", "recent_events_per_workload"},
        {"slow_connect_threshold = 5\n", "unknown key 'slow_connect_threshold'"},
        {"drop_count_only_reasons =\n", "drop_count_only_reasons: expected drop reason names"},
        {"drop_count_only_reasons = QUEUE_PURGE,,NO_SOCKET\n", "drop_count_only_reasons"},
        {"drop_count_only_reasons = QUEUE-PURGE\n", "got 'QUEUE-PURGE'"},
        {"drop_count_only_reasons = A,B,C,D,E,F,G,H,I,J,K,L,M,N,O,P,Q\n", "at most 16 reasons"},
        {"tls_destinations_per_workload = 0\n", "tls_destinations_per_workload"},
        {"tls_destinations_total = 1048577\n", "tls_destinations_total"},
    };
    for (const auto& c : cases) {
        auto parsed = parse_agent_config(c.text, "t");
        ASSERT_FALSE(parsed.ok()) << c.text;
        EXPECT_NE(parsed.error().message.find(c.expect), std::string::npos)
            << c.text << " -> " << parsed.error().message;
    }
}

}  // namespace
}  // namespace meshlane
