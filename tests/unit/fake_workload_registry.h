// An in-memory WorkloadRegistry for API tests: same idempotency and conflict rules as the real
// one, plus hooks to make calls fail with a chosen errno or throw.
#pragma once

#include <map>
#include <stdexcept>
#include <string>

#include "agent/model/workload_registry.h"

namespace meshlane::testing {

class FakeWorkloadRegistry : public WorkloadRegistry {
  public:
    int fail_with = 0;  // when nonzero, enroll/unenroll fail with this errno
    bool throw_on_list = false;
    std::map<std::string, FeatureState> feature_states;  // reported by status()
    std::string bpffs_pin_dir = "/";  // exists: the datapath is reachable (readiness.h)
    int enroll_calls = 0;

    Result<EnrollResult> enroll(const WorkloadSpec& spec) override {
        ++enroll_calls;
        if (fail_with != 0) return Error::from_errno(fail_with, "attach connect4");
        if (auto it = workloads_.find(spec.name); it != workloads_.end()) {
            if (it->second.spec == spec) return EnrollResult{EnrollOutcome::kUnchanged, it->second};
            std::string fields;
            for (const auto& f : differing_fields(it->second.spec, spec)) fields += " " + f;
            return Error{EEXIST, spec.name + " is already enrolled with other settings:" + fields};
        }
        WorkloadStatus status;
        status.spec = spec;
        status.workload_id = next_id_++;
        status.cgroup_resolved = spec.cgroup_path;
        status.counters = {{"outbound_redirected", 7}, {"inbound_steered", 3}};
        status.inbound_listener_v4 = true;
        status.programs.push_back({"redirect_connect4", spec.cgroup_path, "/sys/fs/bpf/x", 1, 2});
        workloads_[spec.name] = status;
        return EnrollResult{EnrollOutcome::kCreated, status};
    }

    Result<bool> unenroll(const std::string& name) override {
        if (fail_with != 0) return Error::from_errno(fail_with, "detach");
        return workloads_.erase(name) > 0;
    }

    std::vector<WorkloadStatus> list() override {
        if (throw_on_list) throw std::runtime_error("boom");
        std::vector<WorkloadStatus> all;
        for (const auto& [name, status] : workloads_) all.push_back(status);
        return all;
    }

    Result<WorkloadStatus> get(const std::string& name) override {
        auto it = workloads_.find(name);
        if (it == workloads_.end()) return Error{ENOENT, "workload " + name + " is not enrolled"};
        return it->second;
    }

    AgentStatus status() override {
        AgentStatus status;
        status.version = "test";
        status.kernel = "6.1.0";
        status.workloads = workloads_.size();
        status.max_workloads = 4096;
        status.features = {{"sk_lookup", true}};
        status.feature_states = feature_states;
        status.bpffs_pin_dir = bpffs_pin_dir;
        return status;
    }

  private:
    std::map<std::string, WorkloadStatus> workloads_;
    std::uint32_t next_id_ = 0;
};

}  // namespace meshlane::testing
