// What the views (REST, CLI via REST, later gRPC and metrics) may ask the observability
// datapath. Implemented by Observer; the API layer depends only on this interface, so its
// handlers unit-test with a fake. Every call returns a copy, safe to use on any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/observe/log2_histogram.h"
#include "agent/observe/tls_aggregate.h"
#include "meshlane/observe_abi.h"

namespace meshlane {

// Which hop a connect is on: the app's connect to the proxy's outbound port, or any other
// (the proxy's upstream connect, or an unmeshed connect). Values of enum meshlane_connect_side.
enum class ConnectSide : std::uint8_t {
    kApp = MESHLANE_SIDE_APP,
    kUpstream = MESHLANE_SIDE_UPSTREAM
};
enum class ConnectOutcome : std::uint8_t { kEstablished, kRefused, kTimedOut, kFailed };

// Stable names for the views ("app", "refused", ...).
inline std::string_view to_string(ConnectSide side) {
    return side == ConnectSide::kApp ? "app" : "upstream";
}
inline std::string_view to_string(ConnectOutcome outcome) {
    switch (outcome) {
        case ConnectOutcome::kEstablished:
            return "established";
        case ConnectOutcome::kRefused:
            return "refused";
        case ConnectOutcome::kTimedOut:
            return "timed_out";
        case ConnectOutcome::kFailed:
            return "failed";
    }
    return "failed";
}

// One slow or failed connect, decoded.
struct ConnectionRecord {
    std::int64_t unix_time_ns = 0;
    std::uint64_t latency_ns = 0;
    std::uint32_t pid = 0;  // 0: unknown
    std::string comm;
    ConnectSide side = ConnectSide::kUpstream;
    ConnectOutcome outcome = ConnectOutcome::kFailed;  // kEstablished: a slow one
    int error = 0;                                     // errno the socket failed with
    std::string source;                                // "10.1.2.3:41234", "[fd00::1]:41234"
    std::string destination;
    std::string original_destination;  // app side, when the redirect recorded it; else empty
    unsigned syn_retransmits = 0;
};

struct ConnectSideTotals {
    std::uint64_t established = 0;
    std::uint64_t refused = 0;
    std::uint64_t timed_out = 0;
    std::uint64_t other_failures = 0;
    std::uint64_t syn_retransmits = 0;
    std::uint64_t latency_sum_us = 0;
    Log2Histogram latency;
    // Wall-clock times of the outcomes, exact (kernel counters, not the event ring); 0: never.
    std::int64_t refused_first_unix_ns = 0;
    std::int64_t refused_last_unix_ns = 0;
    std::int64_t established_last_unix_ns = 0;
    std::int64_t failed_last_unix_ns = 0;
    std::uint64_t no_local_port = 0;  // connects failed with EADDRNOTAVAIL (no free port)
    std::int64_t no_local_port_last_unix_ns = 0;
};

struct TcpTotals {
    std::uint64_t retransmits = 0;
    std::uint64_t syn_retransmits = 0;
    std::uint64_t synack_retransmits = 0;
    std::uint64_t resets_sent = 0;
    std::uint64_t resets_received = 0;
};

struct WorkloadConnections {
    std::uint32_t workload_id = 0;
    std::uint64_t netns_cookie = 0;
    std::array<ConnectSideTotals, MESHLANE_SIDE_MAX> sides;  // enum meshlane_connect_side
    TcpTotals tcp;
    std::vector<ConnectionRecord> recent;  // oldest first
};

struct DropRecord {
    std::int64_t unix_time_ns = 0;
    std::uint32_t reason = 0;
    std::string reason_name;
    std::string attributed_by;  // "socket" | "device"
    std::uint32_t ifindex = 0;
    std::uint16_t protocol = 0;  // ethertype
    std::uint8_t ip_proto = 0;
    std::string source;  // empty when the headers were not readable
    std::string destination;
    std::uint32_t length = 0;
    std::uint64_t location = 0;  // kernel address that dropped it
};

struct DropReasonCount {
    std::uint32_t reason = 0;
    std::string reason_name;
    std::uint64_t count = 0;
};

struct DropQuery {
    std::optional<std::uint32_t> reason;
    std::optional<std::int64_t> since_unix_ns;
    std::size_t limit = 100;
};

struct WorkloadDrops {
    std::uint32_t workload_id = 0;
    std::uint64_t netns_cookie = 0;
    std::uint64_t total = 0;                 // exact, from the kernel's counters
    std::vector<DropReasonCount> by_reason;  // exact; filtered by DropQuery::reason
    std::vector<DropRecord> recent;          // sampled (rate-bounded), newest last
};

struct ObserverHealth {
    bool connect_tracking = false;
    bool drop_tracking = false;
    std::vector<std::string> problems;  // why a part is unavailable
    // Kernel-side losses by kind (meshlane_observe_loss), per object: "connect.ringbuf_full".
    std::map<std::string, std::uint64_t> lost_events;
    std::uint64_t lost_events_total = 0;
    std::uint64_t connect_events = 0;  // received by the reader
    std::uint64_t drop_events = 0;
    std::uint64_t events_evicted = 0;  // aged out of the bounded recent-event rings
    std::size_t memory_bytes = 0;      // the aggregate, estimated
    std::size_t memory_limit_bytes = 0;
    std::size_t bpf_map_bytes = 0;  // memlock of the observe objects' own maps

