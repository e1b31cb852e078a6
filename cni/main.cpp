// meshlane-cni: the process side of cni_plugin.h. Reads the CNI environment and stdin, runs the
// command, writes the result or error document to stdout and diagnostics to stderr (and to
// MESHLANE_CNI_LOG when set), exits 0 on success and 1 on a CNI error.
//
// Built as a static executable (cni/CMakeLists.txt): a runtime copies it to any node and runs it
// there, whatever libc or libraries that node has.
#include <unistd.h>

#include <boost/json/serialize.hpp>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>

#include "cni/cni_plugin.h"

namespace {

std::string env_or_empty(const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr ? value : "";
}

class SocketAgentClient : public meshlane::cni::AgentClient {
  public:
    explicit SocketAgentClient(const meshlane::cni::PluginConfig& config)
        : socket_(config.agent_socket), timeout_(config.timeout_ms) {}

    meshlane::Result<meshlane::cni::AgentReply> request(
        meshlane::cni::Method method, const std::string& target,
        const std::optional<boost::json::value>& body) override {
        return meshlane::cni::unix_http_request(
            socket_, method, target, body ? boost::json::serialize(*body) : "", timeout_);
    }

  private:
    std::string socket_;
    std::chrono::milliseconds timeout_;
};

}  // namespace

int main() {
    namespace cni = meshlane::cni;
    cni::Environment env{env_or_empty("CNI_COMMAND"), env_or_empty("CNI_CONTAINERID"),
                         env_or_empty("CNI_NETNS"),   env_or_empty("CNI_IFNAME"),
                         env_or_empty("CNI_ARGS"),    env_or_empty("CNI_PATH")};
    std::string input;
    // Runtimes always pipe a config in; someone probing the binary at a terminal gets an answer
    // instead of a wait.
    if (::isatty(STDIN_FILENO) == 0)
        input.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    auto outcome = cni::run(env, input, [](const cni::PluginConfig& config) {
        return std::make_unique<SocketAgentClient>(config);
    });
    const std::string log_path = env_or_empty("MESHLANE_CNI_LOG");
    std::ofstream log_file;
    if (!log_path.empty()) log_file.open(log_path, std::ios::app);
    for (const auto& line : outcome.log) {
        std::cerr << line << '\n';
        if (log_file) log_file << env.command << " " << env.container_id << ": " << line << '\n';
    }
    if (!outcome.output.empty()) std::cout << outcome.output << '\n';
    return outcome.exit_code;
}
