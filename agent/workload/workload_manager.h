// WorkloadRegistry on top of the redirect datapath. Owns the per-workload records and their
// persistence (<state_dir>/workloads.json, written atomically); the kernel state itself lives
// in pinned links and maps, so a restarted agent re-adopts instead of re-creating.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "agent/events/event_bus.h"
#include "agent/loader/redirect_datapath.h"
#include "agent/model/workload_registry.h"
#include "features/fastpath/fastpath_datapath.h"

namespace meshlane {

struct ManagerOptions {
    std::string state_dir;
    std::string cgroup2_mount;
    std::map<std::string, bool> features;  // reported in status
    // The agent's parts, on or off (reported in status); owned by the agent, filled before the
    // API serves. May be null.
    const std::map<std::string, FeatureState>* feature_states = nullptr;
    // Receives workload_enrolled / workload_unenrolled / workload_removed; may be null.
    events::EventBus* events = nullptr;
    // sk_msg fast path (docs/fastpath.md); null when it could not be loaded. Workloads with
    // spec.fast_path get it only when fast_path_available (the kernel self-test passed).
    FastpathDatapath* fastpath = nullptr;
    bool fast_path_available = false;
    std::string fast_path_reason;
    // The self-test found EAGAIN for blocking readers: the datapath accelerates proxy sockets
    // only (MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY), so no app <-> proxy hop.
    bool fast_path_blocking_reader_hazard = false;
    // enum meshlane_fastpath_policy the datapath was loaded with.
    std::uint32_t fast_path_reader_policy = 0;
    // Called after every enrol/unenrol, outside the manager's lock, before the call returns:
    // the agent uses it to bring per-pod attachments owned by other parts (the TLS wire
    // observer's cgroup_skb programs) in line, so unenrol leaves nothing attached. May be empty.
    std::function<void()> after_change;
};

class WorkloadManager : public WorkloadRegistry {
  public:
    WorkloadManager(RedirectDatapath& datapath, ManagerOptions options);

    // At start: re-adopt every persisted workload (links re-pointed to this agent's programs,
    // rules rewritten), clean up the ones whose netns or cgroup is gone, and remove kernel
    // state that no record explains (a crash mid-enrol).
    Status restore();
    // Periodic: drop workloads whose netns or cgroup disappeared, refresh pod addresses,
    // adopt a proxy listener that is not registered yet.
    void reconcile();

    Result<EnrollResult> enroll(const WorkloadSpec& spec) override;
    Result<bool> unenroll(const std::string& name) override;
    std::vector<WorkloadStatus> list() override;
    Result<WorkloadStatus> get(const std::string& name) override;
    AgentStatus status() override;

  private:
    Result<EnrollResult> enroll_now(const WorkloadSpec& spec);
    Result<bool> unenroll_now(const std::string& name);

    struct Record {
        WorkloadSpec spec;
        std::uint32_t workload_id = 0;
        std::string cgroup_resolved;
        std::uint64_t cgroup_id = 0;
        std::uint64_t netns_cookie = 0;
        std::uint64_t netns_inode = 0;
        std::vector<PodAddress> addresses;
    };

    Status persist_locked();
    Result<std::map<std::string, Record>> load_state() const;
    Result<std::uint32_t> free_id_locked() const;
    Status bring_up_locked(const Record& record, const CgroupHandle& cgroup,
                           const NetnsHandle& netns);
    Status tear_down_locked(const Record& record);
    Status fast_path_up_locked(const Record& record, const CgroupHandle& cgroup);
    Status fast_path_down_locked(const Record& record);
    Status fast_path_addresses_locked(const Record& record);
    void adopt_listeners_locked(const Record& record);
    bool still_present(const Record& record) const;
    WorkloadStatus status_of_locked(const Record& record) const;
    static workload_config config_of(const Record& record);
    void publish(const char* type, const std::string& name,
                 std::map<std::string, std::string> details = {}) const;

    RedirectDatapath& datapath_;
    ManagerOptions options_;
    std::mutex mutex_;
    std::map<std::string, Record> records_;
};

}  // namespace meshlane