    // TLS handshakes (agent/observe/tls_observer.h).
    bool tls_wire_tracking = false;    // observe_tls_wire attached (per pod cgroup)
    bool tls_libssl_tracking = false;  // observe_tls_libssl uprobes attached
    std::uint64_t tls_events = 0;
    std::size_t tls_attached_cgroups = 0;  // pod cgroups the wire programs are attached to
    std::size_t tls_memory_bytes = 0;      // the TLS aggregate, estimated (also in memory_bytes)
    std::size_t tls_memory_limit_bytes = 0;
    std::size_t tls_destinations = 0;        // per-destination stats held, all workloads
    std::size_t tls_destinations_limit = 0;  // config tls_destinations_total (or less)
    std::uint64_t tls_destinations_evicted = 0;
    // Drop reasons counted but not streamed (config drop_count_only_reasons, as resolved).
    std::vector<std::string> drop_count_only_reasons;
};

// One BPF map of meshlane with its fill level, read from the kernel (agent/observe/map_fill.h).
struct BpfMapFill {
    std::string name;   // full name: the pin's file name, or libbpf's for maps held unpinned
    std::string owner;  // "pinned" (shared, under <pin_root>/maps) or the BPF object holding it
    std::uint32_t id = 0;
    std::string type;  // libbpf's name of the bpf_map_type: "hash", "lpm_trie", "sk_storage"...
    std::uint32_t max_entries = 0;
    std::optional<std::uint64_t> entries;  // unset: not countable (note says why)
    bool preallocated = false;             // an array: every slot exists, entries = max_entries
    std::string note;                      // how it was counted, or why it cannot be
};

// A program the observer attached for the whole node (tracepoints), not per workload.
struct ObservedProgram {
    std::string object;     // "observe_drops"
    std::string program;    // "observe_kfree_skb"
    std::string attach_to;  // its section: "tp_btf/kfree_skb"
    std::uint32_t link_id = 0;
    std::uint32_t prog_id = 0;
};

struct BpfMapFillReport {
    std::int64_t counted_unix_ms = 0;  // 0: not counted yet
    std::vector<BpfMapFill> maps;
};

class ObservationSource {
  public:
    virtual ~ObservationSource() = default;
    // Zero totals when nothing was seen yet for that workload.
    virtual WorkloadConnections connections(std::uint32_t workload_id,
                                            std::uint64_t netns_cookie) const = 0;
    virtual WorkloadDrops drops(std::uint32_t workload_id, std::uint64_t netns_cookie,
                                const DropQuery& query) const = 0;
    virtual ObserverHealth health() const = 0;
    // Resolves a reason name of the running kernel ("NETFILTER_DROP").
    virtual std::optional<std::uint32_t> drop_reason_value(std::string_view name) const = 0;
    // Handshakes at least this slow are "slow" (config tls_slow_handshake_threshold_ms); the
    // diagnosis (finding tls_handshake_problems) uses the same value.
    virtual std::chrono::milliseconds tls_slow_handshake_threshold() const {
        return std::chrono::milliseconds(500);
    }
    // Every map of meshlane with its fill level, as last counted by the reader thread.
    virtual BpfMapFillReport map_fill() const { return {}; }
    // The node-wide programs it attached (per-pod TLS programs: ObserverHealth).
    virtual std::vector<ObservedProgram> programs() const { return {}; }
    // TLS handshakes (agent/observe/tls_aggregate.h); empty when TLS observation is off.
    virtual WorkloadTls tls(std::uint32_t workload_id, std::uint64_t netns_cookie) const {
        WorkloadTls view;
        view.workload_id = workload_id;
        view.netns_cookie = netns_cookie;
        return view;
    }
};

}  // namespace meshlane
