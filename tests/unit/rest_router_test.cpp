// The REST handlers, through RestRouter::handle, without sockets.
#include "api/rest/rest_router.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "fake_workload_registry.h"

namespace meshlane::rest {
namespace {

namespace json = boost::json;

const char* const kSpec =
    R"({"name":"web","cgroup":"/sys/fs/cgroup/web","netns":"/run/netns/web"})";

class RestRouterTest : public ::testing::Test {
  protected:
    Response call(http::verb method, std::string target, std::string body = "") {
        Request request{method, target, 11};
        request.body() = std::move(body);
        request.prepare_payload();
        return router_.handle(request);
    }

    static json::value body_of(const Response& response) {
        EXPECT_EQ(response[http::field::content_type], "application/json");
        return json::parse(response.body());
    }

    // The error body shape is part of the API: {"error": "...", "code": "..."}.
    static void expect_error(const Response& response, http::status status, std::string_view code,
                             std::string_view mentions = "") {
        EXPECT_EQ(response.result(), status) << response.body();
        auto body = body_of(response);
        ASSERT_TRUE(body.is_object());
        EXPECT_EQ(body.as_object().size(), 2u);
        EXPECT_EQ(body.at("code").as_string(), code);
        EXPECT_NE(std::string(body.at("error").as_string()).find(mentions), std::string::npos)
            << body.at("error").as_string() << " should mention " << mentions;
    }

