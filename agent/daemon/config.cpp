#include "agent/daemon/config.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>
#include <sstream>

#include "api/tls/tls_config.h"

namespace meshlane {

const std::string_view kDefaultConfigText = R"(# meshlane agent, embedded default
state_dir = /run/meshlane
api_socket = /run/meshlane/api.sock
grpc_socket = /run/meshlane/grpc.sock
pin_dir = meshlane
log_level = info
max_workloads = 4096
reconcile_interval_ms = 2000
observe = true
slow_connect_threshold_ms = 500
tls_slow_handshake_threshold_ms = 500
event_rate_limit_per_sec = 1000
recent_events_per_workload = 256
drop_count_only_reasons = QUEUE_PURGE
tls_destinations_per_workload = 256
tls_destinations_total = 16384
discover_pods = true
cni_cache_dir = /var/lib/cni/results
discover_interval_ms = 30000
metrics_workload_histograms = true
metrics_drop_reasons = true
)";

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

Result<std::uint32_t> parse_u32(std::string_view value, std::uint32_t min, std::uint32_t max,
                                const std::string& where) {
    std::uint32_t out = 0;
    auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
    if (ec != std::errc() || ptr != value.data() + value.size() || out < min || out > max)
        return Error::invalid(where + ": expected a number in " + std::to_string(min) + ".." +
                              std::to_string(max) + ", got '" + std::string(value) + "'");
    return out;
}

Result<bool> parse_bool(std::string_view value, const std::string& where) {
    if (value == "true" || value == "yes" || value == "1") return true;
    if (value == "false" || value == "no" || value == "0") return false;
    return Error::invalid(where + ": expected true or false, got '" + std::string(value) + "'");
}

// "QUEUE_PURGE, SOCKET_CLOSE" or "none": drop-reason names (letters, digits, '_'), at most
// MESHLANE_DROP_COUNT_ONLY_MAX (16). Whether the running kernel knows a name is the observer's
// business (reported there): kernels differ, the same file must work on all of them.
Result<std::vector<std::string>> parse_drop_reason_list(std::string_view value,
                                                        const std::string& where) {
    std::vector<std::string> names;
    if (value == "none") return names;
    std::size_t start = 0;
    while (start <= value.size()) {
        const std::size_t comma = std::min(value.find(',', start), value.size());
        const std::string_view name = trim(value.substr(start, comma - start));
        const bool valid = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
            return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '_';
        });
        if (!valid)
            return Error::invalid(where +
                                  ": expected drop reason names separated by ',' (or "
                                  "'none'), got '" +
                                  std::string(value) + "'");
        names.emplace_back(name);
        start = comma + 1;
    }
    if (names.size() > 16)
        return Error::invalid(where + ": at most 16 reasons, got " + std::to_string(names.size()));
    return names;
}

// The TCP listeners: valid addresses, loopback unless opted out, and TLS whenever one is on.
Status validate_tcp_listeners(const AgentConfig& config, std::string_view origin) {
    const std::string prefix = std::string(origin) + ": ";
    std::string endpoints[2];
    const std::pair<const char*, const std::string*> listeners[] = {
        {"rest_tcp_listen", &config.rest_tcp_listen}, {"grpc_tcp_listen", &config.grpc_tcp_listen}};
    for (std::size_t i = 0; i < 2; ++i) {
        const auto& [key, value] = listeners[i];
        if (value->empty()) continue;
        auto endpoint = tls::parse_tcp_endpoint(*value);
        if (!endpoint) return endpoint.error().with_context(prefix + key);
        if (!endpoint->loopback && !config.api_tcp_allow_non_loopback)
            return Error::invalid(prefix + key + " " + *value +
                                  " is not a loopback address; set api_tcp_allow_non_loopback = "
                                  "true to expose the API beyond this node");
        endpoints[i] = endpoint->text();
        if (config.tls_cert_file.empty() || config.tls_key_file.empty())
            return Error::invalid(prefix + key +
                                  " needs tls_cert_file and tls_key_file: plain-text TCP is "
                                  "refused, the API is served over TLS only");
    }
    if (!endpoints[0].empty() && endpoints[0] == endpoints[1])
        return Error::invalid(prefix + "grpc_tcp_listen must differ from rest_tcp_listen");
    if (config.tls_require_client_cert && config.tls_client_ca_file.empty())
        return Error::invalid(prefix + "tls_require_client_cert = true needs tls_client_ca_file");
    return Ok{};
}

}  // namespace

