#include "api/rest/diagnose_routes.h"

#include <boost/json.hpp>
#include <charconv>

#include "agent/diagnose/diagnose_service.h"
#include "agent/diagnose/diagnosis.h"
#include "agent/diagnose/verify.h"

namespace meshlane::rest {

namespace {

diagnose::DiagnoseEnvironment environment(const RouteContext& context) {
    diagnose::DiagnoseEnvironment env;
    env.registry = &context.registry;
    env.observations = context.observations;
    env.tls = diagnose::tls_stats_reader(context.observations);
    return env;
}

// The only query parameter: window=SECONDS (how far back observations count).
Result<std::chrono::seconds> window_of(std::string_view target) {
    const auto mark = target.find('?');
    if (mark == std::string_view::npos) return diagnose::kDefaultWindow;
    const auto query = target.substr(mark + 1);
    if (query.empty()) return diagnose::kDefaultWindow;
    constexpr std::string_view key = "window=";
    if (query.substr(0, key.size()) != key || query.find('&') != std::string_view::npos)
        return Error::invalid("the only query parameter is window=SECONDS");
    const auto text = query.substr(key.size());
    long long seconds = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
    if (ec != std::errc{} || end != text.data() + text.size() || text.empty())
        return Error::invalid("window must be a number of seconds");
    return std::chrono::seconds(seconds);
}

}  // namespace

Response diagnose_workload(const RouteContext& context) {
    auto window = window_of(context.request.target());
    if (!window) return error_response(window.error());
    auto report =
        diagnose::diagnose_workload(environment(context), context.params.get("name"), *window);
    if (!report) return error_response(report.error());
    return json_response(http::status::ok, diagnose::to_json(report->input, report->findings));
}

Response verify_workload(const RouteContext& context) {
    auto report = diagnose::verify_workload(environment(context), context.params.get("name"));
    if (!report) return error_response(report.error());
    return json_response(http::status::ok, diagnose::to_json(*report));
}

}  // namespace meshlane::rest
