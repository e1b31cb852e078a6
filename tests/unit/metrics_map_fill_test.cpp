// Map fill levels (agent/observe/map_fill.h): how each map type is counted, the JSON view, and
// counting real maps created here (skipped when the process may not create BPF maps).
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <boost/json.hpp>

#include "agent/observe/map_fill.h"

namespace meshlane {
namespace {

TEST(MapFill, CountMethodByType) {
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_HASH), MapCountMethod::kIterateKeys);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_LRU_HASH), MapCountMethod::kIterateKeys);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_LPM_TRIE), MapCountMethod::kIterateKeys);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_SOCKHASH), MapCountMethod::kIterateKeys);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_PERCPU_ARRAY), MapCountMethod::kPreallocated);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_SOCKMAP), MapCountMethod::kLookupSlots);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_SK_STORAGE), MapCountMethod::kNotCountable);
    EXPECT_EQ(map_count_method(BPF_MAP_TYPE_RINGBUF), MapCountMethod::kNotCountable);
    EXPECT_NE(not_countable_reason(BPF_MAP_TYPE_SK_STORAGE).find("local storage"),
              std::string::npos);
}

TEST(MapFill, RatioOnlyWhereItMeansSomething) {
    BpfMapFill hash{.name = "port_rules", .max_entries = 10, .entries = 9};
    EXPECT_DOUBLE_EQ(*fill_ratio(hash), 0.9);
    BpfMapFill array{
        .name = "redirect_counters", .max_entries = 8, .entries = 8, .preallocated = true};
    EXPECT_FALSE(fill_ratio(array));
    BpfMapFill storage{.name = "orig_dst_by_socket", .type = "sk_storage"};
    EXPECT_FALSE(fill_ratio(storage));
    const auto json = to_json(BpfMapFillReport{.counted_unix_ms = 5, .maps = {hash, storage}});
    const auto& maps = json.at("maps").as_array();
    ASSERT_EQ(maps.size(), 2u);
    EXPECT_EQ(maps[0].at("entries").as_uint64(), 9u);
    EXPECT_DOUBLE_EQ(maps[0].at("fill_ratio").as_double(), 0.9);
    EXPECT_TRUE(maps[1].at("entries").is_null());
    EXPECT_TRUE(maps[1].at("fill_ratio").is_null());
}

UniqueFd create_map(bpf_map_type type, std::uint32_t key_size, std::uint32_t value_size,
                    std::uint32_t max_entries, std::uint32_t flags = 0) {
    LIBBPF_OPTS(bpf_map_create_opts, options, .map_flags = flags);
    return UniqueFd(bpf_map_create(type, "fill_test", key_size, value_size, max_entries, &options));
}

TEST(MapFill, CountsRealMapsFromTheKernel) {
    auto hash = create_map(BPF_MAP_TYPE_HASH, 4, 8, 64);
    if (!hash.valid()) GTEST_SKIP() << "cannot create BPF maps here: " << std::strerror(errno);
    for (std::uint32_t key = 0; key < 5; ++key) {
        std::uint64_t value = key;
        ASSERT_EQ(bpf_map_update_elem(hash.get(), &key, &value, BPF_ANY), 0);
    }
    auto fill = count_map({"a_hash", "test", hash.get()});
    EXPECT_EQ(fill.type, "hash");
    EXPECT_EQ(fill.max_entries, 64u);
    ASSERT_TRUE(fill.entries);
    EXPECT_EQ(*fill.entries, 5u);
    EXPECT_GT(fill.id, 0u);

    auto array = create_map(BPF_MAP_TYPE_ARRAY, 4, 8, 16);
    fill = count_map({"an_array", "test", array.get()});
    EXPECT_TRUE(fill.preallocated);
    EXPECT_EQ(fill.entries.value_or(0), 16u);

    auto sockmap = create_map(BPF_MAP_TYPE_SOCKMAP, 4, 8, 8);
    fill = count_map({"a_sockmap", "test", sockmap.get()});
    EXPECT_EQ(fill.entries.value_or(99), 0u) << fill.note;

    auto storage = create_map(BPF_MAP_TYPE_SK_STORAGE, 4, 8, 0, BPF_F_NO_PREALLOC);
    if (storage.valid()) {  // needs BTF for the value; fine either way
        fill = count_map({"a_storage", "test", storage.get()});
        EXPECT_FALSE(fill.entries);
    }
}

}  // namespace
}  // namespace meshlane
