// Prometheus text exposition format 0.0.4, written by hand (no Prometheus C++ client is packaged
// in Debian 12). The writer enforces the format's rules so a caller cannot produce a scrape that
// Prometheus rejects: one HELP and one TYPE line per family, before its samples; every family
// name once; counters named *_total; valid metric and label names; label values and HELP text
// escaped; histograms with cumulative buckets ending in le="+Inf", plus _sum and _count.
// Violations are programming errors and throw std::logic_error (the router answers 500).
//
// Usage: begin a family with counter()/gauge()/histogram(), then add its samples.
//   MetricsWriter out;
//   out.counter("meshlane_redirect_decisions_total", "Connections by capture decision.");
//   out.sample({{"workload", "web"}, {"decision", "outbound_redirected"}}, 42);
//   out.histogram("meshlane_connect_latency_seconds", "TCP connect latency.");
//   out.histogram_sample({{"workload", "web"}}, {{0.001, 3}, {0.002, 7}}, 0.0123, 9);
// The kernel's log2-of-microseconds histograms (include/meshlane/observe_abi.h) go through
// log2_histogram_sample(), so every latency family (connect, TLS handshake) has the same le set:
//   out.histogram("meshlane_tcp_connect_seconds", "TCP connect latency.");
//   out.log2_histogram_sample({{"workload", "web"}, {"side", "app"}}, totals.latency.buckets(),
//                             totals.latency_sum_us * 1e-6);
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace meshlane::metrics {

inline constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

struct Label {
    std::string_view name;
    std::string_view value;
};
using Labels = std::vector<Label>;

// One histogram bucket: observations <= upper_bound, cumulative (as Prometheus wants them).
struct Bucket {
    double upper_bound;
    std::uint64_t cumulative_count;
};

class MetricsWriter {
  public:
    void counter(std::string_view name, std::string_view help);
    void gauge(std::string_view name, std::string_view help);
    void histogram(std::string_view name, std::string_view help);

    // A sample of the current counter or gauge family. Integers are written exactly (a uint64
    // counter must not go through a double).
    void sample(const Labels& labels, std::uint64_t value);
    void sample(const Labels& labels, double value);
    // A histogram series of the current histogram family: `buckets` ascending by upper bound
    // with non-decreasing cumulative counts, none above `count`; le="+Inf" is added.
    void histogram_sample(const Labels& labels, const std::vector<Bucket>& buckets, double sum,
                          std::uint64_t count);

    // A histogram series from per-bucket (not cumulative) counts of a log2 histogram of
    // microseconds: bucket 0 holds [0, 2) us, bucket i >= 1 holds [2^i, 2^(i+1)) us, the last
    // bucket everything above. Bucket i becomes le = 2^(i+1) us in seconds (its values are all
    // below that bound); the last, unbounded bucket is only counted in le="+Inf". _count is the
    // total of all buckets.
    void log2_histogram_sample(const Labels& labels, std::span<const std::uint64_t> log2_us_counts,
                               double sum_seconds);
    // The cumulative buckets log2_histogram_sample writes (without +Inf), for tests and callers
    // that need the bounds.
    static std::vector<Bucket> log2_us_buckets(std::span<const std::uint64_t> log2_us_counts);

    // Workloads that are Kubernetes pods: every series with workload="<name>" also gets
    // namespace="<first>" and pod="<second>" (labels, not series: the count stays the same).
    // Set before the first sample.
    void set_pod_identity(
        std::map<std::string, std::pair<std::string, std::string>, std::less<>> identity) {
        pod_identity_ = std::move(identity);
    }

    const std::string& text() const { return out_; }
    std::string take() { return std::move(out_); }

    static bool valid_metric_name(std::string_view name);
    static bool valid_label_name(std::string_view name);
    static std::string escape_label_value(std::string_view value);
    static std::string escape_help(std::string_view help);
    static std::string format_value(double value);

  private:
    enum class Type { kNone, kCounter, kGauge, kHistogram };
    void begin(std::string_view name, Type type, std::string_view help);
    void write_sample(std::string_view suffix, const Labels& labels, const Label* extra,
                      std::string_view value);
    void require(Type type, const char* what) const;

    std::string out_;
    std::string family_;
    Type type_ = Type::kNone;
    std::set<std::string> families_;
    std::set<std::string> series_;  // name{labels} already written
    std::map<std::string, std::pair<std::string, std::string>, std::less<>> pod_identity_;
};

}  // namespace meshlane::metrics
