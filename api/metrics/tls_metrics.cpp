#include "api/metrics/tls_metrics.h"

#include <string>
#include <utility>
#include <vector>

namespace meshlane::metrics {

namespace {

constexpr const char* kSourceNames[MESHLANE_TLS_SOURCE_MAX] = {"wire", "libssl"};

}  // namespace

void write_tls_metrics(MetricsWriter& out, WorkloadRegistry& registry,
                       const ObservationSource& observations, const MetricsOptions& options) {
    std::vector<std::pair<std::string, WorkloadTls>> views;
    for (const auto& w : registry.list())
        views.emplace_back(w.spec.name, observations.tls(w.workload_id, w.netns_cookie));
    out.histogram("meshlane_tls_handshake_seconds",
                  "TLS-handshake latency of completed handshakes, by source: wire = ClientHello "
                  "to the client's first application_data record on the connection (any TLS "
                  "library), libssl = SSL_do_handshake/SSL_connect/SSL_accept of processes "
                  "linking libssl.so.3 (non-blocking retries folded into one handshake).");
    for (unsigned source = 0; source < MESHLANE_TLS_SOURCE_MAX && !options.workload_histograms;
         ++source) {
        Log2Histogram node;
        std::uint64_t sum_us = 0;
        for (const auto& [name, tls] : views) {
            node.merge(tls.sources[source].latency);
            sum_us += tls.sources[source].latency_sum_us;
        }
        out.log2_histogram_sample({{"source", kSourceNames[source]}}, node.buckets(),
                                  static_cast<double>(sum_us) * 1e-6);
    }
    for (const auto& [name, tls] : views)
        for (unsigned source = 0; source < MESHLANE_TLS_SOURCE_MAX && options.workload_histograms;
             ++source) {
            const auto& totals = tls.sources[source];
            out.log2_histogram_sample({{"workload", name}, {"source", kSourceNames[source]}},
                                      totals.latency.buckets(),
                                      static_cast<double>(totals.latency_sum_us) * 1e-6);
        }
    out.counter("meshlane_tls_handshake_failures_total",
                "TLS handshakes that did not complete, by source and outcome: alert (the client "
                "sent one), reset / closed (the connection ended mid-handshake), error (libssl "
                "call failed).");
    for (const auto& [name, tls] : views)
        for (unsigned source = 0; source < MESHLANE_TLS_SOURCE_MAX; ++source) {
            const auto& t = tls.sources[source];
            for (const auto& [outcome, value] :
                 {std::pair{"alert", t.alerts}, std::pair{"reset", t.resets},
                  std::pair{"closed", t.closed}, std::pair{"error", t.errors}})
                out.sample(
                    {{"workload", name}, {"source", kSourceNames[source]}, {"outcome", outcome}},
                    value);
        }
}

}  // namespace meshlane::metrics
