// The per-workload table every aggregate keeps (connect/drop, TLS): entries keyed by netns
// cookie, bounded, created on first sight, forgotten when a snapshot of the kernel's per-workload
// totals no longer lists the workload.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace meshlane {

// The entry of `cookie`, created with its ids when there is room; nullptr when the table is
// full (more netns than the kernel map can hold is only possible transiently, e.g. an event
// racing an unenrol: refuse rather than grow). Workload has `totals.workload_id/netns_cookie`.
template <typename Workload>
Workload* workload_entry(std::unordered_map<std::uint64_t, Workload>& table,
                         std::size_t max_workloads, std::uint64_t cookie, std::uint32_t id) {
    auto it = table.find(cookie);
    if (it != table.end()) return &it->second;
    if (table.size() >= max_workloads) return nullptr;
    Workload& workload = table[cookie];
    workload.totals.workload_id = id;
    workload.totals.netns_cookie = cookie;
    return &workload;
}

// Stores each workload's new totals and erases the workloads the snapshot no longer lists,
// calling `forget(workload)` first so the aggregate can release what it accounted for them.
template <typename Workload, typename Snapshot, typename Forget>
void apply_totals_snapshot(std::unordered_map<std::uint64_t, Workload>& table,
                           std::size_t max_workloads, Snapshot&& snapshot, Forget forget) {
    std::unordered_set<std::uint64_t> seen;
    for (auto& totals : snapshot) {
        seen.insert(totals.netns_cookie);
        if (Workload* workload =
                workload_entry(table, max_workloads, totals.netns_cookie, totals.workload_id)) {
            if constexpr (std::is_lvalue_reference_v<Snapshot>)
                workload->totals = totals;
            else
                workload->totals = std::move(totals);  // a snapshot given by value is consumed
        }
    }
    for (auto it = table.begin(); it != table.end();) {
        if (seen.count(it->first)) {
            ++it;
            continue;
        }
        forget(it->second);
        it = table.erase(it);
    }
}

}  // namespace meshlane
