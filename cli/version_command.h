// `meshlane version` / `meshlane --version`: what this binary is (version, git revision, build
// type and flags); with --json also the running kernel and, if an agent answers, the kernel
// features it probed (else the reason it could not be asked).
#pragma once

#include <string>

#include "cli/commands.h"

namespace meshlane::cli {

// The text both `meshlane version` and `meshlane --version` print (no agent needed).
std::string version_text();

// Always exits 0 when the version could be printed: an unreachable agent is reported, not an
// error, so `meshlane version` works on a host without a running agent.
int run_version(const GlobalOptions& global, bool json);

}  // namespace meshlane::cli