Result<AgentConfig> parse_agent_config(std::string_view text, std::string_view origin) {
    AgentConfig config;
    std::istringstream lines{std::string(text)};
    std::string raw;
    int number = 0;
    std::map<std::string, std::string> first_seen;  // key -> where, for duplicate keys
    while (std::getline(lines, raw)) {
        ++number;
        std::string_view line = raw;
        if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
        line = trim(line);
        if (line.empty()) continue;
        const std::string where = std::string(origin) + ":" + std::to_string(number);
        auto eq = line.find('=');
        if (eq == std::string_view::npos) return Error::invalid(where + ": expected key = value");
        std::string key(trim(line.substr(0, eq)));
        std::string value(trim(line.substr(eq + 1)));
        // A key given twice is a mistake (which one was meant?), never "last one wins".
        if (auto [it, fresh] = first_seen.emplace(key, where); !fresh)
            return Error::invalid(where + ": " + key + " is set again (first at " + it->second +
                                  ")");
        if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
            value = value.substr(1, value.size() - 2);
        if (key == "state_dir") {
            config.state_dir = value;
        } else if (key == "api_socket") {
            config.api_socket = value;
        } else if (key == "grpc_socket") {
            config.grpc_socket = value;
        } else if (key == "bpffs") {
            config.bpffs = value;
        } else if (key == "pin_dir") {
            if (value.empty() || value.find('/') != std::string::npos || value == "." ||
                value == "..")
                return Error::invalid(where + ": pin_dir must be a single directory name");
            config.pin_dir = value;
        } else if (key == "log_level") {
            if (value != "debug" && value != "info" && value != "warn" && value != "error")
                return Error::invalid(where + ": log_level must be debug, info, warn or error");
            config.log_level = value;
        } else if (key == "max_workloads") {
            auto n = parse_u32(value, 1, 65536, where + " max_workloads");
            if (!n) return n.error();
            config.max_workloads = *n;
        } else if (key == "reconcile_interval_ms") {
            auto n = parse_u32(value, 100, 600000, where + " reconcile_interval_ms");
            if (!n) return n.error();
            config.reconcile_interval_ms = *n;
        } else if (key == "slow_connect_threshold_ms" || key == "tls_slow_handshake_threshold_ms") {
            // 1 ms up to 10 minutes: 0 would stream every connect, beyond 10 min nothing.
            auto n = parse_u32(value, 1, 600000, where + " " + key);
            if (!n) return n.error();
            (key == "slow_connect_threshold_ms" ? config.slow_connect_threshold_ms
                                                : config.tls_slow_handshake_threshold_ms) = *n;
        } else if (key == "event_rate_limit_per_sec") {
            auto n = parse_u32(value, 1, 1000000, where + " event_rate_limit_per_sec");
            if (!n) return n.error();
            config.event_rate_limit_per_sec = *n;
        } else if (key == "recent_events_per_workload") {
            // The aggregate's memory bound grows with it (max_workloads x this x event size).
            auto n = parse_u32(value, 1, 65536, where + " recent_events_per_workload");
            if (!n) return n.error();
            config.recent_events_per_workload = *n;
        } else if (key == "drop_count_only_reasons") {
            auto reasons = parse_drop_reason_list(value, where + " drop_count_only_reasons");
            if (!reasons) return reasons.error();
            config.drop_count_only_reasons = std::move(*reasons);
        } else if (key == "tls_destinations_per_workload") {
            auto n = parse_u32(value, 1, 65536, where + " tls_destinations_per_workload");
            if (!n) return n.error();
            config.tls_destinations_per_workload = *n;
        } else if (key == "tls_destinations_total") {
            auto n = parse_u32(value, 1, 1048576, where + " tls_destinations_total");
            if (!n) return n.error();
            config.tls_destinations_total = *n;
        } else if (key == "observe") {
            auto b = parse_bool(value, where + " observe");
            if (!b) return b.error();
            config.observe = *b;
        } else if (key == "discover_pods") {
            auto b = parse_bool(value, where + " discover_pods");
            if (!b) return b.error();
            config.discover_pods = *b;
        } else if (key == "cni_cache_dir") {
            if (value.empty() || value.front() != '/')
                return Error::invalid(where + ": cni_cache_dir must be an absolute path");
            config.cni_cache_dir = value;
        } else if (key == "discover_interval_ms") {
            auto n = parse_u32(value, 100, 3600000, where + " discover_interval_ms");
            if (!n) return n.error();
            config.discover_interval_ms = *n;
        } else if (key == "metrics_address") {
            // Read-only and unauthenticated by design (what Prometheus and kubelet probes
            // speak), so any address is allowed; the agent logs when it is not loopback.
            if (!value.empty())
                if (auto endpoint = tls::parse_tcp_endpoint(value); !endpoint)
                    return endpoint.error().with_context(where + " metrics_address");
            config.metrics_address = value;
        } else if (key == "metrics_workload_histograms" || key == "metrics_drop_reasons") {
            auto b = parse_bool(value, where + " " + key);
            if (!b) return b.error();
            (key == "metrics_drop_reasons" ? config.metrics_drop_reasons
                                           : config.metrics_workload_histograms) = *b;
        } else if (key == "rest_tcp_listen") {
            config.rest_tcp_listen = value;
        } else if (key == "grpc_tcp_listen") {
            config.grpc_tcp_listen = value;
        } else if (key == "api_tcp_allow_non_loopback" || key == "tls_require_client_cert") {
            auto b = parse_bool(value, where + " " + key);
            if (!b) return b.error();
            (key == "tls_require_client_cert" ? config.tls_require_client_cert
                                              : config.api_tcp_allow_non_loopback) = *b;
        } else if (key == "tls_cert_file" || key == "tls_key_file" || key == "tls_client_ca_file" ||
                   key == "api_token_file") {
            if (!value.empty() && value.front() != '/')
                return Error::invalid(where + ": " + key + " must be an absolute path");
            (key == "tls_cert_file"        ? config.tls_cert_file
             : key == "tls_key_file"       ? config.tls_key_file
             : key == "tls_client_ca_file" ? config.tls_client_ca_file
                                           : config.api_token_file) = value;
        } else {
            return Error::invalid(where + ": unknown key '" + key + "'");
        }
    }
    for (const auto* path : {&config.state_dir, &config.api_socket, &config.grpc_socket})
        if (path->empty() || path->front() != '/')
            return Error::invalid(std::string(origin) +
                                  ": state_dir, api_socket and grpc_socket must be absolute paths");
    if (config.grpc_socket == config.api_socket)
        return Error::invalid(std::string(origin) + ": grpc_socket must differ from api_socket");
    if (auto tcp = validate_tcp_listeners(config, origin); !tcp) return tcp.error();
    return config;
}

Result<AgentConfig> load_agent_config(const std::string& path) {
    if (path.empty()) return parse_agent_config(kDefaultConfigText, "<embedded default>");
    std::ifstream in(path);
    if (!in) return Error::last_errno("config " + path);
    std::stringstream text;
    text << in.rdbuf();
    return parse_agent_config(text.str(), path);
}

}  // namespace meshlane
