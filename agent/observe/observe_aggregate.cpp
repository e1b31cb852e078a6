#include "agent/observe/observe_aggregate.h"

#include <algorithm>

#include "agent/observe/workload_table.h"

namespace meshlane {

namespace {

// A std::map node: the value plus three pointers and a colour word.
constexpr std::size_t kMapNodeBytes = sizeof(std::pair<const std::uint32_t, std::uint64_t>) + 32;
constexpr std::size_t kEventBytes =
    std::max(sizeof(ObserveAggregate::StoredConnect), sizeof(ObserveAggregate::StoredDrop));
// An unordered_map node: key, value, next pointer, cached hash.
constexpr std::size_t kWorkloadBytes = sizeof(ObserveAggregate::Workload) + 32;

}  // namespace

void ObserveAggregate::apply_snapshot(std::vector<WorkloadTotals> snapshot) {
    apply_totals_snapshot(workloads_, limits_.max_workloads, std::move(snapshot),
                          [this](const Workload& gone) {
                              stored_events_ -= gone.connects.size() + gone.drops.size();
                          });
}

ObserveAggregate::Workload* ObserveAggregate::entry(std::uint64_t cookie, std::uint32_t id) {
    return workload_entry(workloads_, limits_.max_workloads, cookie, id);
}

template <typename Ring>
static bool trim(Ring& ring, std::size_t cap) {
    if (ring.size() <= cap) return false;
    ring.pop_front();
    return true;
}

void ObserveAggregate::add_connect_event(const connect_event& event, std::int64_t unix_time_ns) {
    Workload* workload = entry(event.netns_cookie, event.workload_id);
    if (!workload) {
        ++evicted_;
        return;
    }
    workload->connects.push_back({event, unix_time_ns});
    ++stored_events_;
    if (trim(workload->connects, limits_.events_per_workload)) {
        --stored_events_;
        ++evicted_;
    }
    enforce_total();
}

void ObserveAggregate::add_drop_event(const drop_event& event, std::int64_t unix_time_ns) {
    Workload* workload = entry(event.netns_cookie, event.workload_id);
    if (!workload) {
        ++evicted_;
        return;
    }
    workload->drops.push_back({event, unix_time_ns});
    ++stored_events_;
    if (trim(workload->drops, limits_.events_per_workload)) {
        --stored_events_;
        ++evicted_;
    }
    enforce_total();
}

// Evicts from the workload holding the most events, so one noisy workload cannot push out a
// quiet one's only evidence.
void ObserveAggregate::enforce_total() {
    while (stored_events_ > limits_.events_total) {
        Workload* largest = nullptr;
        std::size_t most = 0;
        for (auto& [cookie, workload] : workloads_) {
            const std::size_t held = workload.connects.size() + workload.drops.size();
            if (held > most) {
                most = held;
                largest = &workload;
            }
        }
        if (!largest) return;
        // The older of its two rings' heads goes.
        const bool drop_older =
            largest->connects.empty() ||
            (!largest->drops.empty() &&
             largest->drops.front().unix_time_ns <= largest->connects.front().unix_time_ns);
        if (drop_older)
            largest->drops.pop_front();
        else
            largest->connects.pop_front();
        --stored_events_;
        ++evicted_;
    }
}

const ObserveAggregate::Workload* ObserveAggregate::find(std::uint64_t cookie) const {
    auto it = workloads_.find(cookie);
    return it == workloads_.end() ? nullptr : &it->second;
}

std::size_t ObserveAggregate::memory_bytes() const {
    std::size_t bytes = sizeof(*this) + workloads_.bucket_count() * sizeof(void*);
    for (const auto& [cookie, workload] : workloads_)
        bytes += kWorkloadBytes + workload.totals.drops_by_reason.size() * kMapNodeBytes;
    return bytes + stored_events_ * kEventBytes;
}

std::size_t ObserveAggregate::memory_limit_bytes() const {
    // drop_counts holds at most MESHLANE_DROP_COUNT_ENTRIES (workload, reason) pairs in all.
    return sizeof(*this) + limits_.max_workloads * (kWorkloadBytes + 2 * sizeof(void*)) +
           MESHLANE_DROP_COUNT_ENTRIES * kMapNodeBytes + limits_.events_total * kEventBytes;
}

}  // namespace meshlane
