// The observability datapath, agent side: loads bpf/observe_connect and bpf/observe_drops
// (tracepoints; their workload_by_netns is the redirect datapath's pinned map, found through
// the same pin root), and runs ONE reader thread that drains both ring buffers and snapshots
// the kernel's counters into an ObserveAggregate. Views read copies through ObservationSource.
//
// Lifecycle: start() = open -> size -> load -> attach -> reader running; stop() (or the
// destructor) joins the reader, then detaches and closes everything. Nothing is pinned but the
// shared workload map: when the agent is down nothing is collected, and nothing is left behind.
// A part the kernel refuses (one object failing to load, one tracepoint failing to attach)
// degrades: it is reported in health().problems and the rest keeps working.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "agent/observe/observation_source.h"
#include "agent/observe/observe_aggregate.h"
#include "agent/observe/tls_observer.h"

namespace meshlane {

namespace events {
class EventBus;
}

// Event types the observer publishes on the event bus.
inline constexpr const char* kConnectEventType = "connect";
inline constexpr const char* kDropEventType = "drop";
inline constexpr const char* kObserveLostEventType = "observe_lost_events";

struct ObserverOptions {
    std::string pin_root;  // <bpffs>/<pin_dir>, as given to RedirectDatapath
    std::uint32_t max_workloads = MESHLANE_MAX_WORKLOADS_DEFAULT;
    // Established connects at least this slow are streamed as events (failures always are).
    std::chrono::nanoseconds slow_connect_threshold = std::chrono::milliseconds(500);
    // Per-CPU token bucket for drop events; counts are exact regardless.
    std::uint32_t drop_events_per_second = 1000;
    std::uint32_t drop_events_burst = 200;
    // Drop reasons (BTF names) counted but never streamed: benign, one per connection. Names the
    // running kernel lacks are skipped and reported in health().problems.
    std::vector<std::string> drop_count_only_reasons = {"QUEUE_PURGE"};
    // TLS per-destination stats kept per workload and across all (agent/observe/tls_aggregate.h).
    std::size_t tls_destinations_per_workload = 256;
    std::size_t tls_destinations_total = 16384;
    std::chrono::milliseconds poll_timeout{100};
    std::chrono::milliseconds snapshot_interval{250};
    // How often the maps' fill levels are counted (a 64k-entry hash takes tens of ms).
    std::chrono::milliseconds map_fill_interval{5000};
    std::size_t events_per_workload = 256;
    std::size_t events_total = 16384;
    // false: the object is not loaded (the agent's feature probe failed for it).
    bool connect_tracking = true;
    bool drop_tracking = true;
    // TLS handshakes at least this slow are streamed as events (agent config
    // tls_slow_handshake_threshold_ms; read by the TLS observation).
    std::chrono::nanoseconds tls_slow_handshake_threshold = std::chrono::milliseconds(500);
    // When set, every slow/failed connect and every drop event the kernel delivered is also
    // published here (types "connect" and "drop", workload = its name), and growth of the kernel
    // side's lost-event counters as "observe_lost_events". May be null.
    events::EventBus* events = nullptr;
    // netns cookie -> workload name for those events; asked again (at most once per
    // snapshot_interval) when an event names a cookie it did not know.
    std::function<std::map<std::uint64_t, std::string>()> workload_names;
    // TLS handshakes (agent/observe/tls_observer.h): the wire programs attach to the cgroups
    // this returns (asked after every change it is told of through sync_attachments, and every 10
    // s); libssl uprobes go on libssl_path (empty: found).
    bool tls_wire = true;
    bool tls_libssl = true;
    std::string libssl_path;
    std::function<std::vector<ObservedCgroup>()> workload_cgroups;
};

class Observer final : public ObservationSource {
  public:
    // Fails only when neither object could be loaded and attached.
    static Result<std::unique_ptr<Observer>> start(const ObserverOptions& options);
    ~Observer() override;
    Observer(const Observer&) = delete;
    Observer& operator=(const Observer&) = delete;

    // Joins the reader and detaches every program. Idempotent.
    void stop();

    // Brings the per-pod attachments (the TLS wire programs on each enrolled pod's cgroup) in
    // line with the enrolled workloads now, on the reader thread, and waits for it (at most
    // `timeout`; false on timeout or when stopped). Called after every enrol/unenrol so that
    // unenrol returns with nothing of meshlane left on the pod's cgroup.
    bool sync_attachments(std::chrono::milliseconds timeout);

    WorkloadConnections connections(std::uint32_t workload_id,
                                    std::uint64_t netns_cookie) const override;
    WorkloadDrops drops(std::uint32_t workload_id, std::uint64_t netns_cookie,
                        const DropQuery& query) const override;
    ObserverHealth health() const override;
    std::optional<std::uint32_t> drop_reason_value(std::string_view name) const override;
    WorkloadTls tls(std::uint32_t workload_id, std::uint64_t netns_cookie) const override;
    std::chrono::milliseconds tls_slow_handshake_threshold() const override;
    BpfMapFillReport map_fill() const override;
    std::vector<ObservedProgram> programs() const override;

  private:
    struct Impl;
    explicit Observer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace meshlane
