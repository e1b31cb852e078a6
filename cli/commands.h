// The CLI's subcommands other than `agent`: each builds one API request, sends it over the unix
// socket (or HTTPS with --server https://...) and renders the reply. Exit codes are part of the
// interface (scripts and tests rely on them).
#pragma once

#include <string>

#include "agent/common/result.h"
#include "agent/model/workload_spec.h"
#include "api/client/unix_http_client.h"

namespace meshlane::cli {

enum ExitCode : int {
    kExitOk = 0,
    kExitFailed = 1,       // the API refused the call, or local validation failed
    kExitUsage = 2,        // bad command line (CLI11)
    kExitUnreachable = 3,  // no agent on the socket, timeout, connection dropped
    // 4 is kExitProblemFound (diagnose/verify, cli/diagnose_commands.h).
    // `meshlane status` (GET /readyz, agent/model/readiness.h): 0 ready, or
    kExitNotReady = 5,  // an essential part is off: interception is disabled
    kExitDegraded = 6,  // interception works, an optional part is off (not by configuration)
};

inline constexpr const char* kDefaultServer = "/run/meshlane/api.sock";

// --server (unix socket path or https://HOST:PORT) and, for https, --cacert, --cert/--key and
// --token-file: exactly what the API client needs.
struct GlobalOptions : rest::ClientOptions {
    GlobalOptions() : rest::ClientOptions(kDefaultServer) {}
};

// `meshlane enroll` flags. Fields that are WorkloadSpec members start at its defaults, so the
// help text shows them; lists stay text until build_spec() parses them.
struct EnrollFlags {
    WorkloadSpec spec;
    std::string proxy_uids = "1337";  // istio -u: one or more, comma-separated
    std::string proxy_gids = "1337";  // istio -g
    std::string ip_families = "ipv4,ipv6";
    std::string host_loopback_cidr = "127.0.0.1/32";
    std::string exclude_outbound_ports;
    std::string exclude_inbound_ports;
    std::string include_cidrs = "*";
    std::string exclude_cidrs;
    std::string include_ports = "*";
    std::string include_outbound_ports;
    std::string startup_policy = "refuse";
    // --fast-path[=KINDS]: comma-separated app-proxy, proxy-proxy; bare --fast-path = app-proxy
    std::string fast_path;
    std::string dns_capture = "off";  // off|nameservers|all
    std::string dns_servers;          // comma-separated nameserver addresses
    bool json = false;
};

// Parses the list flags into flags.spec and validates it, naming the flag on error.
Result<WorkloadSpec> build_spec(const EnrollFlags& flags);

int run_enroll(const GlobalOptions& global, const EnrollFlags& flags);
int run_unenroll(const GlobalOptions& global, const std::string& name, bool json);
int run_workloads(const GlobalOptions& global, bool json);
int run_workload(const GlobalOptions& global, const std::string& name, bool json);
int run_status(const GlobalOptions& global, bool json);
// Local, no agent: detaches and removes everything under the configured pin directory.
int run_uninstall(const std::string& config_path);

}  // namespace meshlane::cli
