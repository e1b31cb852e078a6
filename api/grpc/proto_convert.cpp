#include "api/grpc/proto_convert.h"

#include <boost/json.hpp>

#include "agent/observe/map_fill.h"

namespace meshlane::grpc_api {

namespace json = boost::json;

grpc::StatusCode status_code_for_errno(int code) {
    switch (code) {
        case EINVAL:
        // A path the client gave that is not what it must be (also mapped where it arises).
        case ENOTDIR:
        case EISDIR:
        case ENAMETOOLONG:
        case ELOOP:
        case ENXIO:
            return grpc::StatusCode::INVALID_ARGUMENT;
        case ENOENT:
            return grpc::StatusCode::NOT_FOUND;
        case EEXIST:
            return grpc::StatusCode::ALREADY_EXISTS;
        case EPERM:
        case EACCES:
            return grpc::StatusCode::PERMISSION_DENIED;
        case ENOTSUP:  // a disabled part of the agent (e.g. the redirect datapath)
            return grpc::StatusCode::UNAVAILABLE;
        default:
            return grpc::StatusCode::INTERNAL;
    }
}

grpc::Status to_grpc_status(const Error& error) {
    return grpc::Status(status_code_for_errno(error.code), error.message);
}

namespace {

template <typename Repeated>
json::array to_array(const Repeated& values) {
    json::array out;
    for (const auto& value : values) out.emplace_back(value);
    return out;
}

// "*" or a list, from the optional all-flag and the list; both set is ambiguous.
Result<json::value> selection(bool has_all, bool all, json::array list, const char* field) {
    if (has_all && all && !list.empty())
        return Error::invalid(std::string("include_all_") + field + " and include_" + field +
                              " are exclusive");
    if ((has_all && all) || (!has_all && list.empty())) return json::value("*");
    return json::value(std::move(list));
}

}  // namespace

Result<WorkloadSpec> spec_from_proto(const v1::WorkloadSpec& proto) {
    json::object object;
    object["name"] = proto.name();
    object["cgroup"] = proto.cgroup();
    object["netns"] = proto.netns();
    if (proto.has_proxy_uid()) object["proxy_uid"] = proto.proxy_uid();
    if (proto.has_proxy_gid()) object["proxy_gid"] = proto.proxy_gid();
    if (proto.has_outbound_port()) object["outbound_port"] = proto.outbound_port();
    if (proto.has_inbound_port()) object["inbound_port"] = proto.inbound_port();
    object["exclude_outbound_ports"] = to_array(proto.exclude_outbound_ports());
    object["exclude_inbound_ports"] = to_array(proto.exclude_inbound_ports());
    auto cidrs = selection(proto.has_include_all_cidrs(), proto.include_all_cidrs(),
                           to_array(proto.include_cidrs()), "cidrs");
    if (!cidrs) return cidrs.error();
    object["include_cidrs"] = *cidrs;
    object["exclude_cidrs"] = to_array(proto.exclude_cidrs());
    auto inbound =
        selection(proto.has_include_all_inbound_ports(), proto.include_all_inbound_ports(),
                  to_array(proto.include_inbound_ports()), "inbound_ports");
    if (!inbound) return inbound.error();
    object["include_inbound_ports"] = *inbound;
    object["include_outbound_ports"] = to_array(proto.include_outbound_ports());
    if (proto.has_proxy_self_to_inbound())
        object["proxy_self_to_inbound"] = proto.proxy_self_to_inbound();
    if (proto.has_startup_policy()) object["startup_policy"] = proto.startup_policy();
    if (proto.has_fast_path()) object["fast_path"] = proto.fast_path();
    if (proto.has_fast_path_proxy_proxy())
        object["fast_path_proxy_proxy"] = proto.fast_path_proxy_proxy();
    object["additional_proxy_uids"] = to_array(proto.additional_proxy_uids());
    object["additional_proxy_gids"] = to_array(proto.additional_proxy_gids());
    if (proto.has_capture_ipv4()) object["capture_ipv4"] = proto.capture_ipv4();
    if (proto.has_capture_ipv6()) object["capture_ipv6"] = proto.capture_ipv6();
    if (proto.has_host_loopback_cidr()) object["host_loopback_cidr"] = proto.host_loopback_cidr();
    if (proto.has_dns_capture()) object["dns_capture"] = proto.dns_capture();
    if (proto.has_dns_port()) object["dns_port"] = proto.dns_port();
    object["dns_servers"] = to_array(proto.dns_servers());
    if (proto.has_k8s_namespace()) object["k8s_namespace"] = proto.k8s_namespace();
    if (proto.has_k8s_pod()) object["k8s_pod"] = proto.k8s_pod();
    auto spec = workload_spec_from_json(object);
    if (!spec) return spec.error();
    if (auto valid = validate(*spec); !valid) return valid.error();
    return spec;
}

void to_proto(const WorkloadSpec& spec, v1::WorkloadSpec& out) {
    out.set_name(spec.name);
    out.set_cgroup(spec.cgroup_path);
    out.set_netns(spec.netns_path);
    out.set_proxy_uid(spec.proxy_uid);
    out.set_proxy_gid(spec.proxy_gid);
    out.set_outbound_port(spec.outbound_port);
    out.set_inbound_port(spec.inbound_port);
    for (auto port : spec.exclude_outbound_ports) out.add_exclude_outbound_ports(port);
    for (auto port : spec.exclude_inbound_ports) out.add_exclude_inbound_ports(port);
    out.set_include_all_cidrs(spec.include_all_cidrs);
    for (const auto& cidr : spec.include_cidrs) out.add_include_cidrs(cidr.to_string());
    for (const auto& cidr : spec.exclude_cidrs) out.add_exclude_cidrs(cidr.to_string());
    out.set_include_all_inbound_ports(spec.include_all_inbound_ports);
    for (auto port : spec.include_inbound_ports) out.add_include_inbound_ports(port);
    for (auto port : spec.include_outbound_ports) out.add_include_outbound_ports(port);
    out.set_proxy_self_to_inbound(spec.proxy_self_to_inbound);
    out.set_startup_policy(std::string(to_string(spec.startup_policy)));
    out.set_fast_path(spec.fast_path);
    out.set_fast_path_proxy_proxy(spec.fast_path_proxy_proxy);
    for (auto id : spec.additional_proxy_uids) out.add_additional_proxy_uids(id);
    for (auto id : spec.additional_proxy_gids) out.add_additional_proxy_gids(id);
    out.set_capture_ipv4(spec.capture_ipv4);
    out.set_capture_ipv6(spec.capture_ipv6);
    out.set_host_loopback_cidr(spec.host_loopback_cidr.to_string());
    out.set_dns_capture(std::string(to_string(spec.dns_capture)));
    out.set_dns_port(spec.dns_port);
    for (const auto& server : spec.dns_servers) out.add_dns_servers(address_to_string(server));
    out.set_k8s_namespace(spec.k8s_namespace);
    out.set_k8s_pod(spec.k8s_pod);
}

void to_proto(const WorkloadStatus& status, v1::Workload& out) {
    out.set_name(status.spec.name);
    to_proto(status.spec, *out.mutable_spec());
    out.set_workload_id(status.workload_id);
    out.set_cgroup_resolved(status.cgroup_resolved);
    out.set_cgroup_id(status.cgroup_id);
    out.set_netns_cookie(status.netns_cookie);
    out.set_netns_inode(status.netns_inode);
    for (const auto& address : status.pod_addresses) out.add_pod_addresses(address);
    for (const auto& program : status.programs) {
        auto& p = *out.add_programs();
        p.set_program(program.program);
        p.set_attach_to(program.attach_to);
        p.set_pin(program.pin);
        p.set_link_id(program.link_id);
        p.set_prog_id(program.prog_id);
    }
    out.set_inbound_listener_v4(status.inbound_listener_v4);
    out.set_inbound_listener_v6(status.inbound_listener_v6);
    for (const auto& [name, value] : status.counters) (*out.mutable_counters())[name] = value;
    out.mutable_fast_path()->set_active(status.fast_path_active);
    for (const auto& [name, value] : status.fast_path_counters)
        (*out.mutable_fast_path()->mutable_counters())[name] = value;
}

void to_proto(const AgentStatus& status, v1::StatusResponse& out) {
    out.set_version(status.version);
    out.set_kernel(status.kernel);
    out.set_bpffs_pin_dir(status.bpffs_pin_dir);
    out.set_cgroup2_mount(status.cgroup2_mount);
    out.set_state_dir(status.state_dir);
    out.set_workloads(static_cast<std::uint32_t>(status.workloads));
    out.set_max_workloads(status.max_workloads);
    for (const auto& [name, present] : status.features) (*out.mutable_features())[name] = present;
    for (const auto& [name, state] : status.feature_states) {
        auto& feature = (*out.mutable_feature_states())[name];
        feature.set_enabled(state.enabled);
        feature.set_essential(state.essential);
        feature.set_reason(state.reason);
        feature.set_by_config(state.by_config);
    }
    out.mutable_fast_path()->set_available(status.fast_path_available);
    out.mutable_fast_path()->set_reason(status.fast_path_reason);
    out.mutable_fast_path()->set_blocking_reader_hazard(status.fast_path_blocking_reader_hazard);
    for (const auto& hop : status.fast_path_hops) {
        auto* h = out.mutable_fast_path()->add_hops();
        h->set_hop(hop.hop == FastPathHop::kAppProxyOutbound  ? v1::FAST_PATH_HOP_APP_PROXY_OUTBOUND
                   : hop.hop == FastPathHop::kAppProxyInbound ? v1::FAST_PATH_HOP_APP_PROXY_INBOUND
                                                              : v1::FAST_PATH_HOP_PROXY_PROXY);
        h->set_accelerated(hop.accelerated);
        h->set_reason(hop.reason == FastPathOffReason::kNone ? v1::FAST_PATH_OFF_REASON_NONE
                      : hop.reason == FastPathOffReason::kUnavailable
                          ? v1::FAST_PATH_OFF_REASON_UNAVAILABLE
                          : v1::FAST_PATH_OFF_REASON_BLOCKING_READER_EAGAIN);
    }
}

void to_proto(const ObserverHealth& h, v1::ObserverHealth& out) {
    out.set_connect_tracking(h.connect_tracking);
    out.set_drop_tracking(h.drop_tracking);
    for (const auto& problem : h.problems) out.add_problems(problem);
    out.set_lost_events_total(h.lost_events_total);
    for (const auto& [kind, count] : h.lost_events) (*out.mutable_lost_events())[kind] = count;
    out.set_connect_events(h.connect_events);
    out.set_drop_events(h.drop_events);
    out.set_events_evicted(h.events_evicted);
    out.set_memory_bytes(h.memory_bytes);
    out.set_memory_limit_bytes(h.memory_limit_bytes);
    out.set_bpf_map_bytes(h.bpf_map_bytes);
    out.set_tls_wire_tracking(h.tls_wire_tracking);
    out.set_tls_libssl_tracking(h.tls_libssl_tracking);
    out.set_tls_events(h.tls_events);
    out.set_tls_memory_bytes(h.tls_memory_bytes);
    out.set_tls_attached_cgroups(h.tls_attached_cgroups);
    out.set_tls_memory_limit_bytes(h.tls_memory_limit_bytes);
}

void to_proto(const BpfMapFillReport& report, v1::BpfMapFill& out) {
    out.set_counted_unix_ms(report.counted_unix_ms);
    for (const auto& map : report.maps) {
        auto& m = *out.add_maps();
        m.set_name(map.name);
        m.set_owner(map.owner);
        m.set_id(map.id);
        m.set_type(map.type);
        m.set_max_entries(map.max_entries);
        if (map.entries) m.set_entries(*map.entries);
        m.set_preallocated(map.preallocated);
        if (const auto ratio = fill_ratio(map)) m.set_fill_ratio(*ratio);
        m.set_note(map.note);
    }
}

void to_proto(const events::StreamItem& item, v1::StreamEventsResponse& out) {
    if (const auto* event = std::get_if<events::Event>(&item)) {
        auto& e = *out.mutable_event();
        e.set_sequence(event->sequence);
        e.set_time_unix_ms(event->unix_time_ms);
        e.set_type(event->type);
        e.set_workload(event->workload);
        for (const auto& [key, value] : event->details) (*e.mutable_details())[key] = value;
    } else {
        const auto& lost = std::get<events::LostEvents>(item);
        out.mutable_lost_events()->set_count(lost.count);
        out.mutable_lost_events()->set_time_unix_ms(lost.unix_time_ms);
    }
}

Result<events::EventFilter> filter_from_proto(const v1::StreamEventsRequest& request) {
    events::EventFilter filter;
    if (!request.workload().empty()) {
        if (auto valid = validate_name(request.workload()); !valid) return valid.error();
        filter.workload = request.workload();
    }
    for (const auto& type : request.types()) {
        const bool valid =
            !type.empty() && type.size() <= 64 &&
            type.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") == std::string::npos;
        if (!valid) return Error::invalid("type \"" + type + "\" is not an event type");
        filter.types.insert(type);
    }
    if (request.since_unix_ms() < 0) return Error::invalid("since_unix_ms must not be negative");
    filter.since_unix_ms = request.since_unix_ms();
    return filter;
}

}  // namespace meshlane::grpc_api
