#include "cli/commands.h"

#include <boost/json.hpp>
#include <iostream>

#include "agent/daemon/uninstall.h"
#include "api/client/unix_http_client.h"
#include "cli/output.h"

namespace meshlane::cli {

namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

int fail(int code, const std::string& message) {
    std::cerr << "meshlane: " << message << '\n';
    return code;
}

// A completed API call: the parsed body, or the exit code already reported.
struct ApiReply {
    unsigned status = 0;
    json::value body;
};

Result<ApiReply> parse_reply(const rest::HttpReply& reply) {
    boost::system::error_code ec;
    auto body = json::parse(reply.body, ec);
    if (ec) {
        return Error::invalid("unexpected reply from the agent (HTTP " +
                              std::to_string(reply.status) + ", not JSON)");
    }
    if (reply.status == 401) {
        const auto message = field_text(body, "error");
        return Error{EACCES, "the agent refused the call (HTTP 401): " + message +
                                 "; pass --token-file, or --cert/--key"};
    }
    if (reply.status >= 400) {
        const auto message = field_text(body, "error");
        return Error::invalid(
            message != "-" ? message : "the agent answered HTTP " + std::to_string(reply.status));
    }
    return ApiReply{reply.status, std::move(body)};
}

// Sends one request; on failure prints the one-line error and stores the exit code.
std::optional<ApiReply> call(const GlobalOptions& global, http::verb method,
                             const std::string& target, int& exit_code,
                             const std::optional<json::value>& body = std::nullopt) {
    auto reply = rest::http_request(global, method, target, body);
    if (!reply) {
        exit_code = fail(kExitUnreachable, reply.error().message);
        return std::nullopt;
    }
    auto parsed = parse_reply(*reply);
    if (!parsed) {
        exit_code = fail(kExitFailed, parsed.error().message);
        return std::nullopt;
    }
    exit_code = kExitOk;
    return std::move(*parsed);
}

void print_json(const json::value& value) { std::cout << pretty_json(value) << '\n'; }

std::string listener_text(const json::value& workload) {
    const auto* listener = field(workload, "inbound_listener");
    if (listener == nullptr) return "-";
    const bool v4 = field_text(*listener, "v4") == "true";
    const bool v6 = field_text(*listener, "v6") == "true";
    if (v4 && v6) return "v4,v6";
    if (v4) return "v4";
    if (v6) return "v6";
    return "none";
}

std::string counter_text(const json::value& workload, std::string_view counter) {
    return field_text(workload, "counters", counter);
}

// JSON array of scalars -> "a,b,c"; "*" and other strings as they are.
std::string list_text(const json::value& spec, std::string_view key) {
    const auto* value = field(spec, key);
    if (value == nullptr) return "-";
    if (!value->is_array()) return field_text(spec, key);
    std::string text;
    for (const auto& element : value->get_array()) {
        if (!text.empty()) text += ',';
        text += element.is_string() ? std::string(element.get_string()) : json::serialize(element);
    }
    return text.empty() ? "-" : text;
}

void print_programs(const json::value& workload) {
    const auto* programs = field(workload, "programs");
    if (programs == nullptr || !programs->is_array() || programs->get_array().empty()) {
        std::cout << "Programs:           none attached\n";
        return;
    }
    std::cout << "Programs:\n";
    Table table({"  PROGRAM", "ATTACHED TO", "LINK", "PROG", "PIN"});
    for (const auto& program : programs->get_array()) {
        table.add_row({"  " + field_text(program, "program"), field_text(program, "attach_to"),
                       field_text(program, "link_id"), field_text(program, "prog_id"),
                       field_text(program, "pin")});
    }
    table.print(std::cout);
}

void print_counters(const json::value& workload) {
    const auto* counters = field(workload, "counters");
    if (counters == nullptr || !counters->is_object() || counters->get_object().empty()) {
        std::cout << "Counters:           none\n";
        return;
    }
    std::cout << "Counters:\n";
    Table table({"  COUNTER", "VALUE"});
    for (const auto& [name, value] : counters->get_object()) {
        table.add_row({"  " + std::string(name), json::serialize(value)});
    }
    table.print(std::cout);
}

void print_workload(const json::value& workload) {
    const json::value empty;
    const auto* spec_ptr = field(workload, "spec");
    const auto& spec = spec_ptr ? *spec_ptr : empty;
    std::cout << "Name:               " << field_text(workload, "name") << '\n'
              << "Workload id:        " << field_text(workload, "workload_id") << '\n'
              << "Cgroup:             " << field_text(spec, "cgroup") << " -> "
              << field_text(workload, "cgroup_resolved") << " (id "
              << field_text(workload, "cgroup_id") << ")\n"
              << "Netns:              " << field_text(spec, "netns") << " (cookie "
              << field_text(workload, "netns_cookie") << ", inode "
              << field_text(workload, "netns_inode") << ")\n"
              << "Pod addresses:      " << list_text(workload, "pod_addresses") << '\n'
              << "Proxy:              uid " << field_text(spec, "proxy_uid") << ", gid "
              << field_text(spec, "proxy_gid") << ", outbound port "
              << field_text(spec, "outbound_port") << ", inbound port "
              << field_text(spec, "inbound_port") << '\n'
              << "More proxy ids:     uids " << list_text(spec, "additional_proxy_uids")
              << ", gids " << list_text(spec, "additional_proxy_gids") << '\n'
              << "Families captured:  IPv4 " << field_text(spec, "capture_ipv4") << ", IPv6 "
              << field_text(spec, "capture_ipv6") << "; localhost "
              << field_text(spec, "host_loopback_cidr") << '\n'
              << "Inbound listener:   " << listener_text(workload) << '\n'
              << "Include CIDRs:      " << list_text(spec, "include_cidrs") << '\n'
              << "Exclude CIDRs:      " << list_text(spec, "exclude_cidrs") << '\n'
              << "Include out ports:  " << list_text(spec, "include_outbound_ports") << '\n'
              << "Exclude out ports:  " << list_text(spec, "exclude_outbound_ports") << '\n'
              << "Include in ports:   " << list_text(spec, "include_inbound_ports") << '\n'
              << "Exclude in ports:   " << list_text(spec, "exclude_inbound_ports") << '\n'
              << "Self to inbound:    " << field_text(spec, "proxy_self_to_inbound") << '\n'
              << "Startup policy:     " << field_text(spec, "startup_policy") << '\n'
              << "Fast path:          " << field_text(spec, "fast_path") << " (app-proxy), "
              << field_text(spec, "fast_path_proxy_proxy") << " (proxy-proxy)" << '\n'
              << "DNS capture:        " << field_text(spec, "dns_capture") << ", listener port "
              << field_text(spec, "dns_port") << ", nameservers " << list_text(spec, "dns_servers")
              << '\n';
    print_programs(workload);
    print_counters(workload);
}

template <typename Parsed>
Status assign(Result<Parsed> parsed, Parsed& out) {
    if (!parsed) return parsed.error();
    out = std::move(*parsed);
    return Ok{};
}

// "3,4" -> first = 3, more = {4}.
Status apply_ids(const std::string& text, const char* flag, std::uint32_t& first,
                 std::vector<std::uint32_t>& more) {
    auto ids = parse_id_list(text, flag);
    if (!ids) return ids.error();
    first = ids->front();
    more.assign(ids->begin() + 1, ids->end());
    return Ok{};
}

// --proxy-uid/--proxy-gid lists, --ip-families, --host-loopback-cidr.
Status apply_capture_scope(const EnrollFlags& flags, WorkloadSpec& spec) {
    if (auto s =
            apply_ids(flags.proxy_uids, "--proxy-uid", spec.proxy_uid, spec.additional_proxy_uids);
        !s)
        return s;
    if (auto s =
            apply_ids(flags.proxy_gids, "--proxy-gid", spec.proxy_gid, spec.additional_proxy_gids);
        !s)
        return s;
    if (auto s = parse_ip_families(flags.ip_families, spec); !s) return s;
    auto lo = Cidr::parse(flags.host_loopback_cidr);
    if (!lo) return lo.error().with_context("--host-loopback-cidr");
    spec.host_loopback_cidr = *lo;
    return Ok{};
}

Status apply_lists(const EnrollFlags& flags, WorkloadSpec& spec) {
    if (auto s = apply_capture_scope(flags, spec); !s) return s;
    auto s = assign(parse_port_list(flags.exclude_outbound_ports, "--exclude-outbound-ports"),
                    spec.exclude_outbound_ports);
    if (s)
        s = assign(parse_port_list(flags.exclude_inbound_ports, "--exclude-inbound-ports"),
                   spec.exclude_inbound_ports);
    if (s)
        s = assign(parse_port_list(flags.include_outbound_ports, "--include-outbound-ports"),
                   spec.include_outbound_ports);
    if (!s) return s;
    // "*" is the istio -b default: every inbound port not excluded.
    spec.include_all_inbound_ports = flags.include_ports == "*";
    spec.include_inbound_ports.clear();
    if (!spec.include_all_inbound_ports) {
        s = assign(parse_port_list(flags.include_ports, "--include-ports"),
                   spec.include_inbound_ports);
        if (!s) return s;
    }
    auto include = parse_cidr_list(flags.include_cidrs, "--include-cidrs");
    if (!include) return include.error();
    spec.include_all_cidrs = !include->has_value();
    spec.include_cidrs = include->value_or(std::vector<Cidr>{});
    auto exclude = parse_cidr_list(flags.exclude_cidrs, "--exclude-cidrs");
    if (!exclude) return exclude.error();
    if (!exclude->has_value()) return Error::invalid("--exclude-cidrs: \"*\" is not allowed");
    spec.exclude_cidrs = std::move(**exclude);
    return Ok{};
}

// "app-proxy,proxy-proxy" -> spec.fast_path / spec.fast_path_proxy_proxy; "" leaves both off.
Status apply_fast_path_kinds(const std::string& text, WorkloadSpec& spec) {
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find(',', start);
        if (end == std::string::npos) end = text.size();
        const std::string kind = text.substr(start, end - start);
        if (kind == "app-proxy")
            spec.fast_path = true;
        else if (kind == "proxy-proxy")
            spec.fast_path_proxy_proxy = true;
        else
            return Error::invalid("--fast-path: unknown kind \"" + kind +
                                  "\" (expected app-proxy and/or proxy-proxy, comma-separated)");
        start = end + 1;
    }
    return Ok{};
}

}  // namespace

