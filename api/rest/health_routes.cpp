// GET|HEAD /healthz and /readyz, on the unix API and on the scrape listener (scrape_server.h):
// what a kubelet probe, a load balancer or `curl -f` needs, answered by the status code alone;
// the body says why. Readiness comes from agent/model/readiness.h, the one rule every health
// view (gRPC health, `meshlane status`) shares.
#include <boost/json.hpp>

#include "agent/model/readiness.h"
#include "api/rest/agent_routes.h"

namespace meshlane::rest {

namespace json = boost::json;

json::value to_json(const ReadinessReport& report) {
    json::array issues;
    for (const auto& issue : report.issues)
        issues.push_back(json::object{{"problem", to_string(issue.problem)},
                                      {"feature", issue.feature},
                                      {"reason", issue.reason}});
    return json::object{{"status", to_string(report.state)}, {"issues", std::move(issues)}};
}

// Alive: this answer proves the event loop runs; and the pinned datapath is still reachable.
Response get_healthz(const RouteContext& context) {
    const auto reachable = datapath_reachable(context.registry.status());
    if (!reachable)
        return json_response(
            http::status::service_unavailable,
            json::object{{"status", "unhealthy"}, {"reason", reachable.error().message}});
    return json_response(http::status::ok, json::object{{"status", "ok"}});
}

// Ready (200) or degraded (200: interception works, an optional part is off), else 503.
Response get_readyz(const RouteContext& context) {
    const auto status = context.registry.status();
    auto report = evaluate_readiness(status);
    if (auto reachable = datapath_reachable(status); !reachable) {
        report.state = Readiness::kNotReady;
        report.issues.insert(report.issues.begin(), {ReadinessProblem::kEssentialFeatureOff,
                                                     "redirect", reachable.error().message});
    }
    return json_response(report.serving() ? http::status::ok : http::status::service_unavailable,
                         to_json(report));
}

}  // namespace meshlane::rest
