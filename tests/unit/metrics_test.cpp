// GET /metrics against the Prometheus text format 0.0.4 rules, checked by a small independent
// validator (every line parses; HELP and TYPE once per family, before its samples; samples
// belong to the family just declared; no duplicate series; counters end in _total; histogram
// buckets cumulative with le="+Inf" equal to _count; label values escaped), plus the
// MetricsWriter's own refusals and the /proc/self/stat parser.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "agent/observe/observation_source.h"
#include "api/metrics/agent_metrics.h"
#include "api/metrics/metrics_writer.h"
#include "api/metrics/observe_metrics.h"
#include "api/rest/rest_router.h"
#include "fake_workload_registry.h"

namespace meshlane::metrics {
namespace {

// ---------------------------------------------------------------------------------------------
// The validator: written from the format description, not from the writer.
// ---------------------------------------------------------------------------------------------

struct ParsedSample {
    std::string name;
    std::vector<std::pair<std::string, std::string>> labels;  // unescaped values
    std::string canonical;                                    // name + sorted labels
    double value = 0;
};

bool is_name(const std::string& s, bool allow_colon) {
    if (s.empty()) return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        const bool ok = std::isalpha(static_cast<unsigned char>(c)) || c == '_' ||
                        (allow_colon && c == ':') ||
                        (i > 0 && std::isdigit(static_cast<unsigned char>(c)));
        if (!ok) return false;
    }
    return true;
}

// Parses `name{l="v",...} value`; returns an error string or "".
std::string parse_sample(const std::string& line, ParsedSample& out) {
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    out.name = line.substr(0, i);
    if (!is_name(out.name, true)) return "bad metric name";
    std::map<std::string, std::string> sorted;
    if (i < line.size() && line[i] == '{') {
        ++i;
        while (i < line.size() && line[i] != '}') {
            const auto eq = line.find('=', i);
            if (eq == std::string::npos) return "label without =";
            const std::string label = line.substr(i, eq - i);
            if (!is_name(label, false)) return "bad label name '" + label + "'";
            if (eq + 1 >= line.size() || line[eq + 1] != '"') return "label value not quoted";
            std::string value;
            std::size_t j = eq + 2;
            for (; j < line.size() && line[j] != '"'; ++j) {
                if (line[j] == '\\') {
                    if (++j >= line.size()) return "dangling escape";
                    if (line[j] == 'n')
                        value += '\n';
                    else if (line[j] == '\\' || line[j] == '"')
                        value += line[j];
                    else
                        return "invalid escape \\" + std::string(1, line[j]);
                } else if (line[j] == '\n') {
                    return "raw newline in label value";
                } else {
                    value += line[j];
                }
            }
            if (j >= line.size()) return "unterminated label value";
            if (!sorted.emplace(label, value).second) return "repeated label " + label;
            out.labels.emplace_back(label, value);
            i = j + 1;
            if (i < line.size() && line[i] == ',') ++i;
        }
        if (i >= line.size()) return "unterminated label set";
        ++i;
    }
    if (i >= line.size() || line[i] != ' ') return "no space before value";
    const std::string value = line.substr(i + 1);
    if (value == "+Inf")
        out.value = INFINITY;
    else if (value == "-Inf")
        out.value = -INFINITY;
    else if (value == "NaN")
        out.value = NAN;
    else {
        std::size_t used = 0;
        try {
            out.value = std::stod(value, &used);
        } catch (const std::exception&) {
            return "value does not parse";
        }
        if (used != value.size()) return "trailing text after value";
    }
    out.canonical = out.name;
    for (const auto& [k, v] : sorted) out.canonical += "|" + k + "=" + v;
    return "";
}

// Returns the problems found; empty when the exposition is valid.
std::vector<std::string> validate_exposition(const std::string& text) {
    std::vector<std::string> problems;
    if (!text.empty() && text.back() != '\n') problems.push_back("does not end with a newline");
    std::map<std::string, std::string> type_of;  // family -> type
    std::set<std::string> help_seen, series, finished;
    std::string current;  // family whose samples may follow
    std::map<std::string, double> inf_bucket, counts;
    std::map<std::string, double> last_bucket, last_le;
    std::istringstream lines(text);
    int number = 0;
    for (std::string line; std::getline(lines, line);) {
        ++number;
        auto problem = [&](const std::string& what) {
            problems.push_back("line " + std::to_string(number) + ": " + what + ": " + line);
        };
        if (line.empty()) continue;
        if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
            const bool help = line[2] == 'H';
            const auto rest = line.substr(7);
            const auto space = rest.find(' ');
            const auto family = rest.substr(0, space);
            if (!is_name(family, true)) problem("bad family name");
            if (finished.count(family) || (current != family && type_of.count(family)))
                problem("family declared twice or not contiguous");
            if (help) {
                if (!help_seen.insert(family).second) problem("second HELP");
                const auto doc = space == std::string::npos ? "" : rest.substr(space + 1);
                for (std::size_t k = 0; k < doc.size(); ++k) {
                    if (doc[k] != '\\') continue;
                    if (k + 1 >= doc.size() || (doc[k + 1] != '\\' && doc[k + 1] != 'n'))
                        problem("bad escape in HELP");
                    ++k;  // the escaped character
                }
            } else {
                const auto type = space == std::string::npos ? "" : rest.substr(space + 1);
                if (type != "counter" && type != "gauge" && type != "histogram" &&
                    type != "summary" && type != "untyped")
                    problem("unknown type");
                if (type_of.count(family)) problem("second TYPE");
                if (type == "counter" &&
                    (family.size() < 6 || family.substr(family.size() - 6) != "_total"))
                    problem("counter not ending in _total");
                type_of[family] = type;
            }
            if (current != family && !current.empty()) finished.insert(current);
            current = family;
            continue;
        }
        if (line[0] == '#') continue;  // other comments are allowed
        ParsedSample sample;
        if (auto error = parse_sample(line, sample); !error.empty()) {
            problem(error);
            continue;
        }
        if (!series.insert(sample.canonical).second) problem("duplicate series");
        const auto type = type_of.count(current) ? type_of[current] : "";
        if (type.empty() || !help_seen.count(current)) {
            problem("sample before HELP and TYPE of its family");
            continue;
        }
        std::string base = sample.canonical;
        if (type == "histogram") {
            const auto& n = sample.name;
            if (n == current + "_bucket") {
                std::string le;
                base = current;
                for (const auto& [k, v] : sample.labels) {
                    if (k == "le")
                        le = v;
                    else
                        base += "|" + k + "=" + v;
                }
                if (le.empty()) problem("bucket without le");
                double bound = INFINITY;
                if (le != "+Inf") {
                    std::size_t used = 0;
                    try {
                        bound = std::stod(le, &used);
                    } catch (const std::exception&) {
                        used = 0;
                    }
                    if (le.empty() || used != le.size()) problem("le is not a number");
                }
                if (last_le.count(base) && !(bound > last_le[base]))
                    problem("le not ascending (or a bucket after +Inf)");
                last_le[base] = bound;
                if (last_bucket.count(base) && sample.value < last_bucket[base])
                    problem("buckets not cumulative");
                last_bucket[base] = sample.value;
                if (le == "+Inf") inf_bucket[base] = sample.value;
            } else if (n == current + "_count") {
                base = current;
                for (const auto& [k, v] : sample.labels) base += "|" + k + "=" + v;
                counts[base] = sample.value;
            } else if (n != current + "_sum") {
                problem("histogram sample name");
            }
        } else if (sample.name != current) {
            problem("sample does not belong to family " + current);
        }
        if (type == "counter" && !(sample.value >= 0)) problem("negative counter");
    }
    for (const auto& [base, count] : counts)
        if (!inf_bucket.count(base) || inf_bucket[base] != count)
            problems.push_back("histogram " + base + ": +Inf bucket differs from _count");
    for (const auto& [family, type] : type_of)
        if (!help_seen.count(family)) problems.push_back(family + ": TYPE without HELP");
    return problems;
}

