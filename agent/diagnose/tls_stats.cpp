#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "agent/diagnose/diagnose_service.h"
#include "agent/observe/observation_source.h"

namespace meshlane::diagnose {

namespace {

struct Group {
    TlsDestination out;
    std::string source;
    std::vector<std::uint64_t> latencies_us;  // completed handshakes
};

// Nearest-rank percentile q (0 < q <= 1) of unsorted values; 0 when empty.
std::uint64_t percentile(std::vector<std::uint64_t> values, double q) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

// The hop that measured more handshakes; ties: the wire over libssl (it has addresses and the
// alert), the app's hop over the proxy's (what the app experienced).
bool better(const Group& a, const Group& b) {
    if (a.out.handshakes != b.out.handshakes) return a.out.handshakes > b.out.handshakes;
    if (a.source != b.source) return a.source == "wire";
    return a.out.hop == TlsHop::kApp && b.out.hop != TlsHop::kApp;
}

std::string host_of(const std::string& endpoint) {
    auto host = endpoint.substr(0, endpoint.rfind(':'));
    if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    return host;
}

// The wire's "upstream" side is any connect that is not app -> outbound proxy. When it goes to
// this pod's own address, or leaves from the inbound passthrough source 127.0.0.6 / ::6, it is
// the inbound proxy delivering a client's connection to this pod's app: the app is the server.
TlsHop wire_hop(const TlsHandshakeRecord& h, const std::vector<std::string>& pod_addresses) {
    if (h.side == "app") return TlsHop::kApp;
    const auto local = host_of(h.local);
    if (local == "127.0.0.6" || local == "::6") return TlsHop::kInboundDelivery;
    const auto peer = host_of(h.peer);
    if (std::find(pod_addresses.begin(), pod_addresses.end(), peer) != pod_addresses.end())
        return TlsHop::kInboundDelivery;
    return TlsHop::kProxyUpstream;
}

std::string kind_of_reason(const std::string& reason) {
    if (reason.rfind("alert", 0) == 0) return "alert";
    if (reason.find("reset") != std::string::npos) return "reset";
    if (reason.find("closed") != std::string::npos) return "closed";
    return "error";
}

}  // namespace

TlsObservation summarize_tls(const WorkloadTls& tls, std::chrono::milliseconds threshold,
                             std::int64_t window_start_unix_ms,
                             const std::vector<std::string>& pod_addresses) {
    TlsObservation observation;
    observation.threshold_ms = static_cast<std::uint64_t>(threshold.count());
    const auto threshold_us = static_cast<std::uint64_t>(threshold.count()) * 1000;
    // One handshake is seen by several hops: the wire on the app's connection and on a
    // pass-through proxy's upstream connection, and libssl. Per destination, the hop that saw
    // the most, never a sum.
    std::map<std::tuple<std::string, std::string, TlsHop>, Group> by_hop;
    for (const auto& h : tls.recent) {
        const auto ms = h.unix_time_ns / 1'000'000;
        if (ms < window_start_unix_ms) continue;
        const auto hop = h.source == "libssl" ? TlsHop::kLibssl : wire_hop(h, pod_addresses);
        auto& g = by_hop[{h.destination, h.source, hop}];
        g.source = h.source;
        g.out.destination = h.destination;
        g.out.sni = h.sni;
        g.out.hop = hop;
        const auto& address = !h.original_destination.empty() ? h.original_destination : h.peer;
        if (h.source == "wire" && !address.empty()) g.out.address = address;
        ++g.out.handshakes;
        const auto us = h.latency_ns / 1000;
        if (h.outcome == "ok") {
            g.latencies_us.push_back(us);
            if (us >= threshold_us) ++g.out.slow;
            g.out.max_us = std::max(g.out.max_us, us);
            continue;
        }
        ++g.out.failures;
        ++g.out.failures_by_kind[h.outcome];
        g.out.last_failure_kind = h.outcome;
        g.out.last_alert_description = h.outcome == "alert" ? h.alert_description : -1;
        g.out.last_failure = h.outcome;
        if (h.outcome == "alert")
            g.out.last_failure = tls_alert_text(h.alert_level, h.alert_description);
        else if (h.source == "libssl" && h.error != 0)
            g.out.last_failure = "libssl error " + std::to_string(h.error);
        if (g.out.first_failure_unix_ms == 0) g.out.first_failure_unix_ms = ms;
        g.out.last_failure_unix_ms = ms;
    }
    // libssl events without an SNI have no destination ("process curl"): when the wire saw
    // handshakes in the window, they are the same handshakes with a real destination.
    const bool wire_saw = std::any_of(by_hop.begin(), by_hop.end(), [](const auto& entry) {
        return entry.second.source == "wire";
    });
    std::map<std::string, Group*> chosen;
    std::set<std::string> left_out;
    for (auto& [key, g] : by_hop) {
        if (wire_saw && g.source == "libssl" && g.out.sni.empty()) {
            left_out.insert(std::get<0>(key));
            continue;
        }
        auto& best = chosen[std::get<0>(key)];
        if (best == nullptr || better(g, *best)) best = &g;
    }
    for (auto& [destination, g] : chosen) {
        g->out.p50_us = percentile(g->latencies_us, 0.50);
        g->out.p99_us = percentile(g->latencies_us, 0.99);
        observation.destinations.push_back(g->out);
    }
    // Failures older than the recent-event ring but inside the window, from the exact stats.
    for (const auto& d : tls.destinations) {
        if (d.last_failure_unix_ns / 1'000'000 < window_start_unix_ms || d.failures == 0 ||
            chosen.count(d.destination) != 0 || left_out.count(d.destination) != 0 ||
            (wire_saw && d.source == "libssl" && d.destination.rfind("process ", 0) == 0))
            continue;
        TlsDestination out;
        out.destination = d.destination;
        out.hop = d.source == "libssl" ? TlsHop::kLibssl : TlsHop::kWire;  // side not kept
        out.handshakes = d.handshakes + d.failures;
        out.failures = d.failures;
        out.p50_us = static_cast<std::uint64_t>(d.p50_us());
        out.p99_us = static_cast<std::uint64_t>(d.p99_us());
        out.last_failure = d.last_failure_reason;
        out.last_failure_kind = kind_of_reason(d.last_failure_reason);
        out.failures_by_kind[out.last_failure_kind] = d.failures;  // kinds not kept: the last one
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
                             observations->tls_slow_handshake_threshold(), window_start_unix_ms,
                             status.pod_addresses);
    };
}

}  // namespace meshlane::diagnose
