#include "cni/cni_plugin.h"

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>

namespace meshlane::cni {

namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

constexpr const char* kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
constexpr std::string_view kIstioPrefix = "traffic.sidecar.istio.io/";

const json::value* member(const json::value& value, std::string_view key) {
    if (!value.is_object()) return nullptr;
    return value.get_object().if_contains(key);
}

Result<std::string> string_member(const json::value& value, std::string_view key,
                                  const std::string& fallback) {
    const auto* v = member(value, key);
    if (v == nullptr || v->is_null()) return fallback;
    if (!v->is_string()) return Error::invalid(std::string(key) + ": must be a string");
    return std::string(v->get_string());
}

Status read_annotations(const json::value* value, std::map<std::string, std::string>& out) {
    if (value == nullptr || value->is_null()) return Ok{};
    if (!value->is_object()) return Error::invalid("podAnnotations: must be an object");
    for (const auto& [key, v] : value->get_object()) {
        if (!v.is_string())
            return Error::invalid("podAnnotations." + std::string(key) + ": must be a string");
        out[std::string(key)] = std::string(v.get_string());
    }
    return Ok{};
}

std::string fnv_hex(std::string_view text) {
    std::uint32_t hash = 2166136261u;
    for (unsigned char c : text) hash = (hash ^ c) * 16777619u;
    char buffer[9];
    std::snprintf(buffer, sizeof(buffer), "%08x", hash);
    return buffer;
}

std::string lowercase_name(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
        out += ok ? c : '-';
    }
    return out;
}

bool version_supported(const std::string& version) {
    return std::any_of(std::begin(kSupportedVersions), std::end(kSupportedVersions),
                       [&](const char* v) { return version == v; });
}

Outcome failure(const std::string& version, int code, const std::string& msg,
                const std::string& details = "") {
    Outcome outcome;
    outcome.exit_code = 1;
    outcome.output = error_document(version, code, msg, details);
    outcome.log.push_back("meshlane-cni: " + msg + (details.empty() ? "" : ": " + details));
    return outcome;
}

std::string reply_error(const rest::HttpReply& reply) {
    boost::system::error_code ec;
    auto body = json::parse(reply.body, ec);
    if (!ec) {
        if (const auto* e = member(body, "error"); e != nullptr && e->is_string())
            return std::string(e->get_string());
    }
    return "HTTP " + std::to_string(reply.status);
}

// ADD: the chained result is the previous plugin's, unchanged, in the config's version.
std::string add_result(const PluginConfig& config) {
    json::object result =
        config.prev_result->is_object() ? config.prev_result->get_object() : json::object{};
    result["cniVersion"] = config.cni_version;
    return json::serialize(result);
}

}  // namespace

std::string error_document(const std::string& cni_version, int code, const std::string& msg,
                           const std::string& details) {
    json::object doc{{"cniVersion", cni_version}, {"code", code}, {"msg", msg}};
    if (!details.empty()) doc["details"] = details;
    return json::serialize(doc);
}

std::map<std::string, std::string> parse_cni_args(std::string_view text) {
    std::map<std::string, std::string> out;
    while (!text.empty()) {
        auto end = text.find(';');
        auto pair = text.substr(0, end);
        if (auto eq = pair.find('='); eq != std::string_view::npos && eq > 0)
            out[std::string(pair.substr(0, eq))] = std::string(pair.substr(eq + 1));
        if (end == std::string_view::npos) break;
        text.remove_prefix(end + 1);
    }
    return out;
}