// ---------------------------------------------------------------------------------------------

TEST(MetricsValidator, CatchesTheMistakesItLooksFor) {
    EXPECT_TRUE(
        validate_exposition("# HELP a_total x\n# TYPE a_total counter\na_total 1\n").empty());
    EXPECT_FALSE(validate_exposition("a_total 1\n").empty());  // no HELP/TYPE
    EXPECT_FALSE(validate_exposition("# HELP a x\n# TYPE a counter\na 1\n").empty());
    EXPECT_FALSE(
        validate_exposition("# HELP a x\n# TYPE a gauge\na{l=\"x\"} 1\na{l=\"x\"} 2\n").empty());
    EXPECT_FALSE(validate_exposition("# HELP a x\n# TYPE a gauge\na{l=\"x\\q\"} 1\n").empty());
    EXPECT_FALSE(validate_exposition("# HELP a x\n# TYPE a gauge\na{l=x} 1\n").empty());
    EXPECT_FALSE(
        validate_exposition("# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\n"
                            "# HELP a x\n# TYPE a gauge\n")
            .empty());
    EXPECT_FALSE(validate_exposition("# HELP a x\n# TYPE a gauge\na one\n").empty());
}

TEST(MetricsWriter, EscapesLabelValuesAndHelp) {
    MetricsWriter out;
    out.gauge("meshlane_test_info", "Help with a \\ backslash\nand a newline.");
    out.sample({{"path", "C:\\dir \"quoted\"\nnext"}}, std::uint64_t{1});
    EXPECT_EQ(out.text(),
              "# HELP meshlane_test_info Help with a \\\\ backslash\\nand a newline.\n"
              "# TYPE meshlane_test_info gauge\n"
              "meshlane_test_info{path=\"C:\\\\dir \\\"quoted\\\"\\nnext\"} 1\n");
    EXPECT_TRUE(validate_exposition(out.text()).empty());
}

