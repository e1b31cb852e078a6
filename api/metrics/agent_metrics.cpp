#include "api/metrics/agent_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "agent/events/event_bus.h"
#include "agent/model/readiness.h"

namespace meshlane::metrics {

namespace {

struct Series {
    std::vector<std::pair<std::string, std::string>> labels;
    std::uint64_t value = 0;
};

Labels view(const Series& series) {
    Labels labels;
    for (const auto& [name, value] : series.labels) labels.push_back({name, value});
    return labels;
}

void write_family(MetricsWriter& out, bool counter, std::string_view name, std::string_view help,
                  const std::vector<Series>& samples) {
    if (counter)
        out.counter(name, help);
    else
        out.gauge(name, help);
    for (const auto& series : samples) out.sample(view(series), series.value);
}

bool starts_with(std::string_view s, std::string_view prefix) {
    return s.substr(0, prefix.size()) == prefix;
}

std::string read_file(const char* path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

std::uint64_t count_open_fds() {
    std::uint64_t count = 0;
    if (DIR* dir = ::opendir("/proc/self/fd")) {
        while (const dirent* entry = ::readdir(dir))
            if (entry->d_name[0] != '.') ++count;
        ::closedir(dir);
        if (count > 0) --count;  // the directory stream's own descriptor
    }
    return count;
}

}  // namespace

// The datapath's counter names (redirect_counter_name) become three families: capture decisions,
// SO_ORIGINAL_DST lookups, and everything else by name, so a counter added to the BPF side shows
// up without a change here.
void write_workload_metrics(MetricsWriter& out, WorkloadRegistry& registry) {
    const auto agent = registry.status();
    const auto workloads = registry.list();

    out.gauge("meshlane_build_info", "Agent version and the kernel it runs on (always 1).");
    out.sample({{"version", agent.version}, {"kernel", agent.kernel}}, std::uint64_t{1});
    out.gauge("meshlane_kernel_feature_available",
              "Kernel features probed at start (1 = present).");
    for (const auto& [feature, present] : agent.features)
        out.sample({{"feature", feature}}, std::uint64_t{present ? 1u : 0u});
    // The agent's parts and the readiness they make (agent/model/readiness.h): what the
    // "interception disabled" alert and the dashboard's status row read.
    out.gauge("meshlane_feature_enabled",
              "1 when that part of the agent runs (redirect = interception; observe_connect, "
              "observe_drops, fast_path), 0 when off; by_config=\"true\" when off on purpose.");
    for (const auto& [feature, state] : agent.feature_states)
        out.sample({{"feature", feature}, {"by_config", state.by_config ? "true" : "false"}},
                   std::uint64_t{state.enabled ? 1u : 0u});
    const auto readiness = evaluate_readiness(agent);
    out.gauge("meshlane_readiness",
              "1 for the agent's readiness state (ready, degraded, not_ready; GET /readyz), 0 for "
              "the others.");
    for (const auto state : {Readiness::kReady, Readiness::kDegraded, Readiness::kNotReady})
        out.sample({{"state", to_string(state)}},
                   std::uint64_t{readiness.state == state ? 1u : 0u});
    out.gauge("meshlane_workloads_enrolled", "Workloads currently enrolled.");
    out.sample({}, static_cast<std::uint64_t>(workloads.size()));
    out.gauge("meshlane_workloads_max",
              "Workloads the datapath maps are sized for (max_workloads).");
    out.sample({}, static_cast<std::uint64_t>(agent.max_workloads));

    std::vector<Series> info, listeners, decisions, orig_dst, other;
    std::vector<Series> registrations, getpeername, dns, fast_path;
    for (const auto& w : workloads) {
        const std::string& name = w.spec.name;
        // Only where acceleration is on: 15 series a workload otherwise always zero.
        if (w.fast_path_active)
            for (const auto& [counter, value] : w.fast_path_counters)
                fast_path.push_back({{{"workload", name}, {"counter", counter}}, value});
        info.push_back({{{"workload", name},
                         {"workload_id", std::to_string(w.workload_id)},
                         {"cgroup", w.cgroup_resolved},
                         {"netns", w.spec.netns_path}},
                        1});
        listeners.push_back({{{"workload", name}, {"family", "ipv4"}}, w.inbound_listener_v4});
        listeners.push_back({{{"workload", name}, {"family", "ipv6"}}, w.inbound_listener_v6});
        for (const auto& [counter, value] : w.counters) {
            if (starts_with(counter, "outbound_") || starts_with(counter, "inbound_")) {
                decisions.push_back({{{"workload", name}, {"decision", counter}}, value});
            } else if (starts_with(counter, "orig_dst_")) {
                orig_dst.push_back(
                    {{{"workload", name}, {"result", counter.substr(sizeof("orig_dst_") - 1)}},
                     value});
            } else if (counter == "proxy_listener_registered") {
                registrations.push_back({{{"workload", name}}, value});
            } else if (counter == "getpeername_rewritten") {
                getpeername.push_back({{{"workload", name}}, value});
            } else if (starts_with(counter, "dns_")) {
                dns.push_back(
                    {{{"workload", name}, {"event", counter.substr(sizeof("dns_") - 1)}}, value});
            } else {
                other.push_back({{{"workload", name}, {"counter", counter}}, value});
            }
        }
    }
    write_family(out, false, "meshlane_workload_info",
                 "Enrolled workloads with their datapath id, cgroup and netns (always 1).", info);
    write_family(out, false, "meshlane_inbound_listener_registered",
                 "1 when the proxy's inbound listener is registered for sk_lookup, per family.",
                 listeners);
    write_family(out, true, "meshlane_redirect_decisions_total",
                 "Connections by capture decision (the istio-iptables rule that applied).",
                 decisions);
    write_family(
        out, true, "meshlane_original_dst_lookups_total",
        "SO_ORIGINAL_DST by the proxy: answered, miss (no record), tuple_lost (a redirected "
        "connection's record not found at accept), not_redirected (accepted on the "
        "outbound port without a redirect).",
        orig_dst);
    write_family(out, true, "meshlane_proxy_listener_registrations_total",
                 "Times the proxy's inbound listener was registered by the sockops program.",
                 registrations);
    write_family(out, true, "meshlane_getpeername_rewritten_total",
                 "getpeername() answers rewritten to the app's original destination.", getpeername);
    write_family(out, true, "meshlane_dns_capture_total",
                 "DNS capture (docs/dns-capture.md): redirected_udp, redirected_tcp, "
                 "pass_proxy_owner, pass_not_nameserver, reply_source_restored.",
                 dns);
    write_family(out, true, "meshlane_datapath_counter_total",
                 "Other per-workload datapath counters, by name.", other);
    write_family(out, true, "meshlane_fastpath_counter_total",
                 "sk_msg fast-path counters of workloads with acceleration on (docs/fastpath.md): "
                 "redirected_bytes / (redirected_bytes + passed_bytes) is the fast-path share.",
                 fast_path);
}

void write_event_metrics(MetricsWriter& out, const events::EventBus& bus) {
    const auto stats = bus.stats();
    out.counter("meshlane_events_published_total", "Events published on the agent's event bus.");
    out.sample({}, stats.published);
    out.counter("meshlane_events_lost_total",
                "Events dropped for slow stream subscribers (each reported to it as lost).");
    out.sample({}, stats.dropped);
    out.gauge("meshlane_event_subscribers", "Open event streams (REST and gRPC).");
    out.sample({}, static_cast<std::uint64_t>(stats.subscribers));
}

void write_process_metrics(MetricsWriter& out, const ProcessStats& stats) {
    out.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.");
    out.sample({}, stats.cpu_seconds);
    out.gauge("process_resident_memory_bytes", "Resident memory size in bytes.");
    out.sample({}, stats.resident_bytes);
    out.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.");
    out.sample({}, stats.virtual_bytes);
    out.gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds.");
    out.sample({}, stats.start_time_seconds);
    out.gauge("process_open_fds", "Number of open file descriptors.");
    out.sample({}, stats.open_fds);
    out.gauge("process_max_fds", "Maximum number of open file descriptors.");
    out.sample({}, stats.max_fds);
}

Result<ProcessStats> parse_proc_stat(std::string_view stat, std::uint64_t boot_time_seconds,
                                     long ticks_per_second, long page_size) {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    const auto close = stat.rfind(')');
    if (close == std::string_view::npos || ticks_per_second <= 0 || page_size <= 0)
        return Error::invalid("/proc/self/stat: no command field");
    std::vector<std::string_view> fields;  // fields[0] is field 3 (state)
    std::string_view rest = stat.substr(close + 1);
    while (!rest.empty()) {
        const auto begin = rest.find_first_not_of(" \n");
        if (begin == std::string_view::npos) break;
        rest.remove_prefix(begin);
        const auto end = std::min(rest.find_first_of(" \n"), rest.size());
        fields.push_back(rest.substr(0, end));
        rest.remove_prefix(end);
    }
    if (fields.size() < 22) return Error::invalid("/proc/self/stat: too few fields");
    bool parsed = true;
    auto field = [&](int number) {
        const auto token = fields[static_cast<std::size_t>(number - 3)];
        std::uint64_t value = 0;
        const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
        if (ec != std::errc() || ptr != token.data() + token.size()) parsed = false;
        return value;
    };
    // Field numbers as in proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    ProcessStats stats;
    const auto ticks = static_cast<double>(ticks_per_second);
    stats.cpu_seconds = static_cast<double>(field(14) + field(15)) / ticks;
    stats.start_time_seconds =
        static_cast<double>(boot_time_seconds) + static_cast<double>(field(22)) / ticks;
    stats.virtual_bytes = field(23);
    stats.resident_bytes = field(24) * static_cast<std::uint64_t>(page_size);
    if (!parsed) return Error::invalid("/proc/self/stat: a numeric field does not parse");
    return stats;
}

Result<ProcessStats> read_process_stats() {
    const std::string stat = read_file("/proc/self/stat");
    std::uint64_t boot_time = 0;
    std::istringstream system_stat(read_file("/proc/stat"));
    for (std::string line; std::getline(system_stat, line);)
        if (line.rfind("btime ", 0) == 0) boot_time = std::stoull(line.substr(6));
    auto stats = parse_proc_stat(stat, boot_time, ::sysconf(_SC_CLK_TCK), ::sysconf(_SC_PAGESIZE));
    if (!stats) return stats;
    stats->open_fds = count_open_fds();
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) stats->max_fds = limit.rlim_cur;
    return stats;
}

}  // namespace meshlane::metrics