Result<PluginConfig> parse_config(std::string_view stdin_text) {
    boost::system::error_code ec;
    json::value root = json::parse(stdin_text, ec);
    if (ec || !root.is_object())
        return Error::invalid("network config on stdin is not a JSON object");
    PluginConfig config;
    auto version = string_member(root, "cniVersion", "");
    if (!version) return version.error();
    if (version->empty()) return Error::invalid("cniVersion: required");
    config.cni_version = *version;
    auto name = string_member(root, "name", "");
    if (!name) return name.error();
    config.name = *name;
    auto socket = string_member(root, "agentSocket", kDefaultAgentSocket);
    if (!socket) return socket.error();
    config.agent_socket = *socket;
    auto cgroup_root = string_member(root, "cgroupRoot", "");
    if (!cgroup_root) return cgroup_root.error();
    config.cgroup_root = *cgroup_root;
    if (const auto* v = member(root, "failOpen"); v != nullptr) {
        if (!v->is_bool()) return Error::invalid("failOpen: must be true or false");
        config.fail_open = v->get_bool();
    }
    if (const auto* v = member(root, "timeoutMs"); v != nullptr) {
        if (!v->is_int64() || v->get_int64() <= 0 || v->get_int64() > 600000)
            return Error::invalid("timeoutMs: must be a number of milliseconds in 1..600000");
        config.timeout_ms = static_cast<unsigned>(v->get_int64());
    }
    if (const auto* v = member(root, "excludeNamespaces"); v != nullptr) {
        if (!v->is_array()) return Error::invalid("excludeNamespaces: must be an array of strings");
        for (const auto& item : v->get_array()) {
            if (!item.is_string())
                return Error::invalid("excludeNamespaces: must be an array of strings");
            config.exclude_namespaces.emplace_back(item.get_string());
        }
    }
    if (const auto* v = member(root, "prevResult"); v != nullptr && !v->is_null())
        config.prev_result = *v;
    // Capability args first (the runtime's word), then the "args" convention.
    if (const auto* runtime = member(root, "runtimeConfig"); runtime != nullptr) {
        for (const char* key : {"cgroupPath", "cgroup"}) {
            auto cgroup = string_member(*runtime, key, "");
            if (!cgroup) return cgroup.error().with_context("runtimeConfig");
            if (config.cgroup.empty()) config.cgroup = *cgroup;
        }
        // "podAnnotations", or containerd's own capability name for the pod's annotations.
        for (const char* key : {"podAnnotations", "io.kubernetes.cri.pod-annotations"})
            if (auto read = read_annotations(member(*runtime, key), config.annotations); !read)
                return read.error().with_context("runtimeConfig");
    }
    if (const auto* args = member(root, "args"); args != nullptr) {
        const json::value* cni = member(*args, "cni");
        for (const json::value* scope : {cni, args}) {
            if (scope == nullptr) continue;
            auto cgroup = string_member(*scope, "cgroup", "");
            if (!cgroup) return cgroup.error().with_context("args");
            if (config.cgroup.empty()) config.cgroup = *cgroup;
            std::map<std::string, std::string> annotations;
            if (auto read = read_annotations(member(*scope, "podAnnotations"), annotations); !read)
                return read.error().with_context("args");
            config.annotations.insert(annotations.begin(),
                                      annotations.end());  // runtimeConfig wins
        }
    }
    return config;
}

std::string workload_name(const std::map<std::string, std::string>& cni_args,
                          const std::string& container_id) {
    auto ns = cni_args.find("K8S_POD_NAMESPACE");
    auto pod = cni_args.find("K8S_POD_NAME");
    if (ns != cni_args.end() && pod != cni_args.end() && !ns->second.empty() &&
        !pod->second.empty()) {
        const std::string full = ns->second + "." + pod->second;
        std::string name = lowercase_name(full);
        if (validate_name(name)) return name;
        // Too long (namespaces and pod names go up to 63 and 253): keep a readable prefix and
        // make it unique with a hash of the full name.
        name = name.substr(0, 54);
        while (!name.empty() && (name.back() == '.' || name.back() == '-')) name.pop_back();
        name += "-" + fnv_hex(full);
        if (validate_name(name)) return name;
    }
    std::string id = lowercase_name(container_id).substr(0, 32);
    return "cni-" + (id.empty() ? fnv_hex(container_id) : id);
}

Result<std::optional<WorkloadSpec>> build_spec(const PluginConfig& config, const Environment& env) {
    const auto cni_args = parse_cni_args(env.args);
    if (auto ns = cni_args.find("K8S_POD_NAMESPACE"); ns != cni_args.end()) {
        const auto& excluded = config.exclude_namespaces;
        if (std::find(excluded.begin(), excluded.end(), ns->second) != excluded.end())
            return std::optional<WorkloadSpec>{};
    }
    if (auto inject = config.annotations.find("sidecar.istio.io/inject");
        inject != config.annotations.end() && inject->second == "false")
        return std::optional<WorkloadSpec>{};

    WorkloadSpec spec;
    spec.name = workload_name(cni_args, env.container_id);
    spec.netns_path = env.netns;
    spec.cgroup_path = config.cgroup;
    if (spec.cgroup_path.empty() && !config.cgroup_root.empty() && !env.container_id.empty())
        spec.cgroup_path = config.cgroup_root + "/" + env.container_id;
    if (spec.cgroup_path.empty())
        return Error::invalid(
            "no pod cgroup: the runtime passed no runtimeConfig.cgroupPath, "
            "args.cni.cgroup is unset and no cgroupRoot is configured");
    // Runtimes name cgroups from the cgroup root ("/kubepods/burstable/pod<uid>"), not by their
    // mount path: such a path goes to the agent relative to its cgroup2 mount.
    std::error_code ec;
    if (spec.cgroup_path.front() == '/' && !std::filesystem::is_directory(spec.cgroup_path, ec))
        spec.cgroup_path =
            spec.cgroup_path.substr(spec.cgroup_path.find_first_not_of('/') == std::string::npos
                                        ? spec.cgroup_path.size()
                                        : spec.cgroup_path.find_first_not_of('/'));
    if (spec.cgroup_path.empty())
        return Error::invalid("cgroupPath: the cgroup root is not a pod cgroup");

    for (const auto& [key, value] : config.annotations) {
        if (key.rfind(kIstioPrefix, 0) != 0) continue;
        const std::string field = key.substr(kIstioPrefix.size());
        const std::string where = "annotation " + key;
        if (field == "excludeOutboundPorts" || field == "excludeInboundPorts" ||
            field == "includeOutboundPorts") {
            auto ports = parse_port_list(value, where);
            if (!ports) return ports.error();
            auto& target = field == "excludeOutboundPorts"  ? spec.exclude_outbound_ports
                           : field == "excludeInboundPorts" ? spec.exclude_inbound_ports
                                                            : spec.include_outbound_ports;
            target = *ports;
        } else if (field == "includeInboundPorts") {
            if (value == "*") continue;
            auto ports = parse_port_list(value, where);  // "" = no inbound capture, as in Istio
            if (!ports) return ports.error();
            spec.include_all_inbound_ports = false;
            spec.include_inbound_ports = *ports;
        } else if (field == "includeOutboundIPRanges" || field == "excludeOutboundIPRanges") {
            auto cidrs = parse_cidr_list(value, where);
            if (!cidrs) return cidrs.error();
            if (field == "excludeOutboundIPRanges") {
                spec.exclude_cidrs = cidrs->value_or(std::vector<Cidr>{});
            } else {
                spec.include_all_cidrs = !cidrs->has_value();
                spec.include_cidrs = cidrs->value_or(std::vector<Cidr>{});
            }
        }
        // Other traffic.sidecar.istio.io/* keys (kubevirtInterfaces, …) do not apply here.
    }
    if (auto valid = validate(spec); !valid) return valid.error();
    return std::optional<WorkloadSpec>{spec};
}