Result<WorkloadSpec> build_spec(const EnrollFlags& flags) {
    WorkloadSpec spec = flags.spec;
    if (auto s = apply_lists(flags, spec); !s) return s.error();
    auto policy = parse_startup_policy(flags.startup_policy);
    if (!policy) return policy.error().with_context("--startup-policy");
    spec.startup_policy = *policy;
    if (auto kinds = apply_fast_path_kinds(flags.fast_path, spec); !kinds) return kinds.error();
    auto dns = parse_dns_capture(flags.dns_capture);
    if (!dns) return dns.error().with_context("--dns-capture");
    spec.dns_capture = *dns;
    if (auto s = assign(parse_address_list(flags.dns_servers, "--dns-servers"), spec.dns_servers);
        !s)
        return s.error();
    if (auto valid = validate(spec); !valid) return valid.error();
    return spec;
}

int run_enroll(const GlobalOptions& global, const EnrollFlags& flags) {
    auto spec = build_spec(flags);
    if (!spec) return fail(kExitFailed, spec.error().message);
    int exit_code = kExitOk;
    auto reply =
        call(global, http::verb::post, "/v1/workloads", exit_code, json::value(to_json(*spec)));
    if (!reply) return exit_code;
    if (flags.json) {
        print_json(reply->body);
    } else if (reply->status == 201) {
        std::cout << "enrolled workload " << spec->name << '\n';
    } else {
        std::cout << "workload " << spec->name << " already enrolled with the same settings\n";
    }
    return kExitOk;
}

