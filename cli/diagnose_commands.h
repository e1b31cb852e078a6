// `meshlane diagnose NAME` and `meshlane verify NAME`: render GET /v1/workloads/{name}/diagnose
// and POST /v1/workloads/{name}/verify. Exit codes: 0 no critical finding / every check passed,
// 4 (kExitProblemFound) a critical finding / a failed check, plus the common ones in commands.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cli/commands.h"

namespace meshlane::cli {

inline constexpr int kExitProblemFound = 4;

// window_seconds 0: the agent's default window.
int run_diagnose(const GlobalOptions& global, const std::string& name, bool json,
                 unsigned window_seconds = 0);
int run_verify(const GlobalOptions& global, const std::string& name, bool json);
// `--since`: "90s", "10m", "2h", "1d", or an absolute UTC time "2026-12-07T23:00:00Z"; the
// diagnosis window in seconds back from now_unix_s. nullopt: not understood or in the future.
std::optional<unsigned> since_to_window(const std::string& since, std::int64_t now_unix_s);
// `meshlane diagnose NAME --follow`: re-evaluates every interval_seconds and prints what
// changed (a finding appears, changes severity or status, or leaves the window), each line
// stamped; --json prints every report as one line. Runs until interrupted or the agent goes.
int run_diagnose_follow(const GlobalOptions& global, const std::string& name, bool json,
                        unsigned window_seconds, unsigned interval_seconds);
// `meshlane diagnose --all`: every enrolled workload, one summary row each (--json: every
// report). Exit 4 when any workload has a critical finding, 1 when one could not be diagnosed.
int run_diagnose_all(const GlobalOptions& global, bool json, unsigned window_seconds = 0);

}  // namespace meshlane::cli
