#include "api/metrics/observe_metrics.h"

#include <map>
#include <string>
#include <vector>

#include "agent/observe/map_fill.h"

namespace meshlane::metrics {

namespace {

constexpr const char* kSideNames[MESHLANE_SIDE_MAX] = {"app", "upstream"};

struct WorkloadView {
    std::string name;
    WorkloadConnections connections;
    WorkloadDrops drops;
};

std::vector<WorkloadView> collect(WorkloadRegistry& registry,
                                  const ObservationSource& observations) {
    std::vector<WorkloadView> views;
    DropQuery every_reason;
    every_reason.limit = 0;  // counts only, no recent events
    for (const auto& w : registry.list())
        views.push_back({w.spec.name, observations.connections(w.workload_id, w.netns_cookie),
                         observations.drops(w.workload_id, w.netns_cookie, every_reason)});
    return views;
}

// Per workload, or (metrics_workload_histograms = false) one node-wide series per side with the
// workloads' buckets and sums added up.
void write_connect_histograms(MetricsWriter& out, const std::vector<WorkloadView>& views,
                              const MetricsOptions& options) {
    out.histogram("meshlane_tcp_connect_seconds",
                  "TCP connect latency (SYN sent to ESTABLISHED) of established connects, by "
                  "side: app = the app's connect to its proxy, upstream = everything else.");
    if (!options.workload_histograms) {
        for (unsigned side = 0; side < MESHLANE_SIDE_MAX; ++side) {
            Log2Histogram node;
            std::uint64_t sum_us = 0;
            for (const auto& v : views) {
                node.merge(v.connections.sides[side].latency);
                sum_us += v.connections.sides[side].latency_sum_us;
            }
            out.log2_histogram_sample({{"side", kSideNames[side]}}, node.buckets(),
                                      static_cast<double>(sum_us) * 1e-6);
        }
        return;
    }
    for (const auto& v : views)
        for (unsigned side = 0; side < MESHLANE_SIDE_MAX; ++side) {
            const auto& totals = v.connections.sides[side];
            out.log2_histogram_sample({{"workload", v.name}, {"side", kSideNames[side]}},
                                      totals.latency.buckets(),
                                      static_cast<double>(totals.latency_sum_us) * 1e-6);
        }
}

void write_connect_families(MetricsWriter& out, const std::vector<WorkloadView>& views,
                            const MetricsOptions& options) {
    write_connect_histograms(out, views, options);
    out.counter("meshlane_tcp_connect_failures_total",
                "TCP connects that did not establish, by side and outcome (refused: RST to the "
                "SYN; timed_out: SYN retries exhausted; other: ICMP error or closed while "
                "connecting).");
    for (const auto& v : views)
        for (unsigned side = 0; side < MESHLANE_SIDE_MAX; ++side) {
            const auto& t = v.connections.sides[side];
            const Labels base{{"workload", v.name}, {"side", kSideNames[side]}};
            for (const auto& [outcome, value] :
                 {std::pair{"refused", t.refused}, std::pair{"timed_out", t.timed_out},
                  std::pair{"other", t.other_failures}}) {
                Labels labels = base;
                labels.push_back({"outcome", outcome});
                out.sample(labels, value);
            }
        }
    out.counter("meshlane_tcp_retransmits_total",
                "TCP retransmissions by kind: data, syn (in SYN_SENT), synack.");
    for (const auto& v : views) {
        const auto& tcp = v.connections.tcp;
        for (const auto& [kind, value] :
             {std::pair{"data", tcp.retransmits}, std::pair{"syn", tcp.syn_retransmits},
              std::pair{"synack", tcp.synack_retransmits}})
            out.sample({{"workload", v.name}, {"kind", kind}}, value);
    }
    out.counter("meshlane_tcp_resets_total", "TCP resets sent and received by the workload.");
    for (const auto& v : views) {
        out.sample({{"workload", v.name}, {"direction", "sent"}}, v.connections.tcp.resets_sent);
        out.sample({{"workload", v.name}, {"direction", "received"}},
                   v.connections.tcp.resets_received);
    }
}

// By workload and reason, or (metrics_drop_reasons = false) one series per workload plus one per
// reason node-wide: workloads x reasons becomes workloads + reasons.
void write_drop_families(MetricsWriter& out, const std::vector<WorkloadView>& views,
                         const MetricsOptions& options) {
    out.counter("meshlane_drops_total",
                "Kernel packet drops (skb:kfree_skb) by reason, named from the running kernel's "
                "BTF enum skb_drop_reason. Exact, not sampled. Without the reason label when "
                "metrics_drop_reasons = false (meshlane_drops_by_reason_total has them then).");
    if (options.drop_reasons) {
        for (const auto& v : views)
            for (const auto& r : v.drops.by_reason)
                out.sample({{"workload", v.name}, {"reason", r.reason_name}}, r.count);
        return;
    }
    std::map<std::string, std::uint64_t> by_reason;
    for (const auto& v : views) {
        std::uint64_t total = 0;
        for (const auto& r : v.drops.by_reason) {
            total += r.count;
            by_reason[r.reason_name] += r.count;
        }
        out.sample({{"workload", v.name}}, total);
    }
    out.counter("meshlane_drops_by_reason_total",
                "Kernel packet drops by reason, all workloads together (metrics_drop_reasons = "
                "false).");
    for (const auto& [reason, count] : by_reason) out.sample({{"reason", reason}}, count);
}

// One family for every map of meshlane (the drop_counts map included), as the observer last
// counted them from the kernel; maps that cannot be counted (local storage, ring buffers) are
// absent here and listed with the reason in GET /v1/status "bpf_maps".
void write_map_fill_families(MetricsWriter& out, const BpfMapFillReport& report) {
    out.gauge("meshlane_bpf_map_entries",
              "Entries in use per BPF map of meshlane, read from the kernel every few seconds "
              "(arrays: every slot). owner: pinned (shared) or the object holding it.");
    for (const auto& map : report.maps)
        if (map.entries) out.sample({{"map", map.name}, {"owner", map.owner}}, *map.entries);
    out.gauge("meshlane_bpf_map_max_entries",
              "Capacity (max_entries) of each countable BPF map of meshlane; beyond it inserts "
              "fail (LRU maps evict).");
    for (const auto& map : report.maps)
        if (map.entries)
            out.sample({{"map", map.name}, {"owner", map.owner}},
                       static_cast<std::uint64_t>(map.max_entries));
    // What the "maps > 80 %" alert reads: only where fill means something (not preallocated
    // arrays, whose every slot always exists).
    out.gauge("meshlane_bpf_map_fill_ratio",
              "Entries / max_entries of each hash-like BPF map of meshlane (arrays left out); a "
              "full map refuses new workloads, rules or connections.");
    for (const auto& map : report.maps)
        if (const auto ratio = fill_ratio(map))
            out.sample({{"map", map.name}, {"owner", map.owner}}, *ratio);
}

void write_health_families(MetricsWriter& out, const ObserverHealth& health) {
    out.gauge("meshlane_observe_tracking", "1 when that part of the observation datapath runs.");
    out.sample({{"part", "connect"}}, std::uint64_t{health.connect_tracking ? 1u : 0u});
    out.sample({{"part", "drop"}}, std::uint64_t{health.drop_tracking ? 1u : 0u});
    out.counter("meshlane_observe_events_total",
                "Slow/failed connect and drop events received from the kernel by the agent.");
    out.sample({{"kind", "connect"}}, health.connect_events);
    out.sample({{"kind", "drop"}}, health.drop_events);
    out.counter("meshlane_observe_lost_events_total",
                "Events the kernel side did not deliver, by object and cause (ringbuf_full, "
                "rate_limited, count_map_full, no_connect_state). Counters stay exact.");
    for (const auto& [kind, count] : health.lost_events) out.sample({{"kind", kind}}, count);
    out.counter("meshlane_observe_events_evicted_total",
                "Recent events aged out of the agent's bounded per-workload rings.");
    out.sample({}, health.events_evicted);
    out.counter("meshlane_observe_tls_destinations_evicted_total",
                "TLS per-destination stats evicted by the per-workload or global cap "
                "(tls_destinations_per_workload, tls_destinations_total).");
    out.sample({}, health.tls_destinations_evicted);
    out.gauge("meshlane_observe_tls_destinations", "TLS per-destination stats held.");
    out.sample({}, static_cast<std::uint64_t>(health.tls_destinations));
    out.gauge("meshlane_observe_memory_bytes", "The observer's aggregate, estimated.");
    out.sample({}, static_cast<std::uint64_t>(health.memory_bytes));
    out.gauge("meshlane_observe_memory_limit_bytes", "The bound on meshlane_observe_memory_bytes.");
    out.sample({}, static_cast<std::uint64_t>(health.memory_limit_bytes));
    out.gauge("meshlane_observe_bpf_map_bytes", "memlock of the observation programs' own maps.");
    out.sample({}, static_cast<std::uint64_t>(health.bpf_map_bytes));
}

}  // namespace

void write_observe_metrics(MetricsWriter& out, WorkloadRegistry& registry,
                           const ObservationSource& observations, const MetricsOptions& options) {
    const auto views = collect(registry, observations);
    write_connect_families(out, views, options);
    write_drop_families(out, views, options);
    write_health_families(out, observations.health());
    write_map_fill_families(out, observations.map_fill());
}

}  // namespace meshlane::metrics
