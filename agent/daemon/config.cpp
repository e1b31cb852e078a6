#include "agent/daemon/config.h"

#include <charconv>
#include <fstream>
#include <sstream>

namespace meshlane {

const std::string_view kDefaultConfigText = R"(# meshlane agent, embedded default
state_dir = /run/meshlane
api_socket = /run/meshlane/api.sock
grpc_socket = /run/meshlane/grpc.sock
pin_dir = meshlane
log_level = info
max_workloads = 4096
reconcile_interval_ms = 2000
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

}  // namespace

Result<AgentConfig> parse_agent_config(std::string_view text, std::string_view origin) {
    AgentConfig config;
    std::istringstream lines{std::string(text)};
    std::string raw;
    int number = 0;
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