TEST(MetricsWriter, WritesExactIntegersAndSpecialFloats) {
    MetricsWriter out;
    out.counter("big_total", "x");
    out.sample({}, std::uint64_t{18446744073709551615u});
    out.gauge("g", "x");
    out.sample({{"k", "inf"}}, INFINITY);
    out.sample({{"k", "nan"}}, NAN);
    out.sample({{"k", "half"}}, 0.5);
    EXPECT_NE(out.text().find("big_total 18446744073709551615\n"), std::string::npos);
    EXPECT_NE(out.text().find("g{k=\"inf\"} +Inf\n"), std::string::npos);
    EXPECT_NE(out.text().find("g{k=\"nan\"} NaN\n"), std::string::npos);
    EXPECT_NE(out.text().find("g{k=\"half\"} 0.5\n"), std::string::npos);
    EXPECT_TRUE(validate_exposition(out.text()).empty()) << out.text();
}

TEST(MetricsWriter, HistogramHasCumulativeBucketsInfSumAndCount) {
    MetricsWriter out;
    out.histogram("meshlane_connect_latency_seconds", "Connect latency.");
    out.histogram_sample({{"workload", "web"}}, {{0.001, 2}, {0.002, 5}}, 0.0071, 6);
    out.histogram_sample({{"workload", "db"}}, {}, 0, 0);
    EXPECT_EQ(out.text(),
              "# HELP meshlane_connect_latency_seconds Connect latency.\n"
              "# TYPE meshlane_connect_latency_seconds histogram\n"
              "meshlane_connect_latency_seconds_bucket{workload=\"web\",le=\"0.001\"} 2\n"
              "meshlane_connect_latency_seconds_bucket{workload=\"web\",le=\"0.002\"} 5\n"
              "meshlane_connect_latency_seconds_bucket{workload=\"web\",le=\"+Inf\"} 6\n"
              "meshlane_connect_latency_seconds_sum{workload=\"web\"} 0.0071\n"
              "meshlane_connect_latency_seconds_count{workload=\"web\"} 6\n"
              "meshlane_connect_latency_seconds_bucket{workload=\"db\",le=\"+Inf\"} 0\n"
              "meshlane_connect_latency_seconds_sum{workload=\"db\"} 0\n"
              "meshlane_connect_latency_seconds_count{workload=\"db\"} 0\n");
    EXPECT_TRUE(validate_exposition(out.text()).empty()) << out.text();
}

