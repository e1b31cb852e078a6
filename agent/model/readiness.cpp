#include "agent/model/readiness.h"

#include <sys/stat.h>

namespace meshlane {

std::string_view to_string(Readiness readiness) {
    switch (readiness) {
        case Readiness::kReady:
            return "ready";
        case Readiness::kDegraded:
            return "degraded";
        case Readiness::kNotReady:
            return "not_ready";
    }
    return "not_ready";
}

std::string_view to_string(ReadinessProblem problem) {
    switch (problem) {
        case ReadinessProblem::kEssentialFeatureOff:
            return "essential_feature_off";
        case ReadinessProblem::kOptionalFeatureOff:
            return "optional_feature_off";
    }
    return "essential_feature_off";
}

std::string ReadinessReport::summary() const {
    std::string text;
    for (const auto& issue : issues) {
        if (!text.empty()) text += "; ";
        text += issue.feature + " is off: " + issue.reason;
    }
    return text;
}

ReadinessReport evaluate_readiness(const AgentStatus& status) {
    ReadinessReport report;
    std::vector<ReadinessIssue> optional;
    for (const auto& [name, state] : status.feature_states) {
        // Off on purpose (observe = false) is how the operator wants it, not a fault.
        if (state.enabled || state.by_config) continue;
        if (state.essential)
            report.issues.push_back({ReadinessProblem::kEssentialFeatureOff, name, state.reason});
        else
            optional.push_back({ReadinessProblem::kOptionalFeatureOff, name, state.reason});
    }
    const bool essential_off = !report.issues.empty();
    report.issues.insert(report.issues.end(), optional.begin(), optional.end());
    report.state = essential_off      ? Readiness::kNotReady
                   : optional.empty() ? Readiness::kReady
                                      : Readiness::kDegraded;
    return report;
}

Status datapath_reachable(const AgentStatus& status) {
    const auto redirect = status.feature_states.find("redirect");
    if (redirect == status.feature_states.end() || !redirect->second.enabled) return Ok{};
    if (status.bpffs_pin_dir.empty()) return Error{ENOENT, "no bpffs pin directory"};
    struct stat st {};
    if (::stat(status.bpffs_pin_dir.c_str(), &st) != 0)
        return Error::last_errno("pinned datapath " + status.bpffs_pin_dir);
    if (!S_ISDIR(st.st_mode))
        return Error{ENOTDIR, "pinned datapath " + status.bpffs_pin_dir + " is not a directory"};
    return Ok{};
}

}  // namespace meshlane
