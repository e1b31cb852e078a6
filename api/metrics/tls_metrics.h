// TLS-handshake Prometheus families (GET /metrics): meshlane_tls_handshake_seconds (histogram
// per workload and source, from the kernel's log2 histograms) and
// meshlane_tls_handshake_failures_total (per workload, source and outcome). Views only: from
// the ObservationSource and the WorkloadRegistry.
#pragma once

#include "agent/model/workload_registry.h"
#include "agent/observe/observation_source.h"
#include "api/metrics/metrics_options.h"
#include "api/metrics/metrics_writer.h"

namespace meshlane::metrics {

// options.workload_histograms = false: one node-wide histogram per source.
void write_tls_metrics(MetricsWriter& out, WorkloadRegistry& registry,
                       const ObservationSource& observations, const MetricsOptions& options = {});

}  // namespace meshlane::metrics
