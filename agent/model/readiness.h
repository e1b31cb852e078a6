// Whether the agent is ready, degraded or not ready, from its status alone (pure; unit-tested).
// One answer for every view that reports health: GET /readyz and /v1/readyz, the gRPC health
// service, `meshlane status`'s exit code and the DaemonSet probes. docs/observability.md
// ("Health") explains each state.
//   ready     every part of the agent runs, or is off because the configuration says so;
//   degraded  interception works, but an optional part (observation, fast path) is off for a
//             reason other than the configuration (missing kernel feature, verifier rejection);
//   not ready an essential part (the redirect datapath) is off: interception of new workloads is
//             disabled, recorded ones are not re-adopted.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "agent/common/result.h"
#include "agent/model/workload_registry.h"

namespace meshlane {

enum class Readiness { kReady, kDegraded, kNotReady };
std::string_view to_string(Readiness readiness);

enum class ReadinessProblem {
    kEssentialFeatureOff,  // interception disabled: not ready
    kOptionalFeatureOff,   // degraded
};
std::string_view to_string(ReadinessProblem problem);

struct ReadinessIssue {
    ReadinessProblem problem;
    std::string feature;  // "redirect", "observe_drops", ...
    std::string reason;   // the feature's reason, as in GET /v1/status feature_states
};

struct ReadinessReport {
    Readiness state = Readiness::kReady;
    std::vector<ReadinessIssue> issues;  // essential ones first
    // Ready or degraded: interception works, so a probe may route to / count on this agent.
    bool serving() const { return state != Readiness::kNotReady; }
    // "redirect is off: <reason>; observe_drops is off: <reason>"; empty when ready.
    std::string summary() const;
};

ReadinessReport evaluate_readiness(const AgentStatus& status);

// Liveness beyond "the process answers": the pinned datapath directory (GET /v1/status
// bpffs_pin_dir) is still there when the redirect datapath runs. Someone removing it (a manual
// `meshlane uninstall`, a bpffs unmounted under the agent) leaves an agent that can no longer
// manage its pins: a restart re-creates them. With the redirect datapath off there is nothing to
// reach, and a restart would not bring missing kernel features back: alive.
Status datapath_reachable(const AgentStatus& status);

}  // namespace meshlane
