// GET /metrics: the agent's families in Prometheus text format 0.0.4 (api/metrics/).
// ?exclude=process leaves out the standard process_* families: node_exporter's textfile
// collector refuses a file whose families collide with its own process_* ones.
#include <spdlog/spdlog.h>

#include "api/metrics/agent_metrics.h"
#include "api/metrics/observe_metrics.h"
#include "api/metrics/tls_metrics.h"
#include "api/rest/agent_routes.h"
#include "api/rest/observe_routes.h"

namespace meshlane::rest {

namespace {

// ?exclude=GROUP[,GROUP]: only "process" exists.
Result<metrics::MetricsOptions> metrics_options(const RouteContext& context) {
    metrics::MetricsOptions options =
        context.metrics != nullptr ? *context.metrics : metrics::MetricsOptions{};
    auto query = parse_query(context.request.target());
    if (!query) return query.error();
    for (const auto& [key, value] : *query) {
        if (key != "exclude")
            return Error::invalid("unknown query parameter \"" + key + "\" (only exclude)");
        std::string_view rest = value;
        while (!rest.empty()) {
            const auto comma = std::min(rest.find(','), rest.size());
            const auto group = rest.substr(0, comma);
            if (group != "process")
                return Error::invalid("exclude: unknown family group \"" + std::string(group) +
                                      "\" (only process)");
            options.process_families = false;
            rest.remove_prefix(std::min(comma + 1, rest.size()));
        }
    }
    return options;
}

}  // namespace

Response get_metrics(const RouteContext& context) {
    auto options = metrics_options(context);
    if (!options) return error_response(options.error());
    metrics::MetricsWriter out;
    std::map<std::string, std::pair<std::string, std::string>, std::less<>> pods;
    for (const auto& w : context.registry.list())
        if (!w.spec.k8s_namespace.empty())
            pods[w.spec.name] = {w.spec.k8s_namespace, w.spec.k8s_pod};
    out.set_pod_identity(std::move(pods));
    metrics::write_workload_metrics(out, context.registry);
    if (context.events != nullptr) metrics::write_event_metrics(out, *context.events);
    if (context.observations != nullptr)
        metrics::write_observe_metrics(out, context.registry, *context.observations, *options);
    if (context.observations != nullptr)
        metrics::write_tls_metrics(out, context.registry, *context.observations, *options);
    // /proc is always there for a running agent; a failure only drops the process_* families.
    if (!options->process_families) {
        // Left out on request.
    } else if (auto process = metrics::read_process_stats(); process) {
        metrics::write_process_metrics(out, *process);
    } else {
        spdlog::warn("metrics: {}", process.error().message);
    }
    Response response{http::status::ok, 11};
    response.set(http::field::content_type, metrics::kContentType);
    response.set(http::field::cache_control, "no-store");
    response.body() = out.take();
    return response;
}

}  // namespace meshlane::rest
