// GET /v1/connections and /v1/drops through RestRouter, with a fake ObservationSource.
#include "api/rest/observe_routes.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "agent/observe/observation_source.h"
#include "api/rest/rest_router.h"
#include "fake_workload_registry.h"

namespace meshlane::rest {
namespace {

namespace json = boost::json;

class FakeObservations : public ObservationSource {
  public:
    mutable DropQuery last_query;

    WorkloadConnections connections(std::uint32_t id, std::uint64_t cookie) const override {
        WorkloadConnections view;
        view.workload_id = id;
        view.netns_cookie = cookie;
        view.sides[MESHLANE_SIDE_UPSTREAM].established = 4;
        view.sides[MESHLANE_SIDE_UPSTREAM].latency.add(1'000'000);
        view.tcp.syn_retransmits = 1;
        ConnectionRecord record;
        record.outcome = ConnectOutcome::kRefused;
        record.error = 111;
        record.destination = "10.0.0.2:9";
        view.recent.push_back(record);
        return view;
    }
    WorkloadDrops drops(std::uint32_t id, std::uint64_t cookie,
                        const DropQuery& query) const override {
        last_query = query;
        WorkloadDrops view;
        view.workload_id = id;
        view.netns_cookie = cookie;
        view.by_reason.push_back({12, "NETFILTER_DROP", 2});
        view.total = 2;
        return view;
    }
    ObserverHealth health() const override {
        ObserverHealth health;
        health.connect_tracking = health.drop_tracking = true;
        health.lost_events["drops.rate_limited"] = 3;
        health.lost_events_total = 3;
        return health;
    }
    std::optional<std::uint32_t> drop_reason_value(std::string_view name) const override {
        if (name == "NETFILTER_DROP") return 12;
        return std::nullopt;
    }
};

class ObserveRoutesTest : public ::testing::Test {
  protected:
    void SetUp() override {
        WorkloadSpec spec;
        spec.name = "web";
        spec.cgroup_path = "/sys/fs/cgroup/web";
        spec.netns_path = "/run/netns/web";
        ASSERT_TRUE(registry_.enroll(spec));
    }
    Response call(const RestRouter& router, std::string target) {
        Request request{http::verb::get, target, 11};
        request.prepare_payload();
        return router.handle(request);
    }
    testing::FakeWorkloadRegistry registry_;
    FakeObservations observations_;
    RestRouter router_{registry_, 4096, &observations_};
};

TEST(ObserveQuery, ParsesAndDecodes) {
    auto query = parse_query("/v1/drops?workload=web&reason=NETFILTER%5FDROP&limit=5&flag");
    ASSERT_TRUE(query) << query.error().message;
    EXPECT_EQ(query->at("workload"), "web");
    EXPECT_EQ(query->at("reason"), "NETFILTER_DROP");
    EXPECT_EQ(query->at("limit"), "5");
    EXPECT_EQ(query->at("flag"), "");
    EXPECT_TRUE(parse_query("/v1/drops")->empty());
    EXPECT_FALSE(parse_query("/v1/drops?a=%4"));
    EXPECT_FALSE(parse_query("/v1/drops?a=%zz"));
    EXPECT_FALSE(parse_query("/v1/drops?a=1&a=2"));
}

TEST_F(ObserveRoutesTest, ConnectionsJoinWorkloadNames) {
    auto response = call(router_, "/v1/connections?workload=web");
    ASSERT_EQ(response.result(), http::status::ok) << response.body();
    auto body = json::parse(response.body());
    const auto& w = body.at("workloads").as_array().at(0);
    EXPECT_EQ(w.at("name").as_string(), "web");
    EXPECT_EQ(w.at("upstream").at("established").to_number<std::uint64_t>(), 4u);
    EXPECT_GE(w.at("upstream").at("latency").at("p50_ms").as_double(), 524.0);
    EXPECT_EQ(w.at("tcp").at("syn_retransmits").to_number<std::uint64_t>(), 1u);
    EXPECT_EQ(w.at("recent").as_array().at(0).at("outcome").as_string(), "refused");
    EXPECT_EQ(body.at("observer").at("lost_events_total").to_number<std::uint64_t>(), 3u);
}

TEST_F(ObserveRoutesTest, DropsPassTheQuery) {
    auto response =
        call(router_, "/v1/drops?workload=web&reason=NETFILTER_DROP&since=1000&limit=7");
    ASSERT_EQ(response.result(), http::status::ok) << response.body();
    EXPECT_EQ(observations_.last_query.reason, 12u);
    EXPECT_EQ(observations_.last_query.since_unix_ns, 1000 * 1'000'000LL);
    EXPECT_EQ(observations_.last_query.limit, 7u);
    auto body = json::parse(response.body());
    EXPECT_EQ(body.at("workloads").as_array().at(0).at("by_reason").as_array().at(0).at("reason"),
              "NETFILTER_DROP");
}

TEST_F(ObserveRoutesTest, BadQueriesAre400And404) {
    EXPECT_EQ(call(router_, "/v1/drops?reason=NOPE").result(), http::status::bad_request);
    EXPECT_EQ(call(router_, "/v1/drops?limit=x").result(), http::status::bad_request);
    EXPECT_EQ(call(router_, "/v1/drops?limit=100000").result(), http::status::bad_request);
    EXPECT_EQ(call(router_, "/v1/drops?colour=red").result(), http::status::bad_request);
    EXPECT_EQ(call(router_, "/v1/connections?workload=Bad_Name").result(),
              http::status::bad_request);
    EXPECT_EQ(call(router_, "/v1/connections?workload=other").result(), http::status::not_found);
}

// Every filter of /v1/connections and /v1/drops: a bad value is a 400 whose message names the
// parameter, so a script author sees what to fix.
TEST_F(ObserveRoutesTest, EveryBadFilterNamesItsParameter) {
    const std::pair<const char*, const char*> cases[] = {
        {"/v1/drops?reason=NOPE", "reason"},
        {"/v1/drops?limit=x", "limit"},
        {"/v1/drops?limit=-1", "limit"},
        {"/v1/drops?limit=100000", "limit"},
        {"/v1/drops?since=yesterday", "since"},
        {"/v1/drops?since=-5", "since"},
        {"/v1/drops?since=99999999999999999", "since"},
        {"/v1/drops?workload=Bad_Name", "workload"},
        {"/v1/drops?colour=red", "colour"},
        {"/v1/connections?since=1.5", "since"},
        {"/v1/connections?since=", "since"},
        {"/v1/connections?workload=-x", "workload"},
        {"/v1/connections?limit=5", "limit"},
    };
    for (const auto& [target, parameter] : cases) {
        auto response = call(router_, target);
        EXPECT_EQ(response.result(), http::status::bad_request) << target;
        EXPECT_NE(response.body().find(parameter), std::string::npos)
            << target << ": " << response.body();
    }
}

TEST_F(ObserveRoutesTest, ConnectionsSinceFiltersRecentEventsOnly) {
    // The fake's one recent record has time 0: since=1 hides it, the totals stay.
    auto all = json::parse(call(router_, "/v1/connections?since=0").body());
    EXPECT_EQ(all.at("workloads").as_array().at(0).at("recent").as_array().size(), 1u);
    auto later = json::parse(call(router_, "/v1/connections?workload=web&since=1").body());
    const auto& w = later.at("workloads").as_array().at(0);
    EXPECT_TRUE(w.at("recent").as_array().empty());
    EXPECT_EQ(w.at("upstream").at("established").to_number<std::uint64_t>(), 4u);
}

TEST_F(ObserveRoutesTest, DropsWithoutFiltersUseTheDefaults) {
    ASSERT_EQ(call(router_, "/v1/drops").result(), http::status::ok);
    EXPECT_FALSE(observations_.last_query.reason);
    EXPECT_FALSE(observations_.last_query.since_unix_ns);
    EXPECT_EQ(observations_.last_query.limit, 100u);
}

TEST_F(ObserveRoutesTest, WithoutAnObserverTheViewsAre503) {
    RestRouter bare{registry_, 4096};
    EXPECT_EQ(call(bare, "/v1/connections").result(), http::status::service_unavailable);
    EXPECT_EQ(call(bare, "/v1/drops").result(), http::status::service_unavailable);
}

}  // namespace
}  // namespace meshlane::rest
