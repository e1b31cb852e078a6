#include "agent/diagnose/diagnose_service.h"

#include <set>

#include "agent/diagnose/collector.h"
#include "agent/model/workload_spec.h"
#include "agent/observe/observation_source.h"

namespace meshlane::diagnose {

namespace {

constexpr std::size_t kMaxPeerDrops = 20;

std::int64_t to_ms(std::int64_t unix_ns) { return unix_ns / 1'000'000; }

bool connect_failed(const ConnectionRecord& c) { return c.outcome != ConnectOutcome::kEstablished; }

PeerRefusals refusals_of(const WorkloadStatus& peer) {
    PeerRefusals r;
    if (auto it = peer.counters.find("inbound_refused_no_listener"); it != peer.counters.end())
        r.inbound_refused = it->second;
    r.first_unix_ms = to_ms(peer.inbound_refused_first_unix_ns);
    r.last_unix_ms = to_ms(peer.inbound_refused_last_unix_ns);
    r.listener_registered_last_unix_ms = to_ms(peer.listener_registered_last_unix_ns);
    r.inbound_port = peer.spec.inbound_port;
    return r;
}

}  // namespace

ObservedTraffic observe_workload(const ObservationSource& observations,
                                 const WorkloadStatus& status,
                                 const std::vector<WorkloadStatus>& others,
                                 std::int64_t window_start_unix_ms) {
    ObservedTraffic traffic;
    const auto connections = observations.connections(status.workload_id, status.netns_cookie);
    traffic.app_side = connections.sides[MESHLANE_SIDE_APP];
    traffic.upstream_side = connections.sides[MESHLANE_SIDE_UPSTREAM];
    traffic.app_refused_total = traffic.app_side.refused;
    std::set<std::string> failed_destinations;
    for (const auto& c : connections.recent) {
        if (to_ms(c.unix_time_ns) < window_start_unix_ms) continue;
        traffic.connects.push_back(c);
        // verify's probes go to TEST-NET-1 on purpose.
        if (connect_failed(c) && c.side != ConnectSide::kApp &&
            !is_verify_probe_endpoint(c.destination))
            failed_destinations.insert(c.destination);
    }
    DropQuery query;
    query.since_unix_ns = window_start_unix_ms * 1'000'000;
    query.limit = 1000;
    auto drops = observations.drops(status.workload_id, status.netns_cookie, query);
    traffic.drops_by_reason = std::move(drops.by_reason);
    traffic.drops = std::move(drops.recent);
    if (failed_destinations.empty()) return traffic;
    // The SYN to the destination, or its answer coming back, dropped in the peer's netns.
    for (const auto& other : others) {
        if (other.spec.name == status.spec.name) continue;
        auto peer = observations.drops(other.workload_id, other.netns_cookie, query);
        for (auto& d : peer.recent) {
            if (traffic.peer_drops.size() >= kMaxPeerDrops) break;
            if (failed_destinations.count(d.destination) == 0 &&
                failed_destinations.count(d.source) == 0)
                continue;
            traffic.peer_drops.push_back(
                PeerDrop{other.spec.name, other.spec.netns_path, d, refusals_of(other)});
        }
    }
    return traffic;
}

Result<DiagnosisReport> diagnose_workload(const DiagnoseEnvironment& environment,
                                          const std::string& name, std::chrono::seconds window) {
    if (auto valid = validate_name(name); !valid) return valid.error();
    if (window.count() < 1 || window > kMaxWindow)
        return Error{EINVAL, "window must be 1.." + std::to_string(kMaxWindow.count()) +
                                 " seconds, got " + std::to_string(window.count())};
    auto status = environment.registry->get(name);
    if (!status) return status.error();
    const auto agent = environment.registry->status();
    DiagnosisReport report;
    report.input = collect(*status, agent.cgroup2_mount);
    auto& input = report.input;
    input.window_start_unix_ms = input.collected_at_unix_ms - window.count() * 1000;
    input.pod_addresses = status->pod_addresses;
    input.startup.inbound_refused_first_unix_ms = to_ms(status->inbound_refused_first_unix_ns);
    input.startup.inbound_refused_last_unix_ms = to_ms(status->inbound_refused_last_unix_ns);
    input.startup.listener_registered_first_unix_ms =
        to_ms(status->listener_registered_first_unix_ns);
    input.startup.listener_registered_last_unix_ms =
        to_ms(status->listener_registered_last_unix_ns);
    if (environment.observations != nullptr) {
        const auto others = environment.registry->list();
        input.observed = observe_workload(*environment.observations, *status, others,
                                          input.window_start_unix_ms);
    } else {
        input.collection_errors.push_back(
            "connection and drop observation is not running (agent log: \"observe:\"): "
            "kernel drops and outbound refusals are not checked");
    }
    if (environment.tls) input.tls = environment.tls(*status, input.window_start_unix_ms);
    report.findings = diagnose(input);
    return report;
}

Result<VerifyReport> verify_workload(const DiagnoseEnvironment& environment,
                                     const std::string& name) {
    if (auto valid = validate_name(name); !valid) return valid.error();
    auto status = environment.registry->get(name);
    if (!status) return status.error();
    const auto agent = environment.registry->status();
    VerifyOptions options;
    options.cgroup2_mount = agent.cgroup2_mount;
    options.pin_root = agent.bpffs_pin_dir;
    WorkloadRegistry* registry = environment.registry;
    options.read_counters = [registry, name] {
        auto now = registry->get(name);
        return now ? now->counters : std::map<std::string, std::uint64_t>{};
    };
    return verify(*status, options);
}

}  // namespace meshlane::diagnose
