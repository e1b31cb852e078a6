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
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/common/result.h"
#include "agent/events/event_bus.h"
#include "agent/model/workload_registry.h"
#include "api/metrics/metrics_options.h"

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

// A streaming route (GET /v1/events?follow=true) answers with the response header only and
// fills this: the session then writes `backlog` and the subscription's items, one NDJSON line
// each (`encode`), as chunks until the client leaves or the agent stops.
struct StreamingReply {
    bool allowed = false;  // in: the session has a free streaming slot (else the route says 429)
    std::unique_ptr<events::Subscription> subscription;  // out: set when streaming
    std::vector<events::StreamItem> backlog;             // out: sent before live items
    std::string (*encode)(const events::StreamItem&) = nullptr;
};

struct RouteContext {
    WorkloadRegistry& registry;
    const Request& request;
    const PathParams& params;
    // The observability views' data; null when the agent runs without it (handlers answer 503).
    const ObservationSource* observations = nullptr;
    // The agent's event bus (GET /v1/events, /metrics); null: those routes answer 503.
    events::EventBus* events = nullptr;
    // Null when the caller cannot stream (RestRouter::handle without a StreamingReply).
    StreamingReply* streaming = nullptr;
    // GET /metrics cardinality switches; null: the defaults.
    const metrics::MetricsOptions* metrics = nullptr;
};

using Handler = Response (*)(const RouteContext&);

struct Route {
    http::verb method;
    std::string_view pattern;  // "/v1/workloads/{name}": literal segments and {parameters}
    std::string_view help;
    bool mutates;  // state-changing routes must be POST or DELETE (checked by a unit test)
    Handler handler;
    // The handler makes blocking calls (BPF attach, probes in the pod, /proc walks, child
    // processes): the server runs it on its worker pool with a deadline, never on the io thread
    // that answers everything else (/v1/health included).
    bool blocking = false;
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

// The route that `request` selects is a blocking one (Route::blocking); false when none matches.
bool runs_blocking(const Request& request);

// Stable machine-readable codes used in error bodies.
std::string_view error_code_for_status(http::status status);
http::status http_status_for_errno(int code);

class RestRouter {
  public:
    explicit RestRouter(WorkloadRegistry& registry, std::size_t body_limit = kDefaultBodyLimit,
                        const ObservationSource* observations = nullptr,
                        events::EventBus* events = nullptr, metrics::MetricsOptions metrics = {})
        : registry_(registry),
          body_limit_(body_limit),
          observations_(observations),
          events_(events),
          metrics_(metrics) {}

    // HEAD is answered wherever GET is: the GET response's status and headers (Content-Length
    // included), no body.

    // Never throws: handler exceptions become 500. Copies version and keep-alive from the
    // request and sets Content-Length.
    Response handle(const Request& request) const;
    // The same, for a transport that can stream: when `streaming.subscription` is set on return,
    // the response is a header only (no Content-Length; the session sends a chunked body).
    Response handle(const Request& request, StreamingReply& streaming) const;

  private:
    Response handle(const Request& request, StreamingReply* streaming) const;
    Response dispatch(const Request& request, StreamingReply* streaming) const;

    WorkloadRegistry& registry_;
    std::size_t body_limit_;
    const ObservationSource* observations_;
    events::EventBus* events_;
    metrics::MetricsOptions metrics_;
};

}  // namespace meshlane::rest
