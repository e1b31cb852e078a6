#include "api/metrics/metrics_writer.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

namespace meshlane::metrics {

namespace {

bool name_char(char c, bool first, bool colon_ok) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (alpha || (colon_ok && c == ':')) return true;
    return !first && c >= '0' && c <= '9';
}

bool valid_name(std::string_view name, bool colon_ok) {
    if (name.empty()) return false;
    for (std::size_t i = 0; i < name.size(); ++i)
        if (!name_char(name[i], i == 0, colon_ok)) return false;
    return true;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

bool MetricsWriter::valid_metric_name(std::string_view name) { return valid_name(name, true); }

// Names starting with "__" are reserved for Prometheus itself.
bool MetricsWriter::valid_label_name(std::string_view name) {
    return valid_name(name, false) && name.substr(0, 2) != "__";
}

std::string MetricsWriter::escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (const char c : value) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

// HELP escapes backslash and line feed only (quotes stay as they are).
std::string MetricsWriter::escape_help(std::string_view help) {
    std::string out;
    out.reserve(help.size());
    for (const char c : help) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

std::string MetricsWriter::format_value(double value) {
    if (std::isnan(value)) return "NaN";
    if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
    return fmt::format("{}", value);  // shortest representation that round-trips
}

void MetricsWriter::begin(std::string_view name, Type type, std::string_view help) {
    if (!valid_metric_name(name))
        throw std::logic_error(fmt::format("invalid metric name '{}'", name));
    if (type == Type::kCounter && !ends_with(name, "_total"))
        throw std::logic_error(fmt::format("counter '{}' must end in _total", name));
    if (type != Type::kCounter && ends_with(name, "_total"))
        throw std::logic_error(fmt::format("only counters end in _total: '{}'", name));
    if (!families_.insert(std::string(name)).second)
        throw std::logic_error(fmt::format("metric family '{}' written twice", name));
    family_ = name;
    type_ = type;
    const char* type_name = type == Type::kCounter ? "counter"
                            : type == Type::kGauge ? "gauge"
                                                   : "histogram";
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type_name);
}

void MetricsWriter::counter(std::string_view name, std::string_view help) {
    begin(name, Type::kCounter, help);
}
void MetricsWriter::gauge(std::string_view name, std::string_view help) {
    begin(name, Type::kGauge, help);
}
void MetricsWriter::histogram(std::string_view name, std::string_view help) {
    begin(name, Type::kHistogram, help);
}

void MetricsWriter::require(Type type, const char* what) const {
    if (type_ == Type::kNone) throw std::logic_error(std::string(what) + " before any family");
    const bool ok =
        type == Type::kHistogram ? type_ == Type::kHistogram : type_ != Type::kHistogram;
    if (!ok) throw std::logic_error(std::string(what) + " does not fit family " + family_);
}

void MetricsWriter::write_sample(std::string_view suffix, const Labels& labels, const Label* extra,
                                 std::string_view value) {
    std::string series = family_;
    series += suffix;
    std::string rendered;
    std::set<std::string_view> names;
    auto add = [&](const Label& label) {
        if (!valid_label_name(label.name) || (extra != &label && label.name == "le"))
            throw std::logic_error(
                fmt::format("invalid label name '{}' in {}", label.name, series));
        if (!names.insert(label.name).second)
            throw std::logic_error(fmt::format("label '{}' repeated in {}", label.name, series));
        if (!rendered.empty()) rendered += ',';
        rendered += fmt::format("{}=\"{}\"", label.name, escape_label_value(label.value));
    };
    for (const auto& label : labels) {
        add(label);
        if (label.name != "workload") continue;
        // Kubernetes pods: their namespace and pod name next to every workload label.
        if (auto it = pod_identity_.find(label.value); it != pod_identity_.end()) {
            add({"namespace", it->second.first});
            add({"pod", it->second.second});
        }
    }
    if (extra != nullptr) add(*extra);
    if (!rendered.empty()) series += "{" + rendered + "}";
    if (!series_.insert(series).second)
        throw std::logic_error(fmt::format("series {} written twice", series));
    out_ += series;
    out_ += ' ';
    out_ += value;
    out_ += '\n';
}

void MetricsWriter::sample(const Labels& labels, std::uint64_t value) {
    require(Type::kCounter, "sample");
    write_sample("", labels, nullptr, std::to_string(value));
}

void MetricsWriter::sample(const Labels& labels, double value) {
    require(Type::kCounter, "sample");
    if (type_ == Type::kCounter && (std::isnan(value) || value < 0))
        throw std::logic_error(fmt::format("counter {} given {}", family_, value));
    write_sample("", labels, nullptr, format_value(value));
}

void MetricsWriter::histogram_sample(const Labels& labels, const std::vector<Bucket>& buckets,
                                     double sum, std::uint64_t count) {
    require(Type::kHistogram, "histogram_sample");
    double previous_bound = -INFINITY;
    std::uint64_t previous_count = 0;
    for (const auto& bucket : buckets) {
        if (!(bucket.upper_bound > previous_bound) || bucket.cumulative_count < previous_count ||
            bucket.cumulative_count > count || std::isinf(bucket.upper_bound))
            throw std::logic_error("histogram " + family_ + ": buckets not ascending/cumulative");
        previous_bound = bucket.upper_bound;
        previous_count = bucket.cumulative_count;
        const std::string le = format_value(bucket.upper_bound);
        const Label extra{"le", le};
        write_sample("_bucket", labels, &extra, std::to_string(bucket.cumulative_count));
    }
    const Label inf{"le", "+Inf"};
    write_sample("_bucket", labels, &inf, std::to_string(count));
    write_sample("_sum", labels, nullptr, format_value(sum));
    write_sample("_count", labels, nullptr, std::to_string(count));
}

std::vector<Bucket> MetricsWriter::log2_us_buckets(std::span<const std::uint64_t> log2_us_counts) {
    std::vector<Bucket> buckets;
    if (log2_us_counts.empty()) return buckets;
    buckets.reserve(log2_us_counts.size() - 1);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i + 1 < log2_us_counts.size(); ++i) {
        cumulative += log2_us_counts[i];
        const double upper_us = std::ldexp(1.0, static_cast<int>(i) + 1);
        buckets.push_back({upper_us * 1e-6, cumulative});
    }
    return buckets;
}

void MetricsWriter::log2_histogram_sample(const Labels& labels,
                                          std::span<const std::uint64_t> log2_us_counts,
                                          double sum_seconds) {
    std::uint64_t count = 0;
    for (const auto n : log2_us_counts) count += n;
    histogram_sample(labels, log2_us_buckets(log2_us_counts), sum_seconds, count);
}

}  // namespace meshlane::metrics
