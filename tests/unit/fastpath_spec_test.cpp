// The fast-path settings and names that cross the API: the spec field (default off, strict
// type, named in conflicts) and the counter names the status views print.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <set>
#include <string>

#include "agent/model/workload_registry.h"
#include "agent/model/workload_spec.h"
#include "features/fastpath/fastpath_conn_state.h"
#include "features/fastpath/fastpath_datapath.h"
#include "features/fastpath/fastpath_selftest_readers.h"

namespace meshlane {
namespace {

namespace json = boost::json;

json::object minimal_json() {
    return json::object{{"name", "web-1"},
                        {"cgroup", "/sys/fs/cgroup/pods/web-1"},
                        {"netns", "/var/run/netns/web-1"}};
}

TEST(FastpathSpec, OffByDefault) {
    auto spec = workload_spec_from_json(minimal_json());
    ASSERT_TRUE(spec.ok());
    EXPECT_FALSE(spec->fast_path);
    EXPECT_EQ(to_json(*spec).at("fast_path"), json::value(false));
}

TEST(FastpathSpec, RoundTripsThroughJson) {
    auto object = minimal_json();
    object["fast_path"] = true;
    auto spec = workload_spec_from_json(object);
    ASSERT_TRUE(spec.ok());
    EXPECT_TRUE(spec->fast_path);
    auto again = workload_spec_from_json(to_json(*spec));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *spec);
}

TEST(FastpathSpec, WrongTypeNamesTheField) {
    auto object = minimal_json();
    object["fast_path"] = "yes";
    auto spec = workload_spec_from_json(object);
    ASSERT_FALSE(spec.ok());
    EXPECT_NE(spec.error().message.find("fast_path"), std::string::npos) << spec.error().message;
}

TEST(FastpathSpec, ConflictNamesTheField) {
    auto a = workload_spec_from_json(minimal_json());
    ASSERT_TRUE(a.ok());
    WorkloadSpec b = *a;
    b.fast_path = true;
    auto fields = differing_fields(*a, b);
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields[0], "fast_path");
}

TEST(FastpathSpec, ProxyProxyIsItsOwnSwitch) {
    auto object = minimal_json();
    object["fast_path_proxy_proxy"] = true;
    auto spec = workload_spec_from_json(object);
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    EXPECT_FALSE(spec->fast_path);
    EXPECT_TRUE(spec->fast_path_proxy_proxy);
    auto again = workload_spec_from_json(to_json(*spec));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *spec);
    auto plain = workload_spec_from_json(minimal_json());
    ASSERT_TRUE(plain.ok());
    EXPECT_FALSE(plain->fast_path_proxy_proxy);
    auto fields = differing_fields(*plain, *spec);
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields[0], "fast_path_proxy_proxy");
    object["fast_path_proxy_proxy"] = 1;
    auto wrong = workload_spec_from_json(object);
    ASSERT_FALSE(wrong.ok());
    EXPECT_NE(wrong.error().message.find("fast_path_proxy_proxy"), std::string::npos);
}

TEST(FastpathCounters, EveryCounterHasADistinctName) {
    std::set<std::string> names;
    for (unsigned c = 0; c < MESHLANE_FP_COUNTER_MAX; ++c) {
        std::string name = fastpath_counter_name(c);
        EXPECT_NE(name, "unknown") << "counter " << c;
        names.insert(name);
    }
    EXPECT_EQ(names.size(), static_cast<std::size_t>(MESHLANE_FP_COUNTER_MAX));
    EXPECT_STREQ(fastpath_counter_name(MESHLANE_FP_CNT_REDIRECTED_BYTES), "redirected_bytes");
    EXPECT_STREQ(fastpath_counter_name(MESHLANE_FP_COUNTER_MAX), "unknown");
}

TEST(FastpathConnState, NamesTheSpilledDirection) {
    fastpath_conn conn{};
    conn.state = MESHLANE_FASTPATH_ACCELERATED;
    EXPECT_EQ(fastpath_conn_state_text(conn), "accelerated");
    conn.spilled_from_accepting = 1;
    const std::string accepting = fastpath_conn_state_text(conn);
    EXPECT_EQ(accepting.rfind("accelerated, accepting -> connecting end spilled to TCP", 0), 0u)
        << accepting;
    conn.spilled_from_connecting = 1;
    EXPECT_NE(fastpath_conn_state_text(conn).find("both directions spilled"), std::string::npos);
    conn = fastpath_conn{};
    conn.state = MESHLANE_FASTPATH_TCP_ONLY;
    EXPECT_EQ(fastpath_conn_state_text(conn), "TCP only");
    conn.state = 3;  // the retired "spilled for good" state
    EXPECT_EQ(fastpath_conn_state_text(conn), "unknown state 3");
    for (const fastpath_conn& c : {conn, fastpath_conn{}})
        EXPECT_EQ(fastpath_conn_state_text(c).find("for good"), std::string::npos);
}

// Status names what is accelerated and why not, typed (docs/fastpath.md "Blocking readers").
TEST(FastpathStatus, HopsAndReasonsRenderTyped) {
    AgentStatus status;
    status.fast_path_available = true;
    status.fast_path_blocking_reader_hazard = true;
    status.fast_path_hops = {
        {FastPathHop::kAppProxyOutbound, false, FastPathOffReason::kBlockingReaderEagain},
        {FastPathHop::kAppProxyInbound, false, FastPathOffReason::kBlockingReaderEagain},
        {FastPathHop::kProxyProxy, true, FastPathOffReason::kNone}};
    const json::object fast = to_json(status).at("fast_path").as_object();
    EXPECT_EQ(fast.at("blocking_reader_hazard"), json::value(true));
    const json::array& hops = fast.at("hops").as_array();
    ASSERT_EQ(hops.size(), 3u);
    EXPECT_EQ(hops[0].at("hop"), json::value("app_proxy_outbound"));
    EXPECT_EQ(hops[0].at("reason"), json::value("blocking_reader_eagain"));
    EXPECT_EQ(hops[1].at("hop"), json::value("app_proxy_inbound"));
    EXPECT_EQ(hops[2].at("hop"), json::value("proxy_proxy"));
    EXPECT_EQ(hops[2].at("accelerated"), json::value(true));
    EXPECT_EQ(hops[2].at("reason"), json::value(""));
    EXPECT_STREQ(fast_path_off_reason_name(FastPathOffReason::kUnavailable), "unavailable");
}

TEST(FastpathStatus, BlockingReaderCounterAndPatternText) {
    EXPECT_STREQ(fastpath_counter_name(MESHLANE_FP_CNT_NOT_ELIGIBLE_BLOCKING_READER),
                 "not_eligible_blocking_reader");
    ReaderPatternResults results;
    EXPECT_EQ(results.text(), "none");
    results.eagain[static_cast<unsigned>(ReaderPattern::kOwnFinAck)] = 2;
    results.eagain[static_cast<unsigned>(ReaderPattern::kHalfClose)] = 1;
    EXPECT_EQ(results.total_eagain(), 3u);
    EXPECT_EQ(results.text(), "own_fin_ack 2, half_close 1");
}

}  // namespace
}  // namespace meshlane
