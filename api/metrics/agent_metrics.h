// The agent's Prometheus families (GET /metrics): redirect counters per workload, SO_ORIGINAL_DST
// answers, listener state, enrolment, event-bus losses, build info and the standard process_*
// families. Views only: everything comes from the WorkloadRegistry, the EventBus and /proc/self,
// never from BPF maps directly. Further families (the observer's connect-latency histograms,
// drops by reason) get their own write_*_metrics(MetricsWriter&, ...) next to these and one call
// in get_metrics (api/rest/metrics_route.cpp).
#pragma once

#include <cstdint>
#include <string_view>

#include "agent/common/result.h"
#include "agent/model/workload_registry.h"
#include "api/metrics/metrics_writer.h"

namespace meshlane::events {
class EventBus;
}

namespace meshlane::metrics {

struct ProcessStats {
    double cpu_seconds = 0;  // user + system
    std::uint64_t resident_bytes = 0;
    std::uint64_t virtual_bytes = 0;
    double start_time_seconds = 0;  // unix time
    std::uint64_t open_fds = 0;
    std::uint64_t max_fds = 0;
};

// Pure: /proc/self/stat text, the btime line's value from /proc/stat, clock ticks per second and
// the page size. Error{EINVAL} when the text does not parse.
Result<ProcessStats> parse_proc_stat(std::string_view stat, std::uint64_t boot_time_seconds,
                                     long ticks_per_second, long page_size);
Result<ProcessStats> read_process_stats();

void write_workload_metrics(MetricsWriter& out, WorkloadRegistry& registry);
void write_event_metrics(MetricsWriter& out, const events::EventBus& bus);
void write_process_metrics(MetricsWriter& out, const ProcessStats& stats);

}  // namespace meshlane::metrics
