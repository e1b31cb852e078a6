// `meshlane uninstall`: removes every link, pin and map meshlane created on this node (and only
// those: everything lives under <bpffs>/<pin_dir> and <state_dir>), leaving the node as if
// meshlane had never run. Refuses while an agent holds the state directory.
#pragma once

#include <string>

#include "agent/common/result.h"

namespace meshlane {

struct UninstallReport {
    int links_detached = 0;
    int maps_unpinned = 0;
    std::string pin_root;
};

Result<UninstallReport> uninstall(const std::string& config_path);

}  // namespace meshlane
