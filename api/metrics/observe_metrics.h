// The observer's Prometheus families (GET /metrics): per-workload TCP connect latency
// histograms (meshlane_tcp_connect_seconds, from the kernel's log2 histograms), connect outcomes,
// retransmits and resets, drops by reason, and the observer's own health: events received and
// lost (never silently), recent-event evictions, memory against its bound, map fill.
// Views only: everything comes from the ObservationSource and the WorkloadRegistry.
#pragma once

#include "agent/model/workload_registry.h"
#include "agent/observe/observation_source.h"
#include "api/metrics/metrics_options.h"
#include "api/metrics/metrics_writer.h"

namespace meshlane::metrics {

void write_observe_metrics(MetricsWriter& out, WorkloadRegistry& registry,
                           const ObservationSource& observations,
                           const MetricsOptions& options = {});

}  // namespace meshlane::metrics
