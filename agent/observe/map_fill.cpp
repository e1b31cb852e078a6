#include "agent/observe/map_fill.h"

#include <bpf/bpf.h>
#include <linux/bpf.h>

#include <algorithm>
#include <boost/json.hpp>
#include <filesystem>
#include <vector>

namespace meshlane {

MapCountMethod map_count_method(std::uint32_t map_type) {
    switch (map_type) {
        case BPF_MAP_TYPE_ARRAY:
        case BPF_MAP_TYPE_PERCPU_ARRAY:
            return MapCountMethod::kPreallocated;
        case BPF_MAP_TYPE_HASH:
        case BPF_MAP_TYPE_PERCPU_HASH:
        case BPF_MAP_TYPE_LRU_HASH:
        case BPF_MAP_TYPE_LRU_PERCPU_HASH:
        case BPF_MAP_TYPE_LPM_TRIE:
        case BPF_MAP_TYPE_SOCKHASH:
            return MapCountMethod::kIterateKeys;
        case BPF_MAP_TYPE_SOCKMAP:
            return MapCountMethod::kLookupSlots;
        default:
            return MapCountMethod::kNotCountable;
    }
}

std::string not_countable_reason(std::uint32_t map_type) {
    switch (map_type) {
        case BPF_MAP_TYPE_SK_STORAGE:
        case BPF_MAP_TYPE_INODE_STORAGE:
        case BPF_MAP_TYPE_TASK_STORAGE:
            return "not countable: local storage lives with each socket/task/cgroup and has no "
                   "key iteration from user space; freed with its owner";
        case BPF_MAP_TYPE_RINGBUF:
        case BPF_MAP_TYPE_USER_RINGBUF:
            return "not countable: a ring buffer (max_entries is its size in bytes); losses are "
                   "in lost_events";
        default:
            return "not countable from user space";
    }
}

namespace {

std::string type_name(std::uint32_t map_type) {
    const char* name = libbpf_bpf_map_type_str(static_cast<bpf_map_type>(map_type));
    return name != nullptr ? name : "type_" + std::to_string(map_type);
}

// Keys visited: bounded by max_entries, since a key deleted under us makes the kernel restart
// from the first one (a count can then be high, never unbounded).
std::uint64_t count_keys(int fd, const bpf_map_info& info) {
    std::vector<unsigned char> key(std::max<std::uint32_t>(info.key_size, 1));
    std::vector<unsigned char> next(key.size());
    const void* previous = nullptr;
    std::uint64_t count = 0;
    while (count < info.max_entries && bpf_map_get_next_key(fd, previous, next.data()) == 0) {
        ++count;
        key.swap(next);
        previous = key.data();
    }
    return count;
}

bool batchable(std::uint32_t map_type) {
    return map_type == BPF_MAP_TYPE_HASH || map_type == BPF_MAP_TYPE_PERCPU_HASH ||
           map_type == BPF_MAP_TYPE_LRU_HASH || map_type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

// Hash maps: BPF_MAP_LOOKUP_BATCH reads a few thousand elements per syscall, where
// bpf_map_get_next_key needs one per key (a full 64k-entry hash: ~0.6 s on a loaded 2-core box).
// The batch token of a hash map is a bucket index, so a bucket is never split or repeated.
std::optional<std::uint64_t> count_batched(int fd, const bpf_map_info& info) {
    constexpr std::uint32_t kBatch = 4096;
    const bool per_cpu =
        info.type == BPF_MAP_TYPE_PERCPU_HASH || info.type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
    const int cpus = per_cpu ? libbpf_num_possible_cpus() : 1;
    if (cpus <= 0) return std::nullopt;
    const std::size_t value_size =
        per_cpu ? ((info.value_size + 7) / 8 * 8) * static_cast<std::size_t>(cpus)
                : info.value_size;
    std::vector<unsigned char> keys(std::size_t{info.key_size} * kBatch);
    std::vector<unsigned char> values(value_size * kBatch);
    std::vector<unsigned char> token(std::max<std::size_t>(info.key_size, 8));
    std::vector<unsigned char> next(token.size());
    void* in = nullptr;
    std::uint64_t total = 0;
    while (total <= info.max_entries) {
        std::uint32_t count = kBatch;
        const int err =
            bpf_map_lookup_batch(fd, in, next.data(), keys.data(), values.data(), &count, nullptr);
        if (err != 0 && err != -ENOENT) return std::nullopt;
        total += count;
        if (err == -ENOENT) return std::min<std::uint64_t>(total, info.max_entries);
        token.swap(next);
        in = token.data();
    }
    return std::uint64_t{info.max_entries};
}

// A sockmap slot holds a socket when a lookup answers (its cookie, for 8-byte values): one
// syscall per slot, so only up to kMaxProbedSlots (the default max_workloads needs 8192; 131072
// slots take ~1 s on a loaded 2-core box, too long for the reader thread every 5 s).
constexpr std::uint32_t kMaxProbedSlots = 16384;

std::optional<std::uint64_t> count_slots(int fd, const bpf_map_info& info) {
    if (info.key_size != sizeof(std::uint32_t) || info.value_size != sizeof(std::uint64_t) ||
        info.max_entries > kMaxProbedSlots)
        return std::nullopt;
    std::uint64_t count = 0;
    for (std::uint32_t slot = 0; slot < info.max_entries; ++slot) {
        std::uint64_t cookie = 0;
        if (bpf_map_lookup_elem(fd, &slot, &cookie) == 0)
            ++count;
        else if (errno != ENOENT)
            return std::nullopt;
    }
    return count;
}

}  // namespace

BpfMapFill count_map(const MapToCount& map) {
    BpfMapFill fill;
    fill.name = map.name;
    fill.owner = map.owner;
    bpf_map_info info{};
    std::uint32_t length = sizeof(info);
    if (bpf_obj_get_info_by_fd(map.fd, &info, &length) != 0) {
        fill.note = std::string("not countable: map info: ") + std::strerror(errno);
        return fill;
    }
    fill.id = info.id;
    fill.type = type_name(info.type);
    fill.max_entries = info.max_entries;
    switch (map_count_method(info.type)) {
        case MapCountMethod::kPreallocated:
            fill.entries = info.max_entries;
            fill.preallocated = true;
            fill.note = "preallocated: every slot exists";
            break;
        case MapCountMethod::kIterateKeys:
            if (batchable(info.type)) fill.entries = count_batched(map.fd, info);
            fill.note = fill.entries ? "elements read in batches" : "keys counted";
            if (!fill.entries) fill.entries = count_keys(map.fd, info);
            break;
        case MapCountMethod::kLookupSlots:
            fill.entries = count_slots(map.fd, info);
            fill.note = fill.entries ? "slots holding a socket counted"
                        : info.max_entries > kMaxProbedSlots
                            ? "not countable: too many slots to probe each one every few seconds"
                            : "not countable: socket slots cannot be read back";
            break;
        case MapCountMethod::kNotCountable:
            fill.note = not_countable_reason(info.type);
            break;
    }
    return fill;
}

std::vector<MapToCount> pinned_maps(const std::string& dir, std::vector<UniqueFd>& keep) {
    std::vector<MapToCount> maps;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        if (!entry.is_regular_file(ec)) continue;
        LIBBPF_OPTS(bpf_obj_get_opts, options, .file_flags = BPF_F_RDONLY);
        UniqueFd fd(bpf_obj_get_opts(entry.path().c_str(), &options));
        if (!fd.valid()) continue;
        bpf_map_info info{};
        std::uint32_t length = sizeof(info);
        if (bpf_obj_get_info_by_fd(fd.get(), &info, &length) != 0) continue;  // not a map
        maps.push_back({entry.path().filename().string(), kMapOwnerPinned, fd.get()});
        keep.push_back(std::move(fd));
    }
    std::sort(maps.begin(), maps.end(),
              [](const MapToCount& a, const MapToCount& b) { return a.name < b.name; });
    return maps;
}

void add_object_maps(const bpf_object* object, const std::string& owner,
                     std::vector<MapToCount>& out) {
    if (object == nullptr) return;
    const bpf_map* map = nullptr;
    bpf_object__for_each_map(map, object) {
        if (bpf_map__is_internal(map) || bpf_map__is_pinned(map) || bpf_map__fd(map) < 0) continue;
        out.push_back({bpf_map__name(map), owner, bpf_map__fd(map)});
    }
}

std::optional<double> fill_ratio(const BpfMapFill& map) {
    if (!map.entries || map.max_entries == 0 || map.preallocated) return std::nullopt;
    return static_cast<double>(*map.entries) / static_cast<double>(map.max_entries);
}

boost::json::object to_json(const BpfMapFillReport& report) {
    boost::json::array maps;
    for (const auto& map : report.maps) {
        boost::json::object item{{"name", map.name},
                                 {"owner", map.owner},
                                 {"id", map.id},
                                 {"type", map.type},
                                 {"max_entries", map.max_entries},
                                 {"preallocated", map.preallocated},
                                 {"note", map.note}};
        item["entries"] = map.entries ? boost::json::value(*map.entries) : nullptr;
        const auto ratio = fill_ratio(map);
        item["fill_ratio"] = ratio ? boost::json::value(*ratio) : nullptr;
        maps.push_back(std::move(item));
    }
    return {{"counted_unix_ms", report.counted_unix_ms}, {"maps", std::move(maps)}};
}

}  // namespace meshlane
