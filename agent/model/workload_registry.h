// The agent's view of enrolled workloads, as the API and CLI see it. Implemented by
// WorkloadManager (agent/workload/workload_manager.*) on top of the BPF datapath; the API layer
// depends only on this interface so its handlers unit-test with a fake.
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "agent/model/workload_spec.h"

namespace meshlane {

struct AttachedProgram {
    std::string program;    // e.g. "redirect_connect4"
    std::string attach_to;  // cgroup or netns path it is attached to
    std::string pin;        // bpffs path of the link pin
    std::uint32_t link_id = 0;
    std::uint32_t prog_id = 0;
};

struct WorkloadStatus {
    WorkloadSpec spec;
    std::uint32_t workload_id = 0;
    std::string cgroup_resolved;  // absolute path on the cgroup2 mount
    std::uint64_t cgroup_id = 0;
    std::uint64_t netns_cookie = 0;
    std::uint64_t netns_inode = 0;
    std::vector<std::string> pod_addresses;  // addresses found in the netns
    std::vector<AttachedProgram> programs;
    bool inbound_listener_v4 = false;  // the proxy's inbound listener is registered
    bool inbound_listener_v6 = false;
    std::map<std::string, std::uint64_t> counters;  // meshlane_redirect_counter names
    // sk_msg fast path (docs/fastpath.md): active = asked for (spec.fast_path), allowed node-wide
    // by the self-test, and written to the kernel; counters by meshlane_fastpath_counter name.
    bool fast_path_active = false;
    std::map<std::string, std::uint64_t> fast_path_counters;
    // Dated by the datapath itself (unix ns; 0: never): inbound connections refused for want of
    // a proxy listener, and the proxy's inbound listener registered by sockops on listen().
    std::int64_t inbound_refused_first_unix_ns = 0;
    std::int64_t inbound_refused_last_unix_ns = 0;
    std::int64_t listener_registered_first_unix_ns = 0;
    std::int64_t listener_registered_last_unix_ns = 0;
};

enum class EnrollOutcome { kCreated, kUnchanged };

struct EnrollResult {
    EnrollOutcome outcome;
    WorkloadStatus status;
};

// A part of the agent (redirect, observe_connect, ...), on or off with the reason: the missing
// kernel features, or the verifier's rejection with the tail of its log. Decided at start
// (agent/daemon/prerequisites.h).
struct FeatureState {
    bool enabled = false;
    bool essential = false;  // without it the agent refuses enrolment (the redirect datapath)
    std::string reason;      // why it is off; empty when on
    // Off because the configuration says so (observe = false): not a fault, so neither degraded
    // nor not ready (agent/model/readiness.h).
    bool by_config = false;
};

// The fast path's hops on this node: whether each may be accelerated, and why not.
enum class FastPathHop { kAppProxyOutbound, kAppProxyInbound, kProxyProxy };
enum class FastPathOffReason {
    kNone,
    kUnavailable,  // not loaded, or the kernel self-test failed: fast_path_reason says which
    // blocking recv() on an accelerated socket gets EAGAIN on this kernel (self-test), and an
    // app's socket may be read blocking: only proxy sockets are accelerated
    kBlockingReaderEagain,
};
struct FastPathHopState {
    FastPathHop hop = FastPathHop::kAppProxyOutbound;
    bool accelerated = false;  // for workloads that enable its kind
    FastPathOffReason reason = FastPathOffReason::kNone;
};
const char* fast_path_hop_name(FastPathHop hop);
const char* fast_path_off_reason_name(FastPathOffReason reason);

struct AgentStatus {
    std::string version;
    std::string kernel;
    std::string bpffs_pin_dir;
    std::string cgroup2_mount;
    std::string state_dir;
    std::size_t workloads = 0;
    std::uint32_t max_workloads = 0;
    std::map<std::string, bool> features;                // kernel features probed at start
    std::map<std::string, FeatureState> feature_states;  // the agent's parts, on or off
    // Node-wide sk_msg fast path: loaded and the kernel self-test passed; reason either way.
    bool fast_path_available = false;
    std::string fast_path_reason;
    bool fast_path_blocking_reader_hazard = false;  // found by the self-test on this kernel
    std::vector<FastPathHopState> fast_path_hops;   // one per FastPathHop
};

class WorkloadRegistry {
  public:
    virtual ~WorkloadRegistry() = default;
    // Idempotent: the same spec again -> kUnchanged. The same name with other settings, or
    // another workload on the same cgroup or netns -> Error{EEXIST, "... names the fields"}.
    // On any failure nothing stays attached or pinned.
    virtual Result<EnrollResult> enroll(const WorkloadSpec& spec) = 0;
    // Idempotent: returns false when the name was not enrolled.
    virtual Result<bool> unenroll(const std::string& name) = 0;
    virtual std::vector<WorkloadStatus> list() = 0;
    // Error{ENOENT} when unknown.
    virtual Result<WorkloadStatus> get(const std::string& name) = 0;
    virtual AgentStatus status() = 0;
};

boost::json::object to_json(const WorkloadStatus& status);
boost::json::object to_json(const AgentStatus& status);

}  // namespace meshlane
