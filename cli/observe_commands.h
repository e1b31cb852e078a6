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
    bool follow = false;  // conns, drops: stream new events instead (run_follow)
};

// `meshlane drops|conns --follow` (cli/observe_follow.cpp): new events as they happen, from
// GET /v1/events?follow=true; exit 0 on SIGINT/SIGTERM or when stdout's reader goes away.
struct FollowFlags {
    std::string type;      // "drop" | "connect"
    std::string workload;  // empty: every workload
    std::string reason;    // drops: only this reason (filtered here)
    bool json = false;     // print the NDJSON lines as they come
};
int run_follow(const GlobalOptions& global, const FollowFlags& flags);

int run_conns(const GlobalOptions& global, const ObserveFlags& flags);
int run_drops(const GlobalOptions& global, const ObserveFlags& flags);
// `meshlane tls`: GET /v1/tls.
int run_tls(const GlobalOptions& global, const ObserveFlags& flags);

}  // namespace meshlane::cli