    testing::FakeWorkloadRegistry registry_;
    RestRouter router_{registry_, 4096};
};

TEST_F(RestRouterTest, Health) {
    auto response = call(http::verb::get, "/v1/health");
    EXPECT_EQ(response.result(), http::status::ok);
    EXPECT_EQ(body_of(response), (json::value{{"status", "ok"}}));
    EXPECT_EQ(response[http::field::content_length], std::to_string(response.body().size()));
}

TEST_F(RestRouterTest, Status) {
    auto body = body_of(call(http::verb::get, "/v1/status"));
    EXPECT_EQ(body.at("version").as_string(), "test");
    EXPECT_EQ(body.at("max_workloads").to_number<int>(), 4096);
    EXPECT_TRUE(body.at("features").at("sk_lookup").as_bool());
}

TEST_F(RestRouterTest, EnrollCreatesThenIsIdempotent) {
    auto created = call(http::verb::post, "/v1/workloads", kSpec);
    EXPECT_EQ(created.result(), http::status::created) << created.body();
    EXPECT_EQ(created[http::field::location], "/v1/workloads/web");
    auto body = body_of(created);
    EXPECT_EQ(body.at("name").as_string(), "web");
    EXPECT_EQ(body.at("spec").at("outbound_port").to_number<int>(), 15001);
    EXPECT_EQ(body.at("counters").at("outbound_redirected").to_number<int>(), 7);
    EXPECT_TRUE(body.at("inbound_listener").at("v4").as_bool());

    auto again = call(http::verb::post, "/v1/workloads", kSpec);
    EXPECT_EQ(again.result(), http::status::ok);
    EXPECT_EQ(body_of(again).at("name").as_string(), "web");
}

TEST_F(RestRouterTest, EnrollConflictIs409) {
    ASSERT_EQ(call(http::verb::post, "/v1/workloads", kSpec).result(), http::status::created);
    auto other = json::parse(kSpec).as_object();
    other["inbound_port"] = 15007;
    expect_error(call(http::verb::post, "/v1/workloads", json::serialize(other)),
                 http::status::conflict, "already_exists", "inbound_port");
}

TEST_F(RestRouterTest, EnrollRejectsBadBodiesWithoutCallingTheRegistry) {
    const std::pair<std::string, std::string> cases[] = {
        {"", "not valid JSON"},
        {"{", "not valid JSON"},
        {"[]", "JSON object"},
        {R"({"name":"web","cgroup":"/c","netns":"/n","bogus":1})", "bogus"},
        {R"({"name":"web","cgroup":"/c","netns":"/n","proxy_uid":"x"})", "proxy_uid"},
        {R"({"name":"web","cgroup":"/c","netns":"/n","outbound_port":70000})", "outbound_port"},
        {R"({"name":"web","cgroup":"/c","netns":"/n","include_cidrs":["10.0.0.0/40"]})",
         "include_cidrs"},
        {R"({"cgroup":"/c","netns":"/n"})", "name"},
        {R"({"name":"Web!","cgroup":"/c","netns":"/n"})", "name"},
        // Parses, but validate() refuses it: the listener port is excluded.
        {R"({"name":"web","cgroup":"/c","netns":"/n","exclude_outbound_ports":[15001]})",
         "exclude_outbound_ports"},
    };
    for (const auto& [body, mention] : cases) {
        SCOPED_TRACE(body);
        expect_error(call(http::verb::post, "/v1/workloads", body), http::status::bad_request,
                     "invalid_argument", mention);
    }
    EXPECT_EQ(registry_.enroll_calls, 0);
}

TEST_F(RestRouterTest, HugeBodyIsRejected) {
    std::string huge = R"({"name":"web","cgroup":")" + std::string(8192, 'a') + R"("})";
    expect_error(call(http::verb::post, "/v1/workloads", huge), http::status::payload_too_large,
                 "payload_too_large", "4096");
    EXPECT_EQ(registry_.enroll_calls, 0);
}

TEST_F(RestRouterTest, RegistryErrnoMapsToStatus) {
    const std::tuple<int, http::status, std::string_view> cases[] = {
        {EPERM, http::status::forbidden, "permission_denied"},
        {EACCES, http::status::forbidden, "permission_denied"},
        {EEXIST, http::status::conflict, "already_exists"},
        {ENOENT, http::status::not_found, "not_found"},
        {EINVAL, http::status::bad_request, "invalid_argument"},
        {EBUSY, http::status::internal_server_error, "internal"},
        {0, http::status::internal_server_error, "internal"},
    };
    for (const auto& [code, status, name] : cases) {
        EXPECT_EQ(http_status_for_errno(code), status) << code;
        if (code == 0) continue;
        registry_.fail_with = code;
        expect_error(call(http::verb::post, "/v1/workloads", kSpec), status, name,
                     "attach connect4");
    }
}

TEST_F(RestRouterTest, ListAndGet) {
    EXPECT_EQ(body_of(call(http::verb::get, "/v1/workloads")),
              (json::value{{"workloads", json::array{}}}));
    ASSERT_EQ(call(http::verb::post, "/v1/workloads", kSpec).result(), http::status::created);
    auto list = body_of(call(http::verb::get, "/v1/workloads"));
    ASSERT_EQ(list.at("workloads").as_array().size(), 1u);
    EXPECT_EQ(list.at("workloads").at(0).at("name").as_string(), "web");

    auto one = call(http::verb::get, "/v1/workloads/web");
    EXPECT_EQ(one.result(), http::status::ok);
    EXPECT_EQ(body_of(one).at("programs").at(0).at("program").as_string(), "redirect_connect4");
    // The query string is not part of the path.
    EXPECT_EQ(call(http::verb::get, "/v1/workloads/web?verbose=1").result(), http::status::ok);
}

TEST_F(RestRouterTest, GetUnknownIs404AndBadNameIs400) {
    expect_error(call(http::verb::get, "/v1/workloads/nope"), http::status::not_found, "not_found",
                 "nope");
    expect_error(call(http::verb::get, "/v1/workloads/No%2FPe"), http::status::bad_request,
                 "invalid_argument", "name");
}

TEST_F(RestRouterTest, DeleteIsIdempotent) {
    ASSERT_EQ(call(http::verb::post, "/v1/workloads", kSpec).result(), http::status::created);
    auto first = call(http::verb::delete_, "/v1/workloads/web");
    EXPECT_EQ(first.result(), http::status::ok);
    EXPECT_EQ(body_of(first), (json::value{{"name", "web"}, {"removed", true}}));
    auto second = call(http::verb::delete_, "/v1/workloads/web");
    EXPECT_EQ(second.result(), http::status::ok);
    EXPECT_EQ(body_of(second), (json::value{{"name", "web"}, {"removed", false}}));
    registry_.fail_with = EPERM;
    expect_error(call(http::verb::delete_, "/v1/workloads/web"), http::status::forbidden,
                 "permission_denied");
}

TEST_F(RestRouterTest, UnknownPathsAre404Json) {
    for (const char* target : {"/", "/v1", "/v2/health", "/v1/health/", "/v1/workloads/",
                               "/v1/workloads/web/extra", "//v1/health", "v1/health", "*"}) {
        SCOPED_TRACE(target);
        expect_error(call(http::verb::get, target), http::status::not_found, "not_found");
    }
}

TEST_F(RestRouterTest, WrongMethodIs405WithAllow) {
    const std::tuple<http::verb, const char*, const char*> cases[] = {
        // HEAD is answered wherever GET is (ops_health_test.cpp), so Allow names it.
        {http::verb::post, "/v1/health", "GET, HEAD"},
        {http::verb::delete_, "/v1/status", "GET, HEAD"},
        {http::verb::put, "/v1/workloads", "GET, HEAD, POST"},
        {http::verb::patch, "/v1/workloads/web", "GET, HEAD, DELETE"},
        {http::verb::post, "/v1/workloads/web", "GET, HEAD, DELETE"},
    };
    for (const auto& [method, target, allow] : cases) {
        SCOPED_TRACE(target);
        auto response = call(method, target, kSpec);
        expect_error(response, http::status::method_not_allowed, "method_not_allowed");
        EXPECT_EQ(response[http::field::allow], allow);
    }
    EXPECT_EQ(registry_.enroll_calls, 0);
}

TEST_F(RestRouterTest, HandlerExceptionIs500) {
    registry_.throw_on_list = true;
    expect_error(call(http::verb::get, "/v1/workloads"), http::status::internal_server_error,
                 "internal", "boom");
}

TEST_F(RestRouterTest, KeepAliveAndVersionFollowTheRequest) {
    Request request{http::verb::get, "/v1/health", 10};
    EXPECT_FALSE(router_.handle(request).keep_alive());
    EXPECT_EQ(router_.handle(request).version(), 10u);
    Request close{http::verb::get, "/v1/health", 11};
    close.keep_alive(false);
    EXPECT_FALSE(router_.handle(close).keep_alive());
}

TEST(RestRoutes, MutatingRoutesArePostOrDeleteOnly) {
    for (const auto& route : routes()) {
        SCOPED_TRACE(std::string(route.pattern));
        const bool state_changing_verb =
            route.method == http::verb::post || route.method == http::verb::delete_;
        EXPECT_EQ(route.mutates, state_changing_verb);
        EXPECT_FALSE(route.help.empty());
        EXPECT_NE(route.handler, nullptr);
    }
}

TEST(RestRoutes, PathMatching) {
    PathParams params;
    EXPECT_TRUE(match_path("/v1/workloads/{name}", "/v1/workloads/web", params));
    EXPECT_EQ(params.get("name"), "web");
    EXPECT_EQ(params.get("other"), "");
    EXPECT_FALSE(match_path("/v1/workloads/{name}", "/v1/workloads", params));
    EXPECT_FALSE(match_path("/v1/workloads/{name}", "/v1/workloads//", params));
    EXPECT_FALSE(match_path("/v1/workloads", "/v1/workloadsx", params));
    EXPECT_TRUE(match_path("/v1/workloads", "/v1/workloads", params));
}

// api/openapi.yaml documents exactly the route table: every (path, method) of one appears in
// the other. A light line-based reading is enough for the file's fixed layout.
std::set<std::string> openapi_operations() {
    // MESHLANE_SOURCE_DIR, not __FILE__: ccache's base_dir makes __FILE__ relative to the build.
    const auto path = std::filesystem::path(MESHLANE_SOURCE_DIR) / "api" / "openapi.yaml";
    std::ifstream in(path);
    EXPECT_TRUE(in) << "cannot open " << path;
    std::set<std::string> operations;
    bool in_paths = false;
    std::string current_path;
    for (std::string line; std::getline(in, line);) {
        if (line == "paths:") {
            in_paths = true;
            continue;
        }
        if (!in_paths) continue;
        if (!line.empty() && line[0] != ' ' && line[0] != '#') break;  // next top-level key
        if (line.rfind("  /", 0) == 0) {
            current_path = line.substr(2, line.find(':', 2) - 2);
        } else if (line.rfind("    ", 0) == 0 && line.size() > 4 && line[4] != ' ') {
            const auto method = line.substr(4, line.find(':') - 4);
            if (method == "get" || method == "post" || method == "delete" || method == "put" ||
                method == "patch") {
                operations.insert(method + " " + current_path);
            }
        }
    }
    return operations;
}

TEST(RestRoutes, OpenApiDocumentsExactlyTheRouteTable) {
    std::set<std::string> table;
    for (const auto& route : routes()) {
        std::string method(http::to_string(route.method));
        for (auto& c : method) c = static_cast<char>(std::tolower(c));
        table.insert(method + " " + std::string(route.pattern));
    }
    EXPECT_EQ(openapi_operations(), table);
}

}  // namespace
}  // namespace meshlane::rest