TEST(MetricsWriter, RefusesWhatPrometheusWouldReject) {
    auto throws = [](auto&& write) {
        MetricsWriter out;
        EXPECT_THROW(write(out), std::logic_error);
    };
    throws([](MetricsWriter& o) { o.counter("requests", "no _total"); });
    throws([](MetricsWriter& o) { o.gauge("queue_total", "gauge named like a counter"); });
    throws([](MetricsWriter& o) { o.gauge("1bad", "x"); });
    throws([](MetricsWriter& o) { o.gauge("a", "x"), o.gauge("a", "x"); });
    throws([](MetricsWriter& o) { o.sample({}, std::uint64_t{1}); });  // no family
    throws([](MetricsWriter& o) {
        o.gauge("a", "x"), o.sample({{"bad-name", "v"}}, std::uint64_t{1});
    });
    throws([](MetricsWriter& o) { o.gauge("a", "x"), o.sample({{"__x", "v"}}, std::uint64_t{1}); });
    throws([](MetricsWriter& o) {
        o.gauge("a", "x");
        o.sample({{"k", "v"}}, std::uint64_t{1});
        o.sample({{"k", "v"}}, std::uint64_t{2});
    });
    throws([](MetricsWriter& o) { o.counter("a_total", "x"), o.sample({}, -1.0); });
    throws([](MetricsWriter& o) {
        o.histogram("h", "x");
        o.histogram_sample({}, {{0.2, 1}, {0.1, 2}}, 0, 2);  // bounds not ascending
    });
    throws([](MetricsWriter& o) {
        o.histogram("h", "x");
        o.histogram_sample({}, {{0.1, 3}, {0.2, 2}}, 0, 3);  // counts not cumulative
    });
    throws([](MetricsWriter& o) { o.histogram("h", "x"), o.sample({}, std::uint64_t{1}); });
    throws([](MetricsWriter& o) {
        o.histogram("h", "x"), o.histogram_sample({{"le", "1"}}, {}, 0, 0);
    });
}

TEST(ProcStat, ParsesTheFieldsProcDocuments) {
    // comm with spaces and parentheses; utime 150, stime 50, starttime 1000, vsize, rss 300.
    const std::string stat =
        "1234 (my (odd) comm) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 1000 "
        "123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
    auto stats = parse_proc_stat(stat, 1700000000, 100, 4096);
    ASSERT_TRUE(stats.ok()) << stats.error().message;
    EXPECT_DOUBLE_EQ(stats->cpu_seconds, 2.0);
    EXPECT_DOUBLE_EQ(stats->start_time_seconds, 1700000010.0);
    EXPECT_EQ(stats->virtual_bytes, 123456789u);
    EXPECT_EQ(stats->resident_bytes, 300u * 4096u);
    EXPECT_FALSE(parse_proc_stat("1234 (x) S 1 2", 0, 100, 4096).ok());
    EXPECT_FALSE(parse_proc_stat("no parenthesis", 0, 100, 4096).ok());
    auto live = read_process_stats();
    ASSERT_TRUE(live.ok()) << live.error().message;
    EXPECT_GT(live->resident_bytes, 0u);
    EXPECT_GT(live->open_fds, 0u);
}

// The whole endpoint, through the router, with workloads whose names and paths need escaping.
TEST(MetricsEndpoint, ServesValidExpositionWithEveryFamily) {
    meshlane::testing::FakeWorkloadRegistry registry;
    events::EventBus bus;
    for (const char* name : {"web", "db"}) {
        WorkloadSpec spec;
        spec.name = name;
        spec.cgroup_path = std::string("/sys/fs/cgroup/pod \"") + name + "\"\\x";
        spec.netns_path = std::string("/run/netns/") + name;
        ASSERT_TRUE(registry.enroll(spec).ok());
    }
    bus.publish(events::Event{.type = "workload_enrolled", .workload = "web"});
    rest::RestRouter router(registry, rest::kDefaultBodyLimit, nullptr, &bus);
    rest::Request request{rest::http::verb::get, "/metrics", 11};
    const auto response = router.handle(request);
    ASSERT_EQ(response.result(), rest::http::status::ok);
    EXPECT_EQ(response[rest::http::field::content_type], kContentType);
    const auto& text = response.body();
    const auto problems = validate_exposition(text);
    for (const auto& p : problems) ADD_FAILURE() << p;
    for (const char* expected : {
             "meshlane_redirect_decisions_total{workload=\"web\",decision=\"outbound_redirected\"} "
             "7\n",
             "meshlane_redirect_decisions_total{workload=\"db\",decision=\"inbound_steered\"} 3\n",
             "meshlane_inbound_listener_registered{workload=\"web\",family=\"ipv4\"} 1\n",
             "meshlane_workloads_enrolled 2\n",
             "meshlane_workloads_max 4096\n",
             "meshlane_build_info{version=\"test\",kernel=\"6.1.0\"} 1\n",
             "meshlane_events_published_total 1\n",
             "cgroup=\"/sys/fs/cgroup/pod \\\"web\\\"\\\\x\"",
             "# TYPE process_cpu_seconds_total counter\n",
             "# TYPE process_resident_memory_bytes gauge\n",
             "# TYPE meshlane_original_dst_lookups_total counter\n",
         })
        EXPECT_NE(text.find(expected), std::string::npos) << "missing " << expected << "\n" << text;
}

