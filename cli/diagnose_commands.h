// `meshlane diagnose NAME` and `meshlane verify NAME`: render GET /v1/workloads/{name}/diagnose
// and POST /v1/workloads/{name}/verify. Exit codes: 0 no critical finding / every check passed,
// 4 (kExitProblemFound) a critical finding / a failed check, plus the common ones in commands.h.
#pragma once

#include <string>

#include "cli/commands.h"

namespace meshlane::cli {

inline constexpr int kExitProblemFound = 4;

// window_seconds 0: the agent's default window.
int run_diagnose(const GlobalOptions& global, const std::string& name, bool json,
                 unsigned window_seconds = 0);
int run_verify(const GlobalOptions& global, const std::string& name, bool json);
// `meshlane diagnose --all`: every enrolled workload, one summary row each (--json: every
// report). Exit 4 when any workload has a critical finding, 1 when one could not be diagnosed.
int run_diagnose_all(const GlobalOptions& global, bool json, unsigned window_seconds = 0);

}  // namespace meshlane::cli
