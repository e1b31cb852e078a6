// `meshlane agent`: the per-node daemon. Loads (or re-adopts) the pinned datapath, re-adopts
// enrolled workloads, serves the local API until SIGTERM/SIGINT.
#pragma once

#include <string>

namespace meshlane {

// config_path empty -> the embedded default configuration. Returns the process exit code.
int run_agent(const std::string& config_path);

}  // namespace meshlane