TEST(MetricsValidator, CatchesBucketMistakes) {
    const std::string head = "# HELP h x\n# TYPE h histogram\n";
    EXPECT_FALSE(validate_exposition(head + "h_bucket{le=\"0.2\"} 1\nh_bucket{le=\"0.1\"} 1\n" +
                                     "h_bucket{le=\"+Inf\"} 1\nh_count 1\n")
                     .empty());
    EXPECT_FALSE(validate_exposition(head + "h_bucket{le=\"+Inf\"} 2\nh_count 3\n").empty());
    EXPECT_FALSE(validate_exposition(head + "h_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\n" +
                                     "h_count 2\n")
                     .empty());
}

// The kernel's log2-of-microseconds buckets: bucket i (values < 2^(i+1) us) becomes le =
// 2^(i+1) us in seconds, cumulative; the last, unbounded bucket only counts in +Inf.
TEST(MetricsWriter, Log2HistogramBucketsAreCumulativeSecondsWithTheTopOnlyInInf) {
    std::array<std::uint64_t, MESHLANE_HIST_BUCKETS> counts{};
    counts[0] = 1;                          // [0, 2) us
    counts[9] = 2;                          // [512, 1024) us
    counts[MESHLANE_HIST_BUCKETS - 1] = 4;  // >= 2^31 us
    const auto buckets = MetricsWriter::log2_us_buckets(counts);
    ASSERT_EQ(buckets.size(), MESHLANE_HIST_BUCKETS - 1u);
    EXPECT_DOUBLE_EQ(buckets[0].upper_bound, 2e-6);
    EXPECT_EQ(buckets[0].cumulative_count, 1u);
    EXPECT_DOUBLE_EQ(buckets[9].upper_bound, 1024e-6);
    EXPECT_EQ(buckets[8].cumulative_count, 1u);
    EXPECT_EQ(buckets[9].cumulative_count, 3u);
    EXPECT_EQ(buckets.back().cumulative_count, 3u);
    MetricsWriter out;
    out.histogram("meshlane_tcp_connect_seconds", "x");
    out.log2_histogram_sample({{"workload", "web"}, {"side", "app"}}, counts, 1.5);
    const auto& text = out.text();
    EXPECT_NE(text.find("meshlane_tcp_connect_seconds_bucket{workload=\"web\",side=\"app\","
                        "le=\"0.001024\"} 3\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("le=\"+Inf\"} 7\n"), std::string::npos);
    EXPECT_NE(text.find("meshlane_tcp_connect_seconds_count{workload=\"web\",side=\"app\"} 7\n"),
              std::string::npos);
    EXPECT_NE(text.find("meshlane_tcp_connect_seconds_sum{workload=\"web\",side=\"app\"} 1.5\n"),
              std::string::npos);
    EXPECT_TRUE(validate_exposition(text).empty()) << text;
    // Every value lands in a bucket whose le is at or above it.
    for (std::uint64_t us : {0ull, 1ull, 2ull, 3ull, 1000ull, 1023ull, 1024ull, 999999ull}) {
        std::array<std::uint64_t, MESHLANE_HIST_BUCKETS> one{};
        one[Log2Histogram::bucket_of(us)] = 1;
        for (const auto& b : MetricsWriter::log2_us_buckets(one))
            if (b.cumulative_count == 1) {
                EXPECT_GE(b.upper_bound, static_cast<double>(us) * 1e-6) << us;
                break;
            }
    }
}

