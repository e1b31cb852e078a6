// GET /metrics: the agent's families in Prometheus text format 0.0.4 (api/metrics/).
#include <spdlog/spdlog.h>

#include "api/metrics/agent_metrics.h"
#include "api/metrics/observe_metrics.h"
#include "api/metrics/tls_metrics.h"
#include "api/rest/agent_routes.h"

namespace meshlane::rest {

Response get_metrics(const RouteContext& context) {
    metrics::MetricsWriter out;
    metrics::write_workload_metrics(out, context.registry);
    if (context.events != nullptr) metrics::write_event_metrics(out, *context.events);
    if (context.observations != nullptr)
        metrics::write_observe_metrics(out, context.registry, *context.observations);
    if (context.observations != nullptr)
        metrics::write_tls_metrics(out, context.registry, *context.observations);
    // /proc is always there for a running agent; a failure only drops the process_* families.
    if (auto process = metrics::read_process_stats(); process) {
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
