#include "cli/version_command.h"

#include <sys/utsname.h>

#include <boost/json.hpp>
#include <iostream>

#include "api/client/unix_http_client.h"
#include "cli/build_info.h"
#include "cli/output.h"

namespace meshlane::cli {

namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

// A short timeout: `version` must not hang on a wedged agent.
constexpr std::chrono::milliseconds kAgentTimeout{2000};

std::string local_kernel() {
    struct utsname name {};
    if (::uname(&name) != 0) return "unknown";
    return std::string(name.sysname) + " " + name.release + " " + name.machine;
}

json::object build_json() {
    const BuildInfo& info = build_info();
    return {
        {"version", info.version},   {"revision", info.revision},   {"build_type", info.build_type},
        {"compiler", info.compiler}, {"cxx_flags", info.cxx_flags}, {"libbpf", info.libbpf},
        {"arch", info.arch}};
}

// The agent's own view: its version and the kernel features it probed at startup (the same as
// `meshlane status`), or why it could not be asked.
json::object agent_json(const GlobalOptions& global) {
    auto reply =
        rest::http_request(global, http::verb::get, "/v1/status", std::nullopt, kAgentTimeout);
    if (!reply)
        return {{"reachable", false},
                {"error", reply.error().message},
                {"note", "kernel features are probed by the agent; start it to see them"}};
    boost::system::error_code ec;
    auto status = json::parse(reply->body, ec);
    if (ec || reply->status != 200 || !status.is_object())
        return {{"reachable", true},
                {"error", "GET /v1/status answered HTTP " + std::to_string(reply->status)}};
    json::object agent{{"reachable", true}, {"server", global.server}};
    for (const char* key : {"version", "kernel", "features", "feature_states"})
        if (const auto* value = status.as_object().if_contains(key)) agent[key] = *value;
    return agent;
}

}  // namespace

std::string version_text() {
    const BuildInfo& info = build_info();
    return std::string("meshlane ") + info.version + "\nrevision: " + info.revision +
           "\nbuild:    " + info.build_type + ", " + info.compiler + ", " + info.arch +
           "\nflags:    " + info.cxx_flags + "\nlibbpf:   " + info.libbpf;
}

int run_version(const GlobalOptions& global, bool as_json) {
    if (!as_json) {
        std::cout << version_text() << '\n';
        return kExitOk;
    }
    json::object out = build_json();
    out["kernel"] = local_kernel();
    out["agent"] = agent_json(global);
    std::cout << pretty_json(out) << '\n';
    return kExitOk;
}

}  // namespace meshlane::cli
