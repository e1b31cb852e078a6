// Per-workload TLS-handshake aggregate: exact totals per source (wire, libssl) from the kernel's
// tls_stats map, and, from the handshake events, per-destination stats (count, failures, log2
// histogram -> p50/p90/p99, last failure) plus a bounded ring of recent handshakes.
//
// Destination key: "SNI" when the ClientHello carried one, else the original destination
// ("10.0.0.2:443") when the redirect recorded it, else the connection's peer address.
//
// Memory bound: at most max_workloads workloads, max_destinations per workload and
// max_destinations_total across all (beyond either, the least recently seen destination of that
// workload, or of the workload holding the most, is evicted; counted in destinations_evicted()),
// events_per_workload recent events each and events_total across all (aged-out events counted
// in evicted()). Pure data, no locking: Observer guards it.
//
// For diagnosis: ObservationSource::tls(id, cookie) returns a WorkloadTls copy;
// failing_or_slow() picks the destinations whose handshakes fail or whose p99 exceeds a
// threshold.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/observe/log2_histogram.h"
#include "meshlane/redirect_abi.h"
#include "meshlane/tls_abi.h"

namespace meshlane {

// One handshake, decoded.
struct TlsHandshakeRecord {
    std::int64_t unix_time_ns = 0;
    std::uint64_t latency_ns = 0;
    std::string source;   // "wire" | "libssl"
    std::string side;     // "app" | "upstream" (wire); "app" for libssl
    std::string outcome;  // "ok" | "alert" | "reset" | "closed" | "error"
    std::string version;  // "TLS1.3", "TLS1.2", ... or "" when unknown
    std::string sni;
    std::string local;  // "10.1.2.3:41234" (wire only)
    std::string peer;
    std::string original_destination;  // app side, when the redirect recorded it
    std::string destination;           // the aggregation key (see above)
    int alert_level = 0;               // 0: unknown (TLS 1.3 alerts are encrypted)
    int alert_description = -1;        // -1: unknown
    int error = 0;                     // libssl: the failing call's return value
    std::uint32_t libssl_calls = 0;    // libssl: calls folded into this handshake
    std::uint32_t pid = 0;
    std::string comm;
};

struct TlsSourceTotals {
    std::uint64_t completed = 0;
    std::uint64_t alerts = 0;
    std::uint64_t resets = 0;
    std::uint64_t closed = 0;
    std::uint64_t errors = 0;
    std::uint64_t latency_sum_us = 0;
    Log2Histogram latency;  // completed handshakes
    std::uint64_t failures() const { return alerts + resets + closed + errors; }
};

struct TlsDestinationStats {
    std::string destination;  // SNI, or "ip:port"
    std::string source;       // "wire" | "libssl": kept apart, they measure the same handshakes
    std::uint64_t handshakes = 0;  // completed
    std::uint64_t failures = 0;
    Log2Histogram latency;
    std::uint64_t latency_sum_us = 0;
    std::string last_version;
    std::int64_t last_seen_unix_ns = 0;
    std::int64_t last_failure_unix_ns = 0;  // 0: never failed
    std::string last_failure_reason;        // "alert fatal 42 (bad_certificate)", "reset", ...
    double p50_us() const { return latency.percentile_us(0.50); }
    double p90_us() const { return latency.percentile_us(0.90); }
    double p99_us() const { return latency.percentile_us(0.99); }
};

struct WorkloadTls {
    std::uint32_t workload_id = 0;
    std::uint64_t netns_cookie = 0;
    std::array<TlsSourceTotals, MESHLANE_TLS_SOURCE_MAX> sources;  // exact, from the kernel
    std::vector<TlsDestinationStats> destinations;                 // from events
    std::vector<TlsHandshakeRecord> recent;                        // oldest first
};

// Destinations of one workload whose handshakes failed at least once, or whose p99 is at least
// `slow` (with at least one completed handshake).
std::vector<TlsDestinationStats> failing_or_slow(const WorkloadTls& tls,
                                                 std::chrono::microseconds slow);

// "alert fatal 42 (bad_certificate)"; the name from RFC 8446 / RFC 5246.
std::string tls_alert_text(int level, int description);
// "TLS1.3" for 0x0304 ...; "" for 0.
std::string tls_version_name(std::uint16_t version);

struct TlsAggregateLimits {
    std::size_t max_workloads = MESHLANE_MAX_WORKLOADS_DEFAULT;
    std::size_t max_destinations = 256;  // per workload (both sources together)
    std::size_t events_per_workload = 256;
    std::size_t events_total = 16384;
    // Across all workloads: with 4096 workloads x 256 the per-workload cap alone allowed ~600 MB.
    std::size_t max_destinations_total = 16384;
};

struct TlsWorkloadTotals {
    std::uint32_t workload_id = 0;
    std::uint64_t netns_cookie = 0;
    std::array<TlsSourceTotals, MESHLANE_TLS_SOURCE_MAX> sources;
};

class TlsAggregate {
  public:
    explicit TlsAggregate(TlsAggregateLimits limits = {}) : limits_(limits) {}

    // Replaces totals; workloads absent from the snapshot are forgotten with their events.
    void apply_snapshot(const std::vector<TlsWorkloadTotals>& snapshot);
    void add_event(const tls_handshake_event& event, std::int64_t unix_time_ns);

    // Copy of one workload's view; zero totals when nothing was seen.
    WorkloadTls view(std::uint32_t workload_id, std::uint64_t netns_cookie) const;

    std::uint64_t evicted() const { return evicted_; }  // recent events aged out
    std::uint64_t destinations_evicted() const { return destinations_evicted_; }
    std::size_t destinations() const { return destinations_total_; }
    std::size_t destinations_limit() const;  // what max_* allow together
    std::size_t memory_bytes() const;
    std::size_t memory_limit_bytes() const;

  private:
    struct Destination {
        TlsDestinationStats stats;
        std::uint64_t last_touch = 0;
    };
    struct Workload {
        TlsWorkloadTotals totals;
        // key: source + '\0' + destination
        std::unordered_map<std::string, Destination> destinations;
        std::deque<TlsHandshakeRecord> recent;
    };
    Workload* entry(std::uint64_t netns_cookie, std::uint32_t workload_id);
    void enforce_total();
    void evict_oldest_destination(Workload& workload);

    TlsAggregateLimits limits_;
    std::unordered_map<std::uint64_t, Workload> workloads_;
    std::size_t stored_events_ = 0;
    std::uint64_t evicted_ = 0;
    std::size_t destinations_total_ = 0;
    std::uint64_t destinations_evicted_ = 0;
    std::uint64_t touch_ = 0;
};

}  // namespace meshlane
