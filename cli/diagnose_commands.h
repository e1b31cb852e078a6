// `meshlane diagnose NAME` and `meshlane verify NAME`: render GET /v1/workloads/{name}/diagnose
// and POST /v1/workloads/{name}/verify. Exit codes: 0 no critical finding / every check passed,
// 4 (kExitProblemFound) a critical finding / a failed check, plus the common ones in commands.h.
#pragma once

#include <string>

#include "cli/commands.h"

namespace meshlane::cli {

inline constexpr int kExitProblemFound = 4;

int run_diagnose(const GlobalOptions& global, const std::string& name, bool json);
int run_verify(const GlobalOptions& global, const std::string& name, bool json);

}  // namespace meshlane::cli