int run_unenroll(const GlobalOptions& global, const std::string& name, bool json) {
    int exit_code = kExitOk;
    auto reply = call(global, http::verb::delete_, "/v1/workloads/" + name, exit_code);
    if (!reply) return exit_code;
    if (json) {
        print_json(reply->body);
    } else if (field_text(reply->body, "removed") == "true") {
        std::cout << "unenrolled workload " << name << '\n';
    } else {
        std::cout << "workload " << name << " was not enrolled\n";
    }
    return kExitOk;
}

int run_workloads(const GlobalOptions& global, bool json) {
    int exit_code = kExitOk;
    auto reply = call(global, http::verb::get, "/v1/workloads", exit_code);
    if (!reply) return exit_code;
    if (json) {
        print_json(reply->body);
        return kExitOk;
    }
    Table table({"NAME", "CGROUP", "NETNS", "OUT", "IN", "LISTENER", "REDIRECTED", "STEERED"});
    const auto* workloads = field(reply->body, "workloads");
    if (workloads != nullptr && workloads->is_array()) {
        for (const auto& w : workloads->get_array()) {
            const json::value empty;
            const auto& spec = field(w, "spec") ? *field(w, "spec") : empty;
            table.add_row({field_text(w, "name"), field_text(spec, "cgroup"),
                           field_text(spec, "netns"), field_text(spec, "outbound_port"),
                           field_text(spec, "inbound_port"), listener_text(w),
                           counter_text(w, "outbound_redirected"),
                           counter_text(w, "inbound_steered")});
        }
    }
    table.print(std::cout);
    return kExitOk;
}

