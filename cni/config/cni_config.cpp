#include "cni/config/cni_config.h"

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <filesystem>

namespace meshlane::cni {

namespace json = boost::json;

namespace {

constexpr std::string_view kIstioPrefix = "traffic.sidecar.istio.io/";
// Per-pod ProxyConfig (YAML or JSON). Its proxyMetadata become the sidecar's environment, where
// istio-cni reads ISTIO_META_DNS_CAPTURE (cni/pkg/plugin: ProxyEnvironments).
constexpr std::string_view kProxyConfigAnnotation = "proxy.istio.io/config";
constexpr std::string_view kDnsCaptureKey = "ISTIO_META_DNS_CAPTURE";

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

// GC's list of attachments the runtime still knows: [{"containerID": ..., "ifname": ...}].
Status read_valid_attachments(const json::value* value, std::vector<AttachmentKey>& out) {
    constexpr const char* kWhat =
        "cni.dev/valid-attachments: must be an array of {\"containerID\", \"ifname\"} objects";
    if (value == nullptr || value->is_null()) return Ok{};
    if (!value->is_array()) return Error::invalid(kWhat);
    for (const auto& item : value->get_array()) {
        auto id = string_member(item, "containerID", "");
        auto ifname = string_member(item, "ifname", "");
        if (!item.is_object() || !id || !ifname || id->empty()) return Error::invalid(kWhat);
        out.push_back({*id, *ifname});
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

}  // namespace

std::optional<bool> dns_capture_from_proxy_config(std::string_view config) {
    // Not a YAML parser: the one key is found where YAML ("KEY: "true"") and JSON
    // ("\"KEY\": \"true\"") both put it, and its value is read as Go's strconv.ParseBool does.
    std::size_t at = config.find(kDnsCaptureKey);
    if (at == std::string_view::npos) return std::nullopt;
    std::string_view rest = config.substr(at + kDnsCaptureKey.size());
    auto skip = [&rest](std::string_view chars) {
        while (!rest.empty() && chars.find(rest.front()) != std::string_view::npos)
            rest.remove_prefix(1);
    };
    skip("\"' \t");
    if (rest.empty() || rest.front() != ':') return std::nullopt;
    rest.remove_prefix(1);
    skip("\"' \t");
    const std::size_t end = rest.find_first_of("\"' \t\r\n,}");
    const std::string_view value = rest.substr(0, end);
    for (std::string_view yes : {"1", "t", "T", "TRUE", "true", "True"})
        if (value == yes) return true;
    for (std::string_view no : {"0", "f", "F", "FALSE", "false", "False"})
        if (value == no) return false;
    return std::nullopt;
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
    auto cgroup_template = string_member(root, "cgroupTemplate", "");
    if (!cgroup_template) return cgroup_template.error();
    config.cgroup_template = *cgroup_template;
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
    auto data_dir = string_member(root, "dataDir", config.data_dir);
    if (!data_dir) return data_dir.error();
    if (data_dir->empty() || data_dir->front() != '/')
        return Error::invalid("dataDir: must be an absolute path");
    config.data_dir = *data_dir;
    if (auto valid = read_valid_attachments(member(root, "cni.dev/valid-attachments"),
                                            config.valid_attachments);
        !valid)
        return valid.error();
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

Result<std::string> expand_cgroup_template(std::string_view text,
                                           const std::map<std::string, std::string>& cni_args,
                                           const std::string& container_id) {
    std::string out;
    while (!text.empty()) {
        auto open = text.find('{');
        out += text.substr(0, open);
        if (open == std::string_view::npos) break;
        auto close = text.find('}', open);
        if (close == std::string_view::npos)
            return Error::invalid("cgroupTemplate: '{' without '}'");
        const std::string key(text.substr(open + 1, close - open - 1));
        auto arg = cni_args.find(key);
        if (key == "CNI_CONTAINERID")
            out += container_id;
        else if (arg != cni_args.end() && !arg->second.empty())
            out += arg->second;
        else
            return Error::invalid("cgroupTemplate: CNI_ARGS has no " + key);
        text.remove_prefix(close + 1);
    }
    if (out.find("..") != std::string::npos)
        return Error::invalid("cgroupTemplate: expands to a path with '..': " + out);
    return out;
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
    // The pod's Kubernetes identity labels its metrics (namespace, pod); the name above may be
    // shortened or lowercased, these are not. Left empty if the runtime sent something else.
    if (auto ns = cni_args.find("K8S_POD_NAMESPACE"), pod = cni_args.find("K8S_POD_NAME");
        ns != cni_args.end() && pod != cni_args.end()) {
        WorkloadSpec identity;
        identity.k8s_namespace = ns->second;
        identity.k8s_pod = pod->second;
        if (validate_pod_identity(identity)) {
            spec.k8s_namespace = ns->second;
            spec.k8s_pod = pod->second;
        }
    }
    spec.netns_path = env.netns;
    spec.cgroup_path = config.cgroup;
    if (spec.cgroup_path.empty() && !config.cgroup_template.empty()) {
        auto expanded = expand_cgroup_template(config.cgroup_template, cni_args, env.container_id);
        if (!expanded) return expanded.error();
        spec.cgroup_path = *expanded;
    }
    if (spec.cgroup_path.empty() && !config.cgroup_root.empty() && !env.container_id.empty())
        spec.cgroup_path = config.cgroup_root + "/" + env.container_id;
    if (spec.cgroup_path.empty())
        return Error::invalid(
            "no pod cgroup: the runtime passed no runtimeConfig.cgroupPath, "
            "args.cni.cgroup is unset and no cgroupTemplate or cgroupRoot is configured");
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
    // istio-cni cannot read the pod's resolv.conf either: with DNS capture it captures all DNS
    // (cfg.CaptureAllDNS = dnsRedirect), and so does meshlane-cni.
    if (auto proxy_config = config.annotations.find(std::string(kProxyConfigAnnotation));
        proxy_config != config.annotations.end() &&
        dns_capture_from_proxy_config(proxy_config->second).value_or(false))
        spec.dns_capture = DnsCapture::kAll;
    if (auto valid = validate(spec); !valid) return valid.error();
    return std::optional<WorkloadSpec>{spec};
}

Result<std::optional<std::string>> plugin_stdin_from_list(const json::value& conflist,
                                                          const json::object& capability_args,
                                                          std::string_view plugin_type) {
    if (!conflist.is_object()) return Error::invalid("network config list is not a JSON object");
    const json::value* plugins = member(conflist, "plugins");
    // A single-plugin .conf is its own entry.
    json::array single;
    if (plugins == nullptr) single.push_back(conflist);
    if (plugins != nullptr && !plugins->is_array())
        return Error::invalid("network config list: plugins must be an array");
    const json::array& entries = plugins != nullptr ? plugins->get_array() : single;
    for (const auto& entry : entries) {
        auto type = string_member(entry, "type", "");
        if (!type) return type.error().with_context("network config list plugin");
        if (*type != plugin_type) continue;
        json::object config = entry.get_object();
        // As libcni does for each plugin of a list: the list's version and name, and the
        // capability args the plugin declares, as runtimeConfig.
        for (const char* key : {"cniVersion", "name"})
            if (const auto* v = member(conflist, key); v != nullptr) config[key] = *v;
        json::object runtime_config;
        if (const auto* capabilities = member(entry, "capabilities");
            capabilities != nullptr && capabilities->is_object()) {
            for (const auto& [key, wanted] : capabilities->get_object()) {
                if (!wanted.is_bool() || !wanted.get_bool()) continue;
                if (const auto* arg = capability_args.if_contains(key); arg != nullptr)
                    runtime_config[key] = *arg;
            }
        }
        config.erase("capabilities");
        if (!runtime_config.empty()) config["runtimeConfig"] = std::move(runtime_config);
        return std::optional<std::string>{json::serialize(config)};
    }
    return std::optional<std::string>{};
}

}  // namespace meshlane::cni
