// JSON views of the registry's status types, shared by the REST API and the CLI's --json output.
// Field names are snake_case and documented in api/openapi.yaml (WorkloadStatus, AgentStatus).
#include <boost/json.hpp>

#include "agent/model/workload_registry.h"

namespace meshlane {

namespace json = boost::json;

namespace {

json::object to_json(const AttachedProgram& program) {
    json::object object;
    object["program"] = program.program;
    object["attach_to"] = program.attach_to;
    object["pin"] = program.pin;
    object["link_id"] = program.link_id;
    object["prog_id"] = program.prog_id;
    return object;
}

}  // namespace

const char* fast_path_hop_name(FastPathHop hop) {
    switch (hop) {
        case FastPathHop::kAppProxyOutbound:
            return "app_proxy_outbound";
        case FastPathHop::kAppProxyInbound:
            return "app_proxy_inbound";
        case FastPathHop::kProxyProxy:
            return "proxy_proxy";
    }
    return "unknown";
}

const char* fast_path_off_reason_name(FastPathOffReason reason) {
    switch (reason) {
        case FastPathOffReason::kNone:
            return "";
        case FastPathOffReason::kUnavailable:
            return "unavailable";
        case FastPathOffReason::kBlockingReaderEagain:
            return "blocking_reader_eagain";
    }
    return "unknown";
}

json::object to_json(const WorkloadStatus& status) {
    json::object object;
    // The name is repeated at the top so list consumers need not dig into "spec".
    object["name"] = status.spec.name;
    object["spec"] = to_json(status.spec);
    object["workload_id"] = status.workload_id;
    object["cgroup_resolved"] = status.cgroup_resolved;
    object["cgroup_id"] = status.cgroup_id;
    object["netns_cookie"] = status.netns_cookie;
    object["netns_inode"] = status.netns_inode;
    json::array addresses;
    for (const auto& address : status.pod_addresses) addresses.emplace_back(address);
    object["pod_addresses"] = std::move(addresses);
    json::array programs;
    for (const auto& program : status.programs) programs.emplace_back(to_json(program));
    object["programs"] = std::move(programs);
    object["inbound_listener"] = {{"v4", status.inbound_listener_v4},
                                  {"v6", status.inbound_listener_v6}};
    json::object counters;
    for (const auto& [name, value] : status.counters) counters[name] = value;
    object["counters"] = std::move(counters);
    json::object fast_counters;
    for (const auto& [name, value] : status.fast_path_counters) fast_counters[name] = value;
    object["fast_path"] = {{"active", status.fast_path_active},
                           {"counters", std::move(fast_counters)}};
    return object;
}

json::object to_json(const AgentStatus& status) {
    json::object object;
    object["version"] = status.version;
    object["kernel"] = status.kernel;
    object["bpffs_pin_dir"] = status.bpffs_pin_dir;
    object["cgroup2_mount"] = status.cgroup2_mount;
    object["state_dir"] = status.state_dir;
    object["workloads"] = status.workloads;
    object["max_workloads"] = status.max_workloads;
    json::object features;
    for (const auto& [name, available] : status.features) features[name] = available;
    object["features"] = std::move(features);
    json::object feature_states;
    for (const auto& [name, state] : status.feature_states)
        feature_states[name] = {{"enabled", state.enabled},
                                {"essential", state.essential},
                                {"reason", state.reason},
                                {"by_config", state.by_config}};
    object["feature_states"] = std::move(feature_states);
    json::array hops;
    for (const auto& hop : status.fast_path_hops)
        hops.push_back(json::object{{"hop", fast_path_hop_name(hop.hop)},
                                    {"accelerated", hop.accelerated},
                                    {"reason", fast_path_off_reason_name(hop.reason)}});
    object["fast_path"] = {{"available", status.fast_path_available},
                           {"reason", status.fast_path_reason},
                           {"blocking_reader_hazard", status.fast_path_blocking_reader_hazard},
                           {"hops", std::move(hops)}};
    return object;
}

}  // namespace meshlane
