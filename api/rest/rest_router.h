// The REST API as pure functions: Request in, Response out, no sockets. One route table holds
// method, path pattern, help text, the mutates-state flag and the handler; it drives dispatch,
// 405/Allow, `meshlane` docs and the OpenAPI consistency test alike. Sessions (rest_server.*)
// only move bytes and enforce transport limits.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json/value.hpp>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/common/result.h"
#include "agent/workload/workload_registry.h"

namespace meshlane {
class ObservationSource;  // agent/observe/observation_source.h
}

namespace meshlane::rest {

namespace http = boost::beast::http;

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

inline constexpr std::size_t kDefaultBodyLimit = 1 << 20;

// Values of `{name}` segments, in pattern order.
class PathParams {
  public:
    void add(std::string name, std::string value) {
        params_.emplace_back(std::move(name), std::move(value));
    }
    // Empty when absent; patterns guarantee their own parameters are present and non-empty.
    std::string get(std::string_view name) const;

  private:
    std::vector<std::pair<std::string, std::string>> params_;
};

struct RouteContext {
    WorkloadRegistry& registry;
    const Request& request;
    const PathParams& params;
    // The observability views' data; null when the agent runs without it (handlers answer 503).
    const ObservationSource* observations = nullptr;
};

using Handler = Response (*)(const RouteContext&);

struct Route {
    http::verb method;
    std::string_view pattern;  // "/v1/workloads/{name}": literal segments and {parameters}
    std::string_view help;
    bool mutates;  // state-changing routes must be POST or DELETE (checked by a unit test)
    Handler handler;
};

// The one route table, in documentation order.
std::span<const Route> routes();

// Matches `path` (no query string) against `pattern`; fills params on success.
bool match_path(std::string_view pattern, std::string_view path, PathParams& params);

// Error body {"error": message, "code": code}.
Response error_response(http::status status, std::string_view code, std::string_view message);
// Error.code (errno) -> HTTP status: EINVAL 400, ENOENT 404, EEXIST 409, EPERM/EACCES 403,
// anything else 500.
Response error_response(const Error& error);
Response json_response(http::status status, const boost::json::value& body);

// Stable machine-readable codes used in error bodies.
std::string_view error_code_for_status(http::status status);
http::status http_status_for_errno(int code);

class RestRouter {
  public:
    explicit RestRouter(WorkloadRegistry& registry, std::size_t body_limit = kDefaultBodyLimit,
                        const ObservationSource* observations = nullptr)
        : registry_(registry), body_limit_(body_limit), observations_(observations) {}

    // Never throws: handler exceptions become 500. Copies version and keep-alive from the
    // request and sets Content-Length.
    Response handle(const Request& request) const;

  private:
    Response dispatch(const Request& request) const;

    WorkloadRegistry& registry_;
    std::size_t body_limit_;
    const ObservationSource* observations_;
};

}  // namespace meshlane::rest
