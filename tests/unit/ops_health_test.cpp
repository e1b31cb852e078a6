// Health that tells the truth: the readiness rule (agent/model/readiness.h), /healthz and
// /readyz, HEAD wherever GET is served, and the scrape listener's routing (nothing but
// GET|HEAD /metrics, /healthz, /readyz).
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "agent/model/readiness.h"
#include "api/rest/rest_router.h"
#include "api/rest/scrape_server.h"
#include "fake_workload_registry.h"

namespace meshlane {
namespace {

namespace http = rest::http;
namespace json = boost::json;

AgentStatus status_with(std::map<std::string, FeatureState> states) {
    AgentStatus status;
    status.feature_states = std::move(states);
    return status;
}

const FeatureState kOn{.enabled = true, .essential = false, .reason = ""};
const FeatureState kEssentialOn{.enabled = true, .essential = true, .reason = ""};

TEST(Readiness, EveryPartOnIsReady) {
    const auto report = evaluate_readiness(
        status_with({{"redirect", kEssentialOn}, {"observe_drops", kOn}, {"fast_path", kOn}}));
    EXPECT_EQ(report.state, Readiness::kReady);
    EXPECT_TRUE(report.issues.empty());
    EXPECT_TRUE(report.serving());
    EXPECT_EQ(report.summary(), "");
}

TEST(Readiness, OptionalPartOffIsDegradedButOffByConfigIsNot) {
    const FeatureState rejected{.enabled = false, .essential = false, .reason = "verifier"};
    const FeatureState configured{
        .enabled = false, .essential = false, .reason = "observe = false", .by_config = true};
    auto report =
        evaluate_readiness(status_with({{"redirect", kEssentialOn}, {"observe_drops", rejected}}));
    EXPECT_EQ(report.state, Readiness::kDegraded);
    ASSERT_EQ(report.issues.size(), 1u);
    EXPECT_EQ(report.issues[0].problem, ReadinessProblem::kOptionalFeatureOff);
    EXPECT_EQ(report.summary(), "observe_drops is off: verifier");
    EXPECT_TRUE(report.serving());
    report = evaluate_readiness(
        status_with({{"redirect", kEssentialOn}, {"observe_drops", configured}}));
    EXPECT_EQ(report.state, Readiness::kReady);
}

TEST(Readiness, EssentialPartOffIsNotReadyAndListedFirst) {
    const FeatureState redirect_off{.enabled = false, .essential = true, .reason = "no BTF"};
    const FeatureState fast_off{.enabled = false, .essential = false, .reason = "self-test"};
    const auto report =
        evaluate_readiness(status_with({{"fast_path", fast_off}, {"redirect", redirect_off}}));
    EXPECT_EQ(report.state, Readiness::kNotReady);
    EXPECT_FALSE(report.serving());
    ASSERT_EQ(report.issues.size(), 2u);
    EXPECT_EQ(report.issues[0].feature, "redirect");
    EXPECT_EQ(to_string(report.issues[0].problem), "essential_feature_off");
    EXPECT_EQ(report.issues[1].feature, "fast_path");
}

TEST(Readiness, DatapathReachableNeedsThePinDirectoryOnlyWithRedirectOn) {
    auto status = status_with({{"redirect", kEssentialOn}});
    status.bpffs_pin_dir = "/nonexistent/meshlane-pins";
    EXPECT_FALSE(datapath_reachable(status));
    status.bpffs_pin_dir = "/";
    EXPECT_TRUE(datapath_reachable(status));
    status = status_with({{"redirect", {.enabled = false, .essential = true, .reason = "x"}}});
    status.bpffs_pin_dir = "/nonexistent/meshlane-pins";
    EXPECT_TRUE(datapath_reachable(status));  // nothing to reach; a restart would not help
}

struct HealthFixture : ::testing::Test {
    testing::FakeWorkloadRegistry registry;
    rest::RestRouter router{registry};

