#include "agent/observe/log2_histogram.h"

#include <algorithm>
#include <cmath>

namespace meshlane {

Log2Histogram Log2Histogram::from_raw(const __u64 (&raw)[MESHLANE_HIST_BUCKETS]) {
    Buckets buckets{};
    std::copy(std::begin(raw), std::end(raw), buckets.begin());
    return Log2Histogram(buckets);
}

unsigned Log2Histogram::bucket_of(std::uint64_t us) {
    unsigned bucket = 0;
    while (us >= 2 && bucket < kBuckets - 1) {
        us >>= 1;
        ++bucket;
    }
    return bucket;
}

std::uint64_t Log2Histogram::bucket_lower_us(unsigned bucket) {
    return bucket == 0 ? 0 : std::uint64_t{1} << bucket;
}

std::uint64_t Log2Histogram::bucket_upper_us(unsigned bucket) {
    return std::uint64_t{1} << (bucket + 1);
}

void Log2Histogram::add(std::uint64_t us, std::uint64_t count) { buckets_[bucket_of(us)] += count; }

void Log2Histogram::merge(const Log2Histogram& other) {
    for (unsigned i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
}

std::uint64_t Log2Histogram::count() const {
    std::uint64_t total = 0;
    for (auto n : buckets_) total += n;
    return total;
}

double Log2Histogram::percentile_us(double q) const {
    const std::uint64_t total = count();
    if (total == 0) return 0.0;
    q = std::clamp(q, 0.0, 1.0);
    // The rank of the sample at quantile q, 1-based: the smallest rank with rank/total >= q.
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
    rank = std::clamp<std::uint64_t>(rank, 1, total);
    std::uint64_t below = 0;
    for (unsigned bucket = 0; bucket < kBuckets; ++bucket) {
        const std::uint64_t in_bucket = buckets_[bucket];
        if (below + in_bucket >= rank) {
            const double fraction =
                static_cast<double>(rank - below) / static_cast<double>(in_bucket);
            const auto lower = static_cast<double>(bucket_lower_us(bucket));
            const auto upper = static_cast<double>(bucket_upper_us(bucket));
            return lower + (upper - lower) * fraction;
        }
        below += in_bucket;
    }
    return static_cast<double>(bucket_upper_us(kBuckets - 1));
}

}  // namespace meshlane
