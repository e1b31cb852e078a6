#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "agent/daemon/config.h"

namespace meshlane {
namespace {

bool same(const AgentConfig& a, const AgentConfig& b) {
    return a.state_dir == b.state_dir && a.api_socket == b.api_socket &&
           a.grpc_socket == b.grpc_socket && a.bpffs == b.bpffs && a.pin_dir == b.pin_dir &&
           a.log_level == b.log_level && a.max_workloads == b.max_workloads &&
           a.reconcile_interval_ms == b.reconcile_interval_ms &&
           a.rest_tcp_listen == b.rest_tcp_listen && a.grpc_tcp_listen == b.grpc_tcp_listen &&
           a.api_tcp_allow_non_loopback == b.api_tcp_allow_non_loopback &&
           a.tls_cert_file == b.tls_cert_file && a.tls_key_file == b.tls_key_file &&
           a.tls_client_ca_file == b.tls_client_ca_file &&
           a.tls_require_client_cert == b.tls_require_client_cert &&
           a.api_token_file == b.api_token_file && a.metrics_address == b.metrics_address &&
           a.metrics_workload_histograms == b.metrics_workload_histograms &&
           a.metrics_drop_reasons == b.metrics_drop_reasons;
}

TEST(AgentConfig, MetricsListenerAndCardinalitySwitches) {
    auto c = parse_agent_config(
        "metrics_address = 0.0.0.0:9966\nmetrics_workload_histograms = false\n"
        "metrics_drop_reasons = no\n",
        "t");
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_EQ(c->metrics_address, "0.0.0.0:9966");  // read-only: any address is allowed
    EXPECT_FALSE(c->metrics_workload_histograms);
    EXPECT_FALSE(c->metrics_drop_reasons);
    EXPECT_TRUE(AgentConfig{}.metrics_address.empty());  // off by default
    for (const char* bad : {"metrics_address = localhost:9966\n", "metrics_address = :9966\n",
                            "metrics_address = 127.0.0.1:0\n", "metrics_drop_reasons = maybe\n"}) {
        auto parsed = parse_agent_config(bad, "t");
        EXPECT_FALSE(parsed.ok()) << bad;
        if (!parsed.ok()) {
            EXPECT_NE(parsed.error().message.find("t:1"), std::string::npos);
        }
    }
}

TEST(AgentConfig, EmbeddedDefaultMatchesStructDefaultsAndShippedFile) {
    auto embedded = load_agent_config("");
    ASSERT_TRUE(embedded.ok()) << embedded.error().message;
    EXPECT_TRUE(same(*embedded, AgentConfig{}));
    auto shipped = load_agent_config(MESHLANE_SOURCE_DIR "/deploy/meshlane.conf");
    ASSERT_TRUE(shipped.ok()) << shipped.error().message;
    EXPECT_TRUE(same(*shipped, *embedded)) << "deploy/meshlane.conf drifted from the default";
}

TEST(AgentConfig, ParsesValuesCommentsAndQuotes) {
    auto c = parse_agent_config(
        "# comment\nstate_dir = \"/tmp/x\"   # trailing\n pin_dir=meshlane-test-1\nmax_workloads = "
        "8\n",
        "t");
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_EQ(c->state_dir, "/tmp/x");
    EXPECT_EQ(c->pin_dir, "meshlane-test-1");
    EXPECT_EQ(c->max_workloads, 8u);
}

TEST(AgentConfig, ErrorsNameTheLineAndKey) {
    struct Case {
        const char* text;
        const char* expect;
    } cases[] = {
        {"bogus = 1\n", "t:1: unknown key 'bogus'"},
        {"\nmax_workloads = lots\n", "t:2 max_workloads"},
        {"max_workloads = 0\n", "max_workloads"},
        {"pin_dir = ../etc\n", "pin_dir"},
        {"log_level = loud\n", "log_level"},
        {"state_dir\n", "expected key = value"},
        {"state_dir = relative\n", "absolute"},
        {"grpc_socket = grpc.sock\n", "absolute"},
        {"grpc_socket = /run/meshlane/api.sock\n", "must differ"},
    };
    for (const auto& c : cases) {
        auto parsed = parse_agent_config(c.text, "t");
        ASSERT_FALSE(parsed.ok()) << c.text;
        EXPECT_NE(parsed.error().message.find(c.expect), std::string::npos)
            << parsed.error().message;
    }
}

}  // namespace
}  // namespace meshlane
