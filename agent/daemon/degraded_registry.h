// The agent's registry when the redirect datapath is off (a kernel feature missing, or the
// verifier rejecting redirect_outbound): the agent keeps serving status and diagnostics, lists
// the workloads its state file records (their pinned links, if any, keep intercepting: nothing is
// detached), and refuses enrol and unenrol with a clear error (ENOTSUP: HTTP 503, gRPC
// UNAVAILABLE) instead of half-doing them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "agent/model/workload_registry.h"

namespace meshlane {

struct DegradedRegistryOptions {
    std::string state_dir;
    std::string cgroup2_mount;
    std::string pin_root;
    std::uint32_t max_workloads = 0;
    std::map<std::string, bool> features;
    const std::map<std::string, FeatureState>* feature_states = nullptr;
    std::string reason;  // why the redirect datapath is off
};

class DegradedRegistry : public WorkloadRegistry {
  public:
    explicit DegradedRegistry(DegradedRegistryOptions options);

    Result<EnrollResult> enroll(const WorkloadSpec& spec) override;
    Result<bool> unenroll(const std::string& name) override;
    std::vector<WorkloadStatus> list() override;
    Result<WorkloadStatus> get(const std::string& name) override;
    AgentStatus status() override;

  private:
    Error refused(const std::string& what) const;
    DegradedRegistryOptions options_;
    std::vector<WorkloadStatus> recorded_;  // from <state_dir>/workloads.json, read once
};

}  // namespace meshlane
