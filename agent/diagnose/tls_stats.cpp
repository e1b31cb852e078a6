#include <algorithm>
#include <map>

#include "agent/diagnose/diagnose_service.h"
#include "agent/observe/observation_source.h"

namespace meshlane::diagnose {

namespace {

struct Group {
    TlsDestination out;
    std::vector<std::uint64_t> latencies_us;  // completed handshakes
};

std::uint64_t p99(std::vector<std::uint64_t> values) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const auto index = (values.size() * 99 + 99) / 100 - 1;
    return values[std::min(index, values.size() - 1)];
}

}  // namespace

TlsObservation summarize_tls(const WorkloadTls& tls, std::chrono::milliseconds threshold,
                             std::int64_t window_start_unix_ms) {
    TlsObservation observation;
    observation.threshold_ms = static_cast<std::uint64_t>(threshold.count());
    const auto threshold_us = static_cast<std::uint64_t>(threshold.count()) * 1000;
    // Wire and libssl measure the same handshakes: per destination, the source that saw more.
    std::map<std::pair<std::string, std::string>, Group> by_source;  // (destination, source)
    for (const auto& h : tls.recent) {
        if (h.unix_time_ns / 1'000'000 < window_start_unix_ms) continue;
        auto& g = by_source[{h.destination, h.source}];
        g.out.destination = h.destination;
        g.out.sni = h.sni;
        ++g.out.handshakes;
        const auto us = h.latency_ns / 1000;
        if (h.outcome == "ok") {
            g.latencies_us.push_back(us);
            if (us >= threshold_us) ++g.out.slow;
            g.out.max_us = std::max(g.out.max_us, us);
        } else {
            ++g.out.failures;
            g.out.last_failure = h.outcome;
            if (h.alert_description >= 0)
                g.out.last_failure = tls_alert_text(h.alert_level, h.alert_description);
            else if (h.source == "libssl" && h.error != 0)
                g.out.last_failure = "libssl error " + std::to_string(h.error);
            g.out.last_failure_unix_ms = h.unix_time_ns / 1'000'000;
        }
    }
    std::map<std::string, Group*> chosen;
    for (auto& [key, g] : by_source) {
        auto& best = chosen[key.first];
        if (best == nullptr || g.out.handshakes > best->out.handshakes) best = &g;
    }
    for (auto& [destination, g] : chosen) {
        g->out.p99_us = p99(g->latencies_us);
        observation.destinations.push_back(g->out);
    }
    // Failures older than the recent-event ring but inside the window, from the exact stats.
    for (const auto& d : tls.destinations) {
        if (d.last_failure_unix_ns / 1'000'000 < window_start_unix_ms || d.failures == 0 ||
            chosen.count(d.destination) != 0)
            continue;
        TlsDestination out;
        out.destination = d.destination;
        out.handshakes = d.handshakes + d.failures;
        out.failures = d.failures;
        out.p99_us = static_cast<std::uint64_t>(d.p99_us());
        out.last_failure = d.last_failure_reason;
        out.last_failure_unix_ms = d.last_failure_unix_ns / 1'000'000;
        observation.destinations.push_back(out);
        chosen[d.destination] = nullptr;
    }
    return observation;
}

TlsStatsReader tls_stats_reader(const ObservationSource* observations) {
    if (observations == nullptr) return {};
    return [observations](const WorkloadStatus& status,
                          std::int64_t window_start_unix_ms) -> std::optional<TlsObservation> {
        const auto health = observations->health();
        if (!health.tls_wire_tracking && !health.tls_libssl_tracking) return std::nullopt;
        return summarize_tls(observations->tls(status.workload_id, status.netns_cookie),
                             observations->tls_slow_handshake_threshold(), window_start_unix_ms);
    };
}

}  // namespace meshlane::diagnose
