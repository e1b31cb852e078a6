// The per-workload aggregate the reader fills: exact totals from map snapshots, and bounded
// rings of recent events from the ring buffers. Pure data, no locking: Observer guards it.
// Workloads are keyed by netns cookie (never reused while the kernel runs), so a reused
// workload id never inherits another workload's history.
//
// Memory bound: at most `max_workloads` entries, at most `events_per_workload` events of each
// kind per workload and `events_total` across all; beyond that the oldest event of the workload
// holding the most is evicted (counted, reported).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <unordered_map>
#include <vector>

#include "agent/observe/observation_source.h"
#include "meshlane/observe_abi.h"
#include "meshlane/redirect_abi.h"

namespace meshlane {

struct AggregateLimits {
    std::size_t max_workloads = MESHLANE_MAX_WORKLOADS_DEFAULT;
    std::size_t events_per_workload = 256;
    std::size_t events_total = 16384;
};

// One workload's totals as read from the kernel maps at one instant.
struct WorkloadTotals {
    std::uint32_t workload_id = 0;
    std::uint64_t netns_cookie = 0;
    std::array<ConnectSideTotals, MESHLANE_SIDE_MAX> sides;
    TcpTotals tcp;
    std::map<std::uint32_t, std::uint64_t> drops_by_reason;
};

class ObserveAggregate {
  public:
    struct StoredConnect {
        connect_event event;
        std::int64_t unix_time_ns;
    };
    struct StoredDrop {
        drop_event event;
        std::int64_t unix_time_ns;
    };
    struct Workload {
        WorkloadTotals totals;
        std::deque<StoredConnect> connects;
        std::deque<StoredDrop> drops;
    };

    explicit ObserveAggregate(AggregateLimits limits = {}) : limits_(limits) {}

    // Replaces every workload's totals; workloads absent from the snapshot are forgotten.
    void apply_snapshot(std::vector<WorkloadTotals> snapshot);
    void add_connect_event(const connect_event& event, std::int64_t unix_time_ns);
    void add_drop_event(const drop_event& event, std::int64_t unix_time_ns);

    const Workload* find(std::uint64_t netns_cookie) const;
    std::size_t workloads() const { return workloads_.size(); }
    std::size_t stored_events() const { return stored_events_; }
    std::uint64_t evicted() const { return evicted_; }
    std::size_t memory_bytes() const;
    std::size_t memory_limit_bytes() const;
    const AggregateLimits& limits() const { return limits_; }

  private:
    Workload* entry(std::uint64_t netns_cookie, std::uint32_t workload_id);
    void enforce_total();

    AggregateLimits limits_;
    std::unordered_map<std::uint64_t, Workload> workloads_;
    std::size_t stored_events_ = 0;
    std::uint64_t evicted_ = 0;
};

}  // namespace meshlane
