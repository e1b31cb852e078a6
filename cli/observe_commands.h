// `meshlane conns` and `meshlane drops`: render GET /v1/connections and GET /v1/drops. Like
// every CLI command they only show what the agent's API returns.
#pragma once

#include <cstddef>
#include <string>

#include "cli/commands.h"

namespace meshlane::cli {

struct ObserveFlags {
    std::string workload;  // empty: every workload
    std::string reason;    // drops only
    std::size_t limit = 20;
    bool json = false;
};

int run_conns(const GlobalOptions& global, const ObserveFlags& flags);
int run_drops(const GlobalOptions& global, const ObserveFlags& flags);

}  // namespace meshlane::cli