int run_workload(const GlobalOptions& global, const std::string& name, bool json) {
    // Checked here so a malformed name is a clear local error, not an odd URL.
    if (auto valid = validate_name(name); !valid) return fail(kExitFailed, valid.error().message);
    int exit_code = kExitOk;
    auto reply = call(global, http::verb::get, "/v1/workloads/" + name, exit_code);
    if (!reply) return exit_code;
    if (json) {
        print_json(reply->body);
    } else {
        print_workload(reply->body);
    }
    return kExitOk;
}

// BPF maps more than 80% full (GET /v1/status "bpf_maps", counted from the kernel): a full map
// refuses new workloads, rules or connections, so say so before it happens.
static void print_map_fill_warnings(const json::value& status) {
    constexpr double kWarnAbove = 0.8;
    const auto* fill = field(status, "bpf_maps");
    const auto* maps = fill != nullptr ? field(*fill, "maps") : nullptr;
    if (maps == nullptr || !maps->is_array()) return;
    std::size_t countable = 0;
    for (const auto& map : maps->get_array()) {
        const auto* ratio = field(map, "fill_ratio");
        if (const auto* entries = field(map, "entries"); entries && entries->is_number())
            ++countable;
        if (ratio == nullptr || !ratio->is_number() || ratio->to_number<double>() <= kWarnAbove)
            continue;
        std::cout << "WARNING: BPF map " << field_text(map, "name") << " ("
                  << field_text(map, "owner") << ") is "
                  << static_cast<int>(ratio->to_number<double>() * 100)
                  << "% full: " << field_text(map, "entries") << " of "
                  << field_text(map, "max_entries") << " entries\n";
    }
    std::cout << "BPF maps:       " << maps->get_array().size() << " (" << countable
              << " countable; `meshlane status --json` for fill levels)\n";
}

// GET /readyz answers 200 (ready, degraded) or 503 (not ready) with the same JSON shape: both
// are answers, not errors. nullopt: the exit code is set and the error printed.
static std::optional<json::value> fetch_readiness(const GlobalOptions& global, int& exit_code) {
    auto reply = rest::http_request(global, http::verb::get, "/readyz", std::nullopt);
    if (!reply) {
        exit_code = fail(kExitUnreachable, reply.error().message);
        return std::nullopt;
    }
    boost::system::error_code ec;
    auto body = json::parse(reply->body, ec);
    if (ec || (reply->status != 200 && reply->status != 503) || !body.is_object()) {
        exit_code = fail(kExitFailed, "unexpected /readyz reply from the agent (HTTP " +
                                          std::to_string(reply->status) + ")");
        return std::nullopt;
    }
    return body;
}

// The exit code for a readiness answer; prints the state and each issue (the reason) to stderr
// when not ready, so scripts and probes log why.
static int readiness_exit_code(const json::value& readiness, bool quiet_when_ready) {
    const auto state = field_text(readiness, "status");
    const int code = state == "ready"      ? kExitOk
                     : state == "degraded" ? kExitDegraded
                                           : kExitNotReady;
    if (code == kExitOk && quiet_when_ready) return code;
    std::ostream& out = code == kExitOk ? std::cout : std::cerr;
    out << "Readiness:      "
        << (code == kExitOk         ? "ready"
            : code == kExitDegraded ? "DEGRADED"
                                    : "NOT READY")
        << '\n';
    if (const auto* issues = field(readiness, "issues"); issues != nullptr && issues->is_array())
        for (const auto& issue : issues->get_array())
            out << "  " << field_text(issue, "feature") << " is off ("
                << field_text(issue, "problem") << "): " << field_text(issue, "reason") << '\n';
    return code;
}