    rest::Response call(http::verb method, const char* target) {
        rest::Request request{method, target, 11};
        return router.handle(request);
    }
};

TEST_F(HealthFixture, ReadyzAnswersByTheRule) {
    registry.feature_states = {{"redirect", kEssentialOn}};
    auto response = call(http::verb::get, "/readyz");
    EXPECT_EQ(response.result(), http::status::ok);
    EXPECT_EQ(json::parse(response.body()).at("status"), "ready");
    registry.feature_states["observe_drops"] = {.enabled = false, .reason = "verifier"};
    response = call(http::verb::get, "/readyz");
    EXPECT_EQ(response.result(), http::status::ok);
    EXPECT_EQ(json::parse(response.body()).at("status"), "degraded");
    registry.feature_states["redirect"] = {.enabled = false, .essential = true, .reason = "gone"};
    response = call(http::verb::get, "/readyz");
    EXPECT_EQ(response.result(), http::status::service_unavailable);
    const auto body = json::parse(response.body());
    EXPECT_EQ(body.at("status"), "not_ready");
    EXPECT_EQ(body.at("issues").at(0).at("feature"), "redirect");
    EXPECT_EQ(body.at("issues").at(0).at("reason"), "gone");
    // Liveness stays: restarting would not bring a kernel feature back.
    EXPECT_EQ(call(http::verb::get, "/healthz").result(), http::status::ok);
}

// HEAD wherever GET is served: the GET's status and Content-Length, no body; never a 405.
TEST_F(HealthFixture, HeadIsAnsweredLikeGetWithoutBody) {
    for (const char* target : {"/v1/health", "/healthz", "/readyz", "/metrics", "/v1/status"}) {
        const auto get = call(http::verb::get, target);
        const auto head = call(http::verb::head, target);
        EXPECT_EQ(head.result(), get.result()) << target;
        EXPECT_TRUE(head.body().empty()) << target;
        EXPECT_EQ(head[http::field::content_length], std::to_string(get.body().size())) << target;
    }
    // A mutating route is not reachable through HEAD, and its Allow header says HEAD is not it.
    const auto response = call(http::verb::head, "/v1/workloads/web/verify");
    EXPECT_EQ(response.result(), http::status::method_not_allowed);
    EXPECT_EQ(response[http::field::allow], "POST");
    EXPECT_NE(call(http::verb::put, "/v1/health")[http::field::allow].find("HEAD"),
              std::string::npos);
}

rest::Response scrape(testing::FakeWorkloadRegistry& registry, http::verb method,
                      const char* target, std::string body = "") {
    rest::Request request{method, target, 11};
    request.body() = std::move(body);
    return rest::handle_scrape_request(request, rest::ScrapeContext{registry});
}

TEST(ScrapeListener, ServesOnlyTheThreeReadOnlyPaths) {
    testing::FakeWorkloadRegistry registry;
    for (const char* target : {"/metrics", "/metrics?exclude=process", "/healthz", "/readyz"}) {
        EXPECT_EQ(scrape(registry, http::verb::get, target).result(), http::status::ok) << target;
        const auto head = scrape(registry, http::verb::head, target);
        EXPECT_EQ(head.result(), http::status::ok) << target;
        EXPECT_TRUE(head.body().empty());
    }
    for (const char* target :
         {"/", "/v1/health", "/v1/status", "/v1/workloads", "/v1/events", "/metrics/", "/readyz/x"})
        EXPECT_EQ(scrape(registry, http::verb::get, target).result(), http::status::not_found)
            << target;
    for (auto method : {http::verb::post, http::verb::delete_, http::verb::put}) {
        const auto response = scrape(registry, method, "/metrics");
        EXPECT_EQ(response.result(), http::status::method_not_allowed);
        EXPECT_EQ(response[http::field::allow], "GET, HEAD");
    }
    EXPECT_EQ(scrape(registry, http::verb::get, "/metrics", "x").result(),
              http::status::payload_too_large);
    // Nothing reached the registry's mutating side.
    EXPECT_EQ(registry.enroll_calls, 0);
}

}  // namespace
}  // namespace meshlane