class FakeObservations : public ObservationSource {
  public:
    WorkloadConnections connections(std::uint32_t id, std::uint64_t cookie) const override {
        WorkloadConnections view;
        view.workload_id = id;
        view.netns_cookie = cookie;
        auto& app = view.sides[MESHLANE_SIDE_APP];
        app.latency.add(150, 3);
        app.latency.add(1'000'000);
        app.established = 4;
        app.latency_sum_us = 1'000'450;
        view.sides[MESHLANE_SIDE_UPSTREAM].refused = 2;
        view.tcp.syn_retransmits = 1;
        view.tcp.resets_received = 2;
        return view;
    }
    WorkloadDrops drops(std::uint32_t id, std::uint64_t cookie, const DropQuery&) const override {
        WorkloadDrops view;
        view.workload_id = id;
        view.netns_cookie = cookie;
        view.by_reason.push_back({12, "NETFILTER_DROP", 5});
        view.by_reason.push_back({2, "NO_SOCKET", 1});
        view.total = 6;
        return view;
    }
    ObserverHealth health() const override {
        ObserverHealth health;
        health.connect_tracking = health.drop_tracking = true;
        health.lost_events["drops.rate_limited"] = 9;
        health.lost_events["drops.ringbuf_full"] = 0;
        health.lost_events_total = 9;
        health.drop_events = 3;
        health.memory_bytes = 1000;
        health.memory_limit_bytes = 5000;
        return health;
    }
    std::optional<std::uint32_t> drop_reason_value(std::string_view) const override {
        return std::nullopt;
    }
    BpfMapFillReport map_fill() const override {
        BpfMapFillReport report;
        report.counted_unix_ms = 1;
        report.maps.push_back({.name = "drop_counts",
                               .owner = "observe_drops",
                               .id = 7,
                               .type = "hash",
                               .max_entries = 16384,
                               .entries = 4});
        report.maps.push_back({.name = "orig_dst_by_socket",
                               .owner = "pinned",
                               .id = 3,
                               .type = "sk_storage",
                               .note = "not countable"});
        return report;
    }
};

// The observer's families through the router: valid exposition (the validator above), one
// histogram series per workload and side with the +Inf bucket equal to _count, exact counts.
TEST(MetricsEndpoint, ServesTheObserversFamilies) {
    meshlane::testing::FakeWorkloadRegistry registry;
    for (const char* name : {"web", "db"}) {
        WorkloadSpec spec;
        spec.name = name;
        spec.cgroup_path = std::string("/sys/fs/cgroup/") + name;
        spec.netns_path = std::string("/run/netns/") + name;
        ASSERT_TRUE(registry.enroll(spec).ok());
    }
    FakeObservations observations;
    rest::RestRouter router(registry, rest::kDefaultBodyLimit, &observations, nullptr);
    rest::Request request{rest::http::verb::get, "/metrics", 11};
    const auto response = router.handle(request);
    ASSERT_EQ(response.result(), rest::http::status::ok);
    const auto& text = response.body();
    for (const auto& p : validate_exposition(text)) ADD_FAILURE() << p;
    for (const char* expected : {
             "# TYPE meshlane_tcp_connect_seconds histogram\n",
             "meshlane_tcp_connect_seconds_bucket{workload=\"web\",side=\"app\",le=\"0.000256\"} "
             "3\n",
             "meshlane_tcp_connect_seconds_bucket{workload=\"web\",side=\"app\",le=\"+Inf\"} 4\n",
             "meshlane_tcp_connect_seconds_count{workload=\"db\",side=\"app\"} 4\n",
             "meshlane_tcp_connect_seconds_sum{workload=\"web\",side=\"app\"} 1.00045\n",
             "meshlane_tcp_connect_seconds_count{workload=\"web\",side=\"upstream\"} 0\n",
             "meshlane_tcp_connect_failures_total{workload=\"web\",side=\"upstream\","
             "outcome=\"refused\"} 2\n",
             "meshlane_tcp_retransmits_total{workload=\"db\",kind=\"syn\"} 1\n",
             "meshlane_tcp_resets_total{workload=\"web\",direction=\"received\"} 2\n",
             "meshlane_drops_total{workload=\"web\",reason=\"NETFILTER_DROP\"} 5\n",
             "meshlane_drops_total{workload=\"db\",reason=\"NO_SOCKET\"} 1\n",
             "meshlane_bpf_map_entries{map=\"drop_counts\",owner=\"observe_drops\"} 4\n",
             "meshlane_bpf_map_max_entries{map=\"drop_counts\",owner=\"observe_drops\"} 16384\n",
             "meshlane_observe_lost_events_total{kind=\"drops.rate_limited\"} 9\n",
             "meshlane_observe_events_total{kind=\"drop\"} 3\n",
             "meshlane_observe_memory_limit_bytes 5000\n",
             "meshlane_observe_tracking{part=\"drop\"} 1\n",
         })
        EXPECT_NE(text.find(expected), std::string::npos) << "missing " << expected << "\n" << text;
    // An uncountable map is not given a number (GET /v1/status says why).
    EXPECT_EQ(text.find("map=\"orig_dst_by_socket\""), std::string::npos);
    // HELP and TYPE exactly once per family.
    for (const char* family : {"meshlane_tcp_connect_seconds", "meshlane_drops_total"}) {
        const std::string help = std::string("# HELP ") + family + " ";
        EXPECT_EQ(text.find(help), text.rfind(help)) << family;
    }
}

