// Map fill levels read from the kernel (GET /v1/status "maps", gRPC Status.maps, /metrics
// meshlane_bpf_map_entries): for each map meshlane holds, its type and max_entries from
// bpf_map_get_info_by_fd and the entries in use, counted the only exact way the syscall API
// offers for that type. Maps whose use cannot be counted from user space (socket-local storage,
// ring buffers) are listed as not countable rather than guessed. Run by the observer's reader
// thread on a timer (ObserverOptions::map_fill_interval): views read its last result.
#pragma once

#include <bpf/libbpf.h>

#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/common/unique_fd.h"
#include "agent/observe/observation_source.h"

namespace meshlane {

// A map to count: its full name (the kernel keeps only 15 characters), who holds it, its fd.
struct MapToCount {
    std::string name;
    std::string owner;  // kMapOwnerPinned or the BPF object that holds it
    int fd = -1;
};

inline constexpr const char* kMapOwnerPinned = "pinned";

enum class MapCountMethod {
    kPreallocated,  // arrays: every slot exists, entries = max_entries
    kIterateKeys,   // hash, LRU, LPM trie, sockhash: bpf_map_get_next_key over the keys
    kLookupSlots,   // sockmap: a slot is used when a lookup finds a socket
    kNotCountable,  // local storage, ring buffers, ...: no key iteration from user space
};

// Pure: how a map of this bpf_map_type is counted; why not, for kNotCountable.
MapCountMethod map_count_method(std::uint32_t map_type);
std::string not_countable_reason(std::uint32_t map_type);

// Reads the map's info and counts it (at most max_entries keys are visited).
BpfMapFill count_map(const MapToCount& map);

// The maps pinned in `dir` (non-recursive; other pinned objects are skipped), opened read-only;
// `keep` owns the fds the result refers to.
std::vector<MapToCount> pinned_maps(const std::string& dir, std::vector<UniqueFd>& keep);

// The maps a loaded object holds itself: internal (.rodata/.bss) and pinned maps are left out
// (pinned ones are counted once from the pin directory).
void add_object_maps(const bpf_object* object, const std::string& owner,
                     std::vector<MapToCount>& out);

// Fill against max_entries when that means something (not for preallocated arrays, whose every
// slot always exists, nor for maps that cannot be counted).
std::optional<double> fill_ratio(const BpfMapFill& map);

// {"counted_unix_ms", "maps": [{"name", "owner", "id", "type", "max_entries", "entries" (null:
// not countable), "fill_ratio" (null: see fill_ratio), "note"}]}: REST status and the CLI.
boost::json::object to_json(const BpfMapFillReport& report);

}  // namespace meshlane