int run_status(const GlobalOptions& global, bool json) {
    int exit_code = kExitOk;
    auto reply = call(global, http::verb::get, "/v1/status", exit_code);
    if (!reply) return exit_code;
    auto readiness = fetch_readiness(global, exit_code);
    if (!readiness) return exit_code;
    if (json) {
        reply->body.as_object()["readiness"] = *readiness;
        print_json(reply->body);
        return readiness_exit_code(*readiness, true);
    }
    const auto& s = reply->body;
    std::cout << "Version:        " << field_text(s, "version") << '\n'
              << "Kernel:         " << field_text(s, "kernel") << '\n'
              << "Workloads:      " << field_text(s, "workloads") << " of "
              << field_text(s, "max_workloads") << '\n'
              << "bpffs pins:     " << field_text(s, "bpffs_pin_dir") << '\n'
              << "cgroup2 mount:  " << field_text(s, "cgroup2_mount") << '\n'
              << "State dir:      " << field_text(s, "state_dir") << '\n';
    if (const auto* fast = field(s, "fast_path"); fast != nullptr && fast->is_object()) {
        std::cout << "Fast path:      "
                  << (field_text(*fast, "available") == "true" ? "available" : "OFF node-wide")
                  << " (" << field_text(*fast, "reason") << ")\n";
        if (const auto* hops = field(*fast, "hops"); hops != nullptr && hops->is_array())
            for (const auto& hop : hops->get_array()) {
                if (!hop.is_object()) continue;
                const bool on = field_text(hop, "accelerated") == "true";
                std::cout << "  " << field_text(hop, "hop") << ": "
                          << (on ? "accelerated"
                                 : "not accelerated (" + field_text(hop, "reason") + ")")
                          << '\n';
            }
    }
    const auto* features = field(s, "features");
    if (features != nullptr && features->is_object() && !features->get_object().empty()) {
        std::cout << "Kernel features:\n";
        Table table({"  FEATURE", "AVAILABLE"});
        for (const auto& [name, available] : features->get_object()) {
            table.add_row({"  " + std::string(name), json::serialize(available)});
        }
        table.print(std::cout);
    }
    // The agent's parts, on or off; a reason can span lines (a verifier log tail): all shown.
    const auto* states = field(s, "feature_states");
    if (states != nullptr && states->is_object() && !states->get_object().empty()) {
        std::cout << "Features:\n";
        for (const auto& [name, state] : states->get_object()) {
            const bool on = field_text(state, "enabled") == "true";
            std::cout << "  " << std::string(name) << ": " << (on ? "enabled" : "DISABLED");
            if (!on) std::cout << " — " << field_text(state, "reason");
            std::cout << '\n';
        }
    }
    // Programs and where attached: node-wide ones, then how many workloads have each per-pod one.
    const auto* programs = field(s, "programs");
    const auto* node = programs != nullptr ? field(*programs, "node") : nullptr;
    if (node != nullptr && node->is_array() && !node->get_array().empty()) {
        std::cout << "Node programs:\n";
        Table table({"  PROGRAM", "ATTACHED TO", "LINK", "PROG"});
        for (const auto& p : node->get_array())
            table.add_row({"  " + field_text(p, "program"), field_text(p, "attach_to"),
                           field_text(p, "link_id"), field_text(p, "prog_id")});
        table.print(std::cout);
    }
    const auto* per_workload = programs != nullptr ? field(*programs, "workloads") : nullptr;
    if (per_workload != nullptr && per_workload->is_object() &&
        !per_workload->get_object().empty()) {
        std::cout << "Workload programs (workloads attached):";
        for (const auto& [name, count] : per_workload->get_object())
            std::cout << ' ' << std::string(name) << '=' << json::serialize(count);
        std::cout << '\n';
    }
    print_map_fill_warnings(s);
    return readiness_exit_code(*readiness, false);
}

int run_uninstall(const std::string& config_path) {
    auto report = uninstall(config_path);
    if (!report) return fail(kExitFailed, report.error().message);
    if (report->pin_root.empty()) {
        std::cout << "no bpffs mounted: nothing was pinned\n";
    } else {
        std::cout << "detached " << report->links_detached << " links, removed "
                  << report->maps_unpinned << " pinned maps and " << report->pin_root << '\n';
    }
    return kExitOk;
}

}  // namespace meshlane::cli
