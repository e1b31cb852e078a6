#include "agent/observe/observe_json.h"

#include <boost/json.hpp>
#include <cstring>

namespace meshlane {

namespace json = boost::json;

namespace {

double ms(double us) { return us / 1000.0; }

json::object side_json(const ConnectSideTotals& side) {
    return json::object{
        {"established", side.established},
        {"refused", side.refused},
        {"timed_out", side.timed_out},
        {"other_failures", side.other_failures},
        {"syn_retransmits", side.syn_retransmits},
        {"latency", latency_json(side.latency, side.latency_sum_us)},
    };
}

json::object record_json(const ConnectionRecord& r) {
    return json::object{
        {"time_unix_ms", r.unix_time_ns / 1'000'000},
        {"latency_ms", static_cast<double>(r.latency_ns) / 1e6},
        {"side", to_string(r.side)},
        {"outcome", to_string(r.outcome)},
        {"error", r.error},
        {"error_text", r.error ? std::string(std::strerror(r.error)) : std::string()},
        {"source", r.source},
        {"destination", r.destination},
        {"original_destination", r.original_destination},
        {"pid", r.pid},
        {"comm", r.comm},
        {"syn_retransmits", r.syn_retransmits},
    };
}

std::string ip_proto_name(std::uint8_t proto) {
    switch (proto) {
        case 0:
            return "";
        case 1:
            return "icmp";
        case 6:
            return "tcp";
        case 17:
            return "udp";
        case 58:
            return "icmpv6";
        default:
            return std::to_string(proto);
    }
}

json::object drop_json(const DropRecord& r) {
    char location[32];
    std::snprintf(location, sizeof(location), "0x%llx",
                  static_cast<unsigned long long>(r.location));
    return json::object{
        {"time_unix_ms", r.unix_time_ns / 1'000'000},
        {"reason", r.reason_name},
        {"reason_code", r.reason},
        {"attributed_by", r.attributed_by},
        {"ifindex", r.ifindex},
        {"protocol", ip_proto_name(r.ip_proto)},
        {"source", r.source},
        {"destination", r.destination},
        {"length", r.length},
        {"location", location},
    };
}

}  // namespace

json::object to_json(const ConnectionRecord& record) { return record_json(record); }
json::object to_json(const DropRecord& record) { return drop_json(record); }

json::object latency_json(const Log2Histogram& histogram, std::uint64_t sum_us) {
    const std::uint64_t count = histogram.count();
    json::array buckets;  // non-empty buckets only: [lower_ms, upper_ms, count]
    for (unsigned i = 0; i < Log2Histogram::kBuckets; ++i) {
        if (!histogram.buckets()[i]) continue;
        buckets.push_back(json::array{ms(static_cast<double>(Log2Histogram::bucket_lower_us(i))),
                                      ms(static_cast<double>(Log2Histogram::bucket_upper_us(i))),
                                      histogram.buckets()[i]});
    }
    return json::object{
        {"count", count},
        {"mean_ms", count ? ms(static_cast<double>(sum_us) / static_cast<double>(count)) : 0.0},
        {"p50_ms", ms(histogram.percentile_us(0.50))},
        {"p90_ms", ms(histogram.percentile_us(0.90))},
        {"p99_ms", ms(histogram.percentile_us(0.99))},
        {"buckets", std::move(buckets)},
    };
}

json::object to_json(const WorkloadConnections& c, const std::string& name) {
    json::array recent;
    for (const auto& record : c.recent) recent.push_back(record_json(record));
    return json::object{
        {"name", name},
        {"workload_id", c.workload_id},
        {"netns_cookie", c.netns_cookie},
        {"app", side_json(c.sides[MESHLANE_SIDE_APP])},
        {"upstream", side_json(c.sides[MESHLANE_SIDE_UPSTREAM])},
        {"tcp", json::object{{"retransmits", c.tcp.retransmits},
                             {"syn_retransmits", c.tcp.syn_retransmits},
                             {"synack_retransmits", c.tcp.synack_retransmits},
                             {"resets_sent", c.tcp.resets_sent},
                             {"resets_received", c.tcp.resets_received}}},
        {"recent", std::move(recent)},
    };
}

json::object to_json(const WorkloadDrops& d, const std::string& name) {
    json::array by_reason;
    for (const auto& r : d.by_reason)
        by_reason.push_back(
            json::object{{"reason", r.reason_name}, {"reason_code", r.reason}, {"count", r.count}});
    json::array recent;
    for (const auto& record : d.recent) recent.push_back(drop_json(record));
    return json::object{
        {"name", name},     {"workload_id", d.workload_id},      {"netns_cookie", d.netns_cookie},
        {"total", d.total}, {"by_reason", std::move(by_reason)}, {"recent", std::move(recent)},
    };
}

json::object to_json(const ObserverHealth& h) {
    json::array problems;
    for (const auto& p : h.problems) problems.push_back(json::string(p));
    json::object lost;
    for (const auto& [kind, count] : h.lost_events) lost[kind] = count;
    json::array count_only;
    for (const auto& r : h.drop_count_only_reasons) count_only.push_back(json::string(r));
    return json::object{
        {"connect_tracking", h.connect_tracking},
        {"drop_tracking", h.drop_tracking},
        {"problems", std::move(problems)},
        {"lost_events_total", h.lost_events_total},
        {"lost_events", std::move(lost)},
        {"connect_events", h.connect_events},
        {"drop_events", h.drop_events},
        {"events_evicted", h.events_evicted},
        {"memory_bytes", h.memory_bytes},
        {"memory_limit_bytes", h.memory_limit_bytes},
        {"bpf_map_bytes", h.bpf_map_bytes},
        {"tls_wire_tracking", h.tls_wire_tracking},
        {"tls_libssl_tracking", h.tls_libssl_tracking},
        {"tls_events", h.tls_events},
        {"tls_memory_bytes", h.tls_memory_bytes},
        {"tls_attached_cgroups", h.tls_attached_cgroups},
        {"tls_memory_limit_bytes", h.tls_memory_limit_bytes},
        {"tls_destinations", h.tls_destinations},
        {"tls_destinations_limit", h.tls_destinations_limit},
        {"tls_destinations_evicted", h.tls_destinations_evicted},
        {"drop_count_only_reasons", std::move(count_only)},
    };
}

}  // namespace meshlane
