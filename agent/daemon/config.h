// Agent configuration: `key = value` lines, '#' starts a comment. Every key is optional; the
// embedded default (kDefaultConfigText) is what `meshlane agent` runs with when no file is
// given, and deploy/meshlane.conf documents each key.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

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
};

extern const std::string_view kDefaultConfigText;

// Unknown keys, bad values and malformed lines are errors naming the line.
Result<AgentConfig> parse_agent_config(std::string_view text, std::string_view origin);
Result<AgentConfig> load_agent_config(const std::string& path);  // empty path: the default

}  // namespace meshlane