Outcome run(const Environment& env, std::string_view stdin_text,
            const std::function<std::unique_ptr<AgentClient>(const PluginConfig&)>& client_for) {
    if (env.command == "VERSION") {
        json::array versions;
        for (const char* v : kSupportedVersions) versions.emplace_back(v);
        Outcome outcome;
        outcome.output = json::serialize(
            json::object{{"cniVersion", "1.0.0"}, {"supportedVersions", std::move(versions)}});
        return outcome;
    }
    auto config = parse_config(stdin_text);
    if (!config) return failure("1.0.0", kDecodeFailure, config.error().message);
    const std::string& version = config->cni_version;
    if (!version_supported(version))
        return failure(version, kIncompatibleVersion, "unsupported cniVersion " + version);
    if (env.command != "ADD" && env.command != "DEL" && env.command != "CHECK")
        return failure(version, kInvalidEnvironment,
                       "CNI_COMMAND must be ADD, DEL, CHECK or VERSION, got '" + env.command + "'");
    if (env.command == "ADD" && !config->prev_result)
        return failure(version, kInvalidConfig,
                       "meshlane-cni is a chained plugin: it needs a prevResult (list it after the "
                       "interface plugin in a .conflist)");
    if (env.command != "DEL" && (env.netns.empty() || env.container_id.empty()))
        return failure(version, kInvalidEnvironment, "CNI_NETNS and CNI_CONTAINERID are required");

    const auto name = workload_name(parse_cni_args(env.args), env.container_id);
    auto client = client_for(*config);
    Outcome outcome;

    if (env.command == "DEL") {
        // Never fails: the pod may be long gone, and so may the agent (its reconcile loop
        // removes a workload whose netns disappeared anyway).
        auto reply = client->request(http::verb::delete_, "/v1/workloads/" + name, std::nullopt);
        if (!reply)
            outcome.log.push_back("meshlane-cni: DEL " + name + ": agent unreachable (" +
                                  reply.error().message + "); the agent cleans up on its own");
        else if (reply->status >= 400 && reply->status != 404)
            outcome.log.push_back("meshlane-cni: DEL " + name + ": " + reply_error(*reply));
        return outcome;
    }

    auto spec = build_spec(*config, env);
    if (!spec) return failure(version, kInvalidConfig, "pod " + name + ": " + spec.error().message);
    if (!spec->has_value()) {  // passed through by configuration
        if (env.command == "ADD") outcome.output = add_result(*config);
        outcome.log.push_back("meshlane-cni: " + name +
                              " is not captured (excluded namespace or "
                              "sidecar.istio.io/inject=false)");
        return outcome;
    }

    const bool add = env.command == "ADD";
    auto reply =
        add ? client->request(http::verb::post, "/v1/workloads", json::value(to_json(**spec)))
            : client->request(http::verb::get, "/v1/workloads/" + name, std::nullopt);
    if (!reply) {
        const std::string msg = "meshlane agent unreachable at " + config->agent_socket + ": pod " +
                                name + " cannot be captured";
        if (config->fail_open) {
            outcome.log.push_back("meshlane-cni: " + msg + " (failOpen: starting it uncaptured)");
            if (add) outcome.output = add_result(*config);
            return outcome;
        }
        return failure(version, kTryAgainLater, msg, reply.error().message);
    }
    if (reply->status >= 400) {
        if (!add && reply->status == 404)
            return failure(version, kNotEnrolled, "pod " + name + " is not enrolled with meshlane");
        return failure(version, kEnrolmentRefused, "meshlane refused to enroll pod " + name,
                       reply_error(*reply));
    }
    if (add) outcome.output = add_result(*config);
    return outcome;
}

}  // namespace meshlane::cni
