// Dispatch and error mapping. The route table and handlers live in rest_routes.cpp.
#include "api/rest/rest_router.h"

#include <boost/json.hpp>
#include <exception>

namespace meshlane::rest {

namespace json = boost::json;

namespace {

std::string_view path_of(std::string_view target) {
    const auto query = target.find('?');
    return target.substr(0, query);
}

// Pops the next '/'-separated segment; `rest` keeps its leading '/' stripped.
std::string_view next_segment(std::string_view& rest) {
    const auto slash = rest.find('/');
    const auto segment = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    return segment;
}

std::string allow_header(const std::vector<http::verb>& methods) {
    std::string allow;
    for (const auto method : methods) {
        if (!allow.empty()) allow += ", ";
        allow += std::string(http::to_string(method));
    }
    return allow;
}

}  // namespace

std::string PathParams::get(std::string_view name) const {
    for (const auto& [key, value] : params_) {
        if (key == name) return value;
    }
    return {};
}

bool match_path(std::string_view pattern, std::string_view path, PathParams& params) {
    if (pattern.empty() || path.empty() || pattern.front() != '/' || path.front() != '/') {
        return false;
    }
    // "/v1/workloads/" is not "/v1/workloads": one spelling per resource.
    if (path.size() > 1 && path.back() == '/') return false;
    pattern.remove_prefix(1);
    path.remove_prefix(1);
    PathParams found;
    while (!pattern.empty() || !path.empty()) {
        if (pattern.empty() || path.empty()) return false;
        const auto want = next_segment(pattern);
        const auto got = next_segment(path);
        if (want.size() > 2 && want.front() == '{' && want.back() == '}') {
            if (got.empty()) return false;
            found.add(std::string(want.substr(1, want.size() - 2)), std::string(got));
        } else if (want != got) {
            return false;
        }
    }
    params = std::move(found);
    return true;
}

std::string_view error_code_for_status(http::status status) {
    switch (status) {
        case http::status::bad_request:
            return "invalid_argument";
        case http::status::forbidden:
            return "permission_denied";
        case http::status::not_found:
            return "not_found";
        case http::status::method_not_allowed:
            return "method_not_allowed";
        case http::status::conflict:
            return "already_exists";
        case http::status::payload_too_large:
            return "payload_too_large";
        case http::status::too_many_requests:
            return "too_many_connections";
        case http::status::request_header_fields_too_large:
            return "header_too_large";
        case http::status::service_unavailable:
            return "unavailable";
        default:
            return "internal";
    }
}

http::status http_status_for_errno(int code) {
    switch (code) {
        case EINVAL:
        // A path the client gave that is not what it must be (also mapped where it arises).
        case ENOTDIR:
        case EISDIR:
        case ENAMETOOLONG:
        case ELOOP:
        case ENXIO:
            return http::status::bad_request;
        case ENOENT:
            return http::status::not_found;
        case EEXIST:
            return http::status::conflict;
        case EPERM:
        case EACCES:
            return http::status::forbidden;
        case ENOTSUP:  // a disabled part of the agent (e.g. the redirect datapath)
            return http::status::service_unavailable;
        default:
            return http::status::internal_server_error;
    }
}

Response json_response(http::status status, const json::value& body) {
    Response response{status, 11};
    response.set(http::field::content_type, "application/json");
    response.set(http::field::cache_control, "no-store");
    // The trailing newline keeps `curl --unix-socket` output readable.
    response.body() = json::serialize(body) + "\n";
    return response;
}

Response error_response(http::status status, std::string_view code, std::string_view message) {
    return json_response(status, json::object{{"error", message}, {"code", code}});
}

Response error_response(const Error& error) {
    const auto status = http_status_for_errno(error.code);
    return error_response(status, error_code_for_status(status), error.message);
}

bool runs_blocking(const Request& request) {
    const auto path = path_of(request.target());
    for (const auto& route : routes()) {
        PathParams params;
        if (route.method == request.method() && match_path(route.pattern, path, params))
            return route.blocking;
    }
    return false;
}

Response RestRouter::dispatch(const Request& request, StreamingReply* streaming) const {
    const auto path = path_of(request.target());
    // HEAD runs the GET handler (and never streams); handle() drops the body.
    const bool head = request.method() == http::verb::head;
    const auto method = head ? http::verb::get : request.method();
    if (head) streaming = nullptr;
    std::vector<http::verb> allowed;
    for (const auto& route : routes()) {
        PathParams params;
        if (!match_path(route.pattern, path, params)) continue;
        if (route.method == method) {
            // Defence in depth: the session's parser enforces the same limit while reading.
            if (request.body().size() > body_limit_) {
                return error_response(
                    http::status::payload_too_large, "payload_too_large",
                    "request body exceeds " + std::to_string(body_limit_) + " bytes");
            }
            return route.handler(RouteContext{registry_, request, params, observations_, events_,
                                              streaming, &metrics_});
        }
        allowed.push_back(route.method);
        if (route.method == http::verb::get) allowed.push_back(http::verb::head);
    }
    if (allowed.empty()) {
        return error_response(http::status::not_found, "not_found",
                              "no such endpoint: " + std::string(path));
    }
    auto response = error_response(
        http::status::method_not_allowed, "method_not_allowed",
        std::string(request.method_string()) + " is not allowed on " + std::string(path));
    response.set(http::field::allow, allow_header(allowed));
    return response;
}

Response RestRouter::handle(const Request& request) const { return handle(request, nullptr); }

Response RestRouter::handle(const Request& request, StreamingReply& streaming) const {
    return handle(request, &streaming);
}

Response RestRouter::handle(const Request& request, StreamingReply* streaming) const {
    Response response;
    try {
        response = dispatch(request, streaming);
    } catch (const std::exception& e) {
        if (streaming != nullptr) streaming->subscription.reset();
        response = error_response(http::status::internal_server_error, "internal",
                                  std::string("internal error: ") + e.what());
    }
    response.version(request.version());
    if (streaming != nullptr && streaming->subscription) {
        // The body follows as chunks and ends with the connection.
        response.keep_alive(false);
        response.chunked(true);
        return response;
    }
    response.keep_alive(request.keep_alive());
    response.prepare_payload();
    if (request.method() == http::verb::head) {
        // Content-Length stays the GET body's, as RFC 9110 9.3.2 describes for HEAD.
        response.body().clear();
    }
    return response;
}

}  // namespace meshlane::rest
