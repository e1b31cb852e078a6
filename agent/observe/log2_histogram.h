// Log2 latency histograms as the kernel keeps them (include/meshlane/observe_abi.h): bucket 0
// holds [0, 2) us, bucket i >= 1 holds [2^i, 2^(i+1)) us. Percentiles interpolate linearly
// inside the bucket the rank falls in, so an estimate is never outside that bucket's bounds.
#pragma once

#include <array>
#include <cstdint>

#include "meshlane/observe_abi.h"

namespace meshlane {

class Log2Histogram {
  public:
    static constexpr unsigned kBuckets = MESHLANE_HIST_BUCKETS;
    using Buckets = std::array<std::uint64_t, kBuckets>;

    Log2Histogram() = default;
    explicit Log2Histogram(const Buckets& buckets) : buckets_(buckets) {}
    static Log2Histogram from_raw(const __u64 (&raw)[MESHLANE_HIST_BUCKETS]);

    // The bucket a value in microseconds lands in (the same rule as the BPF side).
    static unsigned bucket_of(std::uint64_t us);
    // [lower, upper) of a bucket in microseconds; the last bucket's upper is its lower * 2.
    static std::uint64_t bucket_lower_us(unsigned bucket);
    static std::uint64_t bucket_upper_us(unsigned bucket);

    void add(std::uint64_t us, std::uint64_t count = 1);
    void merge(const Log2Histogram& other);

    std::uint64_t count() const;
    // q in (0, 1]; 0 when empty.
    double percentile_us(double q) const;
    const Buckets& buckets() const { return buckets_; }

  private:
    Buckets buckets_{};
};

}  // namespace meshlane