// Series in one exposition: every line that is not a comment.
std::size_t series_count(const std::string& text) {
    std::size_t count = 0;
    for (std::size_t at = 0; at < text.size();) {
        const auto end = std::min(text.find('\n', at), text.size());
        if (end > at && text[at] != '#') ++count;
        at = end + 1;
    }
    return count;
}

std::string scrape(rest::RestRouter& router, const char* target) {
    rest::Request request{rest::http::verb::get, target, 11};
    const auto response = router.handle(request);
    EXPECT_EQ(response.result(), rest::http::status::ok) << target << ": " << response.body();
    return response.body();
}

void enroll_two(meshlane::testing::FakeWorkloadRegistry& registry) {
    for (const char* name : {"web", "db"}) {
        WorkloadSpec spec;
        spec.name = name;
        spec.cgroup_path = std::string("/sys/fs/cgroup/") + name;
        spec.netns_path = std::string("/run/netns/") + name;
        ASSERT_TRUE(registry.enroll(spec).ok());
    }
}

// metrics_workload_histograms = false: one node-wide histogram per side with the workloads'
// buckets summed; metrics_drop_reasons = false: drops per workload, reasons node-wide. Both
// still valid expositions, and fewer series.
TEST(MetricsEndpoint, CardinalitySwitchesAggregateExactly) {
    meshlane::testing::FakeWorkloadRegistry registry;
    enroll_two(registry);
    FakeObservations observations;
    rest::RestRouter full(registry, rest::kDefaultBodyLimit, &observations, nullptr);
    rest::RestRouter small(registry, rest::kDefaultBodyLimit, &observations, nullptr,
                           MetricsOptions{.workload_histograms = false, .drop_reasons = false});
    const auto full_text = scrape(full, "/metrics");
    const auto text = scrape(small, "/metrics");
    for (const auto& p : validate_exposition(text)) ADD_FAILURE() << p;
    for (const char* expected : {
             "meshlane_tcp_connect_seconds_bucket{side=\"app\",le=\"0.000256\"} 6\n",
             "meshlane_tcp_connect_seconds_count{side=\"app\"} 8\n",
             "meshlane_tcp_connect_seconds_sum{side=\"app\"} 2.0009\n",
             "meshlane_drops_total{workload=\"web\"} 6\n",
             "meshlane_drops_by_reason_total{reason=\"NETFILTER_DROP\"} 10\n",
             "meshlane_drops_by_reason_total{reason=\"NO_SOCKET\"} 2\n",
         })
        EXPECT_NE(text.find(expected), std::string::npos) << "missing " << expected << "\n" << text;
    EXPECT_EQ(text.find("meshlane_tcp_connect_seconds_bucket{workload="), std::string::npos);
    EXPECT_EQ(text.find("meshlane_tls_handshake_seconds_bucket{workload="), std::string::npos);
    EXPECT_EQ(text.find("meshlane_drops_total{workload=\"web\",reason="), std::string::npos);
    EXPECT_LT(series_count(text), series_count(full_text));
}

