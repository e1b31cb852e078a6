// Agent configuration: `key = value` lines, '#' starts a comment. Every key is optional; the
// embedded default (kDefaultConfigText) is what `meshlane agent` runs with when no file is
// given, and deploy/meshlane.conf documents each key.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/common/result.h"

namespace meshlane {

struct AgentConfig {
    std::string state_dir = "/run/meshlane";
    std::string api_socket = "/run/meshlane/api.sock";
    std::string grpc_socket = "/run/meshlane/grpc.sock";
    std::string bpffs;                 // empty: the mounted bpffs, or mount /sys/fs/bpf
    std::string pin_dir = "meshlane";  // directory name under bpffs
    std::string log_level = "info";    // debug | info | warn | error
    std::uint32_t max_workloads = 4096;
    std::uint32_t reconcile_interval_ms = 2000;
    // Observation (agent/observe/observer.h; deploy/meshlane.conf explains each). Counters and
    // histograms are exact whatever these say; they bound only what is streamed and kept.
    bool observe = true;  // false: no connect/drop/TLS observers, the datapath alone
    std::uint32_t slow_connect_threshold_ms = 500;        // established connects this slow
    std::uint32_t tls_slow_handshake_threshold_ms = 500;  // TLS handshakes this slow
    std::uint32_t event_rate_limit_per_sec = 1000;        // drop events per CPU per second
    std::uint32_t recent_events_per_workload = 256;       // kept per workload and kind
    // Drop reasons (BTF names, no SKB_DROP_REASON_ prefix) counted but never streamed.
    std::vector<std::string> drop_count_only_reasons = {"QUEUE_PURGE"};
    std::uint32_t tls_destinations_per_workload = 256;  // TLS per-destination stats kept
    std::uint32_t tls_destinations_total = 16384;       // ... across all workloads
    // Pods that existed before the agent (agent/workload/discovery.h): looked for at start and
    // every discover_interval_ms in the runtime's CNI result cache and the kubepods cgroups.
    bool discover_pods = true;
    std::string cni_cache_dir = "/var/lib/cni/results";
    std::uint32_t discover_interval_ms = 30000;
    // Optional TCP listeners for the API (docs/api.md): "127.0.0.1:9876", "[::1]:9876"; empty =
    // off. TLS is mandatory on TCP; a non-loopback address needs api_tcp_allow_non_loopback.
    std::string rest_tcp_listen;
    std::string grpc_tcp_listen;
    bool api_tcp_allow_non_loopback = false;
    std::string tls_cert_file;
    std::string tls_key_file;
    std::string tls_client_ca_file;  // set: verify client certificates against this CA bundle
    bool tls_require_client_cert = false;
    std::string api_token_file;  // bearer token for mutating calls over TCP
    // The scrape listener (api/rest/scrape_server.h): plain HTTP, GET|HEAD /metrics, /healthz,
    // /readyz only. "127.0.0.1:9966", "0.0.0.0:9966", "[::1]:9966"; empty = off.
    std::string metrics_address;
    // Cardinality switches for /metrics (api/metrics/metrics_options.h).
    bool metrics_workload_histograms = true;
    bool metrics_drop_reasons = true;

    bool tcp_enabled() const { return !rest_tcp_listen.empty() || !grpc_tcp_listen.empty(); }
};

extern const std::string_view kDefaultConfigText;

// Unknown keys, bad values and malformed lines are errors naming the line.
Result<AgentConfig> parse_agent_config(std::string_view text, std::string_view origin);
Result<AgentConfig> load_agent_config(const std::string& path);  // empty path: the default

}  // namespace meshlane
