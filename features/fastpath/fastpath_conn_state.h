// A fast-path connection's state in words, for verify and status (docs/fastpath.md, "Flow
// control"). Kept out of the loader so the REST/diagnosis code does not link the BPF loaders.
#pragma once

#include <string>

#include "features/fastpath/fastpath_abi.h"

namespace meshlane {

// A fastpath_conns entry in words: its decided state and, when accelerated, which direction
// (connecting -> accepting end, or back) is spilled to TCP right now.
std::string fastpath_conn_state_text(const fastpath_conn& conn);

}  // namespace meshlane