// ?exclude=process: no process_* family (node_exporter's textfile collector has its own);
// anything else to exclude is a 400 naming it.
TEST(MetricsEndpoint, ExcludeProcessLeavesTheProcessFamiliesOut) {
    meshlane::testing::FakeWorkloadRegistry registry;
    rest::RestRouter router(registry);
    EXPECT_NE(scrape(router, "/metrics").find("\nprocess_open_fds "), std::string::npos);
    const auto text = scrape(router, "/metrics?exclude=process");
    for (const auto& p : validate_exposition(text)) ADD_FAILURE() << p;
    EXPECT_EQ(text.find("process_"), std::string::npos) << text;
    EXPECT_NE(text.find("meshlane_workloads_enrolled 0\n"), std::string::npos);
    for (const char* bad : {"/metrics?exclude=meshlane", "/metrics?only=process"}) {
        rest::Request request{rest::http::verb::get, bad, 11};
        const auto response = router.handle(request);
        EXPECT_EQ(response.result(), rest::http::status::bad_request) << bad;
    }
}

// A workload from Kubernetes carries namespace and pod next to its workload label on every
// series; one without (enrolled by hand) does not. The series count does not change.
TEST(MetricsEndpoint, KubernetesPodsGetNamespaceAndPodLabels) {
    meshlane::testing::FakeWorkloadRegistry registry;
    WorkloadSpec spec;
    spec.name = "shop.web-0";
    spec.cgroup_path = "/sys/fs/cgroup/web";
    spec.netns_path = "/run/netns/web";
    spec.k8s_namespace = "shop";
    spec.k8s_pod = "web-0";
    ASSERT_TRUE(validate(spec).ok());
    ASSERT_TRUE(registry.enroll(spec).ok());
    spec = WorkloadSpec{};
    spec.name = "manual";
    spec.cgroup_path = "/sys/fs/cgroup/manual";
    spec.netns_path = "/run/netns/manual";
    ASSERT_TRUE(registry.enroll(spec).ok());
    FakeObservations observations;
    rest::RestRouter router(registry, rest::kDefaultBodyLimit, &observations, nullptr);
    const auto text = scrape(router, "/metrics");
    for (const auto& p : validate_exposition(text)) ADD_FAILURE() << p;
    for (const char* expected : {
             "meshlane_drops_total{workload=\"shop.web-0\",namespace=\"shop\",pod=\"web-0\","
             "reason=\"NETFILTER_DROP\"} 5\n",
             "meshlane_tcp_connect_seconds_count{workload=\"shop.web-0\",namespace=\"shop\","
             "pod=\"web-0\",side=\"app\"} 4\n",
             "meshlane_redirect_decisions_total{workload=\"shop.web-0\",namespace=\"shop\","
             "pod=\"web-0\",decision=\"inbound_steered\"} 3\n",
             "meshlane_drops_total{workload=\"manual\",reason=\"NETFILTER_DROP\"} 5\n",
         })
        EXPECT_NE(text.find(expected), std::string::npos) << "missing " << expected << "\n" << text;
}

TEST(WorkloadSpecPodIdentity, BothOrNeitherAndKubernetesNames) {
    WorkloadSpec spec;
    EXPECT_TRUE(validate_pod_identity(spec).ok());
    spec.k8s_namespace = "shop";
    EXPECT_FALSE(validate_pod_identity(spec).ok());
    spec.k8s_pod = "web-0.x";
    EXPECT_TRUE(validate_pod_identity(spec).ok());
    spec.k8s_pod = "Web_0";
    EXPECT_FALSE(validate_pod_identity(spec).ok());
    spec.k8s_pod = std::string(254, 'a');
    EXPECT_FALSE(validate_pod_identity(spec).ok());
    spec.k8s_pod = "web-0";
    auto round_trip = workload_spec_from_json(to_json(spec));
    ASSERT_TRUE(round_trip.ok()) << round_trip.error().message;
    EXPECT_EQ(round_trip->k8s_namespace, "shop");
    EXPECT_EQ(round_trip->k8s_pod, "web-0");
}

}  // namespace
}  // namespace meshlane::metrics
