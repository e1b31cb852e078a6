// Log2 histogram math and the bounded per-workload aggregate (agent/observe/).
#include <gtest/gtest.h>

#include "agent/observe/log2_histogram.h"
#include "agent/observe/observe_aggregate.h"

namespace meshlane {
namespace {

TEST(Log2Histogram, BucketsMatchTheKernelRule) {
    EXPECT_EQ(Log2Histogram::bucket_of(0), 0u);
    EXPECT_EQ(Log2Histogram::bucket_of(1), 0u);
    EXPECT_EQ(Log2Histogram::bucket_of(2), 1u);
    EXPECT_EQ(Log2Histogram::bucket_of(3), 1u);
    EXPECT_EQ(Log2Histogram::bucket_of(4), 2u);
    EXPECT_EQ(Log2Histogram::bucket_of(1'000'000), 19u);  // 1 s in [524288, 1048576) us
    EXPECT_EQ(Log2Histogram::bucket_of(~0ULL), Log2Histogram::kBuckets - 1);
    for (unsigned b = 1; b < Log2Histogram::kBuckets - 1; ++b) {
        EXPECT_EQ(Log2Histogram::bucket_of(Log2Histogram::bucket_lower_us(b)), b);
        EXPECT_EQ(Log2Histogram::bucket_of(Log2Histogram::bucket_upper_us(b) - 1), b);
    }
}

TEST(Log2Histogram, EmptyHasZeroPercentiles) {
    Log2Histogram h;
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.percentile_us(0.5), 0.0);
}

TEST(Log2Histogram, SingleSampleStaysInItsBucket) {
    Log2Histogram h;
    h.add(1'000'000);
    for (double q : {0.01, 0.5, 0.9, 0.99, 1.0}) {
        EXPECT_GE(h.percentile_us(q), 524'288.0);
        EXPECT_LE(h.percentile_us(q), 1'048'576.0);
    }
}

TEST(Log2Histogram, PercentilesFollowTheRanks) {
    Log2Histogram h;
    h.add(100, 90);    // bucket 6: [64, 128)
    h.add(10'000, 9);  // bucket 13: [8192, 16384)
    h.add(1'000'000);  // bucket 19
    EXPECT_EQ(h.count(), 100u);
    EXPECT_GE(h.percentile_us(0.5), 64.0);
    EXPECT_LE(h.percentile_us(0.5), 128.0);
    EXPECT_LE(h.percentile_us(0.9), 128.0);  // rank 90 is the last fast sample
    EXPECT_GE(h.percentile_us(0.91), 8192.0);
    EXPECT_LE(h.percentile_us(0.99), 16384.0);
    EXPECT_GE(h.percentile_us(1.0), 524'288.0);
    // Monotonic in q.
    double previous = 0;
    for (int i = 1; i <= 100; ++i) {
        const double value = h.percentile_us(i / 100.0);
        EXPECT_GE(value, previous) << "q=" << i;
        previous = value;
    }
}

TEST(Log2Histogram, InterpolatesWithinABucket) {
    Log2Histogram h;
    h.add(1500, 4);  // bucket 10: [1024, 2048)
    EXPECT_DOUBLE_EQ(h.percentile_us(0.25), 1024.0 + 1024.0 * 0.25);
    EXPECT_DOUBLE_EQ(h.percentile_us(0.5), 1024.0 + 1024.0 * 0.5);
    EXPECT_DOUBLE_EQ(h.percentile_us(1.0), 2048.0);
}

TEST(Log2Histogram, MergeAddsBuckets) {
    Log2Histogram a, b;
    a.add(10, 2);
    b.add(10, 3);
    b.add(5000);
    a.merge(b);
    EXPECT_EQ(a.count(), 6u);
    EXPECT_EQ(a.buckets()[Log2Histogram::bucket_of(10)], 5u);
}

TEST(Log2Histogram, FromRawKernelValue) {
    connect_stats stats{};
    stats.latency_hist[3] = 7;
    auto h = Log2Histogram::from_raw(stats.latency_hist);
    EXPECT_EQ(h.count(), 7u);
    EXPECT_EQ(h.buckets()[3], 7u);
}

connect_event connect_for(std::uint64_t cookie, std::uint32_t id) {
    connect_event e{};
    e.netns_cookie = cookie;
    e.workload_id = id;
    return e;
}

drop_event drop_for(std::uint64_t cookie, std::uint32_t id) {
    drop_event e{};
    e.netns_cookie = cookie;
    e.workload_id = id;
    return e;
}

TEST(ObserveAggregate, PerWorkloadRingIsBounded) {
    ObserveAggregate aggregate({.max_workloads = 4, .events_per_workload = 3, .events_total = 100});
    for (int i = 0; i < 10; ++i) aggregate.add_connect_event(connect_for(1, 0), i);
    const auto* w = aggregate.find(1);
    ASSERT_NE(w, nullptr);
    ASSERT_EQ(w->connects.size(), 3u);
    EXPECT_EQ(w->connects.front().unix_time_ns, 7);  // the newest three are kept
    EXPECT_EQ(aggregate.evicted(), 7u);
    EXPECT_EQ(aggregate.stored_events(), 3u);
}

TEST(ObserveAggregate, TotalBoundEvictsFromTheLargest) {
    ObserveAggregate aggregate(
        {.max_workloads = 4, .events_per_workload = 100, .events_total = 10});
    aggregate.add_drop_event(drop_for(2, 1), 0);  // the quiet workload's only evidence
    for (int i = 1; i <= 20; ++i) aggregate.add_drop_event(drop_for(1, 0), i);
    EXPECT_EQ(aggregate.stored_events(), 10u);
    ASSERT_NE(aggregate.find(2), nullptr);
    EXPECT_EQ(aggregate.find(2)->drops.size(), 1u);
    EXPECT_EQ(aggregate.find(1)->drops.size(), 9u);
    EXPECT_LE(aggregate.memory_bytes(), aggregate.memory_limit_bytes());
}

TEST(ObserveAggregate, SnapshotReplacesTotalsAndForgetsGoneWorkloads) {
    ObserveAggregate aggregate;
    aggregate.add_connect_event(connect_for(1, 0), 1);
    aggregate.add_connect_event(connect_for(2, 1), 1);
    WorkloadTotals totals;
    totals.netns_cookie = 2;
    totals.workload_id = 1;
    totals.tcp.resets_received = 5;
    totals.drops_by_reason[12] = 3;
    aggregate.apply_snapshot({totals});
    EXPECT_EQ(aggregate.find(1), nullptr);
    ASSERT_NE(aggregate.find(2), nullptr);
    EXPECT_EQ(aggregate.find(2)->totals.tcp.resets_received, 5u);
    EXPECT_EQ(aggregate.find(2)->connects.size(), 1u);  // events survive a snapshot
    EXPECT_EQ(aggregate.stored_events(), 1u);
}

TEST(ObserveAggregate, RefusesMoreWorkloadsThanTheKernelMapHolds) {
    ObserveAggregate aggregate({.max_workloads = 2, .events_per_workload = 4, .events_total = 8});
    for (std::uint64_t cookie = 1; cookie <= 5; ++cookie)
        aggregate.add_connect_event(connect_for(cookie, 0), 0);
    EXPECT_EQ(aggregate.workloads(), 2u);
    EXPECT_EQ(aggregate.evicted(), 3u);
    EXPECT_LE(aggregate.memory_bytes(), aggregate.memory_limit_bytes());
}

}  // namespace
}  // namespace meshlane
