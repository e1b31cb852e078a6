// Cardinality switches for GET /metrics (config keys metrics_workload_histograms and
// metrics_drop_reasons, deploy/meshlane.conf; the per-request ?exclude=process). What each one
// saves per workload is measured in docs/observability.md ("Series per workload").
#pragma once

namespace meshlane::metrics {

struct MetricsOptions {
    // Latency histograms (meshlane_tcp_connect_seconds, meshlane_tls_handshake_seconds) per
    // workload. false: one node-wide histogram per side/source (the workload label dropped,
    // buckets summed): most of an idle workload's series are histogram buckets.
    bool workload_histograms = true;
    // meshlane_drops_total by reason per workload. false: one series per workload (the reason
    // label dropped, counts summed), plus the node-wide meshlane_drops_by_reason_total.
    bool drop_reasons = true;
    // The standard process_* families. false (GET /metrics?exclude=process): for node_exporter's
    // textfile collector, whose own process_* families would collide with the agent's.
    bool process_families = true;
};

}  // namespace meshlane::metrics
