// The redirect datapath in the kernel: loads redirect_outbound once (its maps pinned under
// <pin_root>/maps and re-used across agent restarts and upgrades), and per workload attaches the
// cgroup programs and a redirect_inbound sk_lookup instance as pinned bpf_links under
// <pin_root>/workloads/<name>/. Links keep the programs running while the agent is down.
//
// Lifecycle phases, in order: load() -> write_rules() -> attach() -> activate() ... and back:
// deactivate() -> detach() -> clear_workload(). Each step undoes itself on failure.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "agent/common/unique_fd.h"
#include "agent/model/pod_identity.h"
#include "agent/model/workload_registry.h"
#include "agent/model/workload_spec.h"
#include "meshlane/redirect_abi.h"

struct bpf_object_open_opts;

namespace meshlane {

struct DatapathOptions {
    std::string pin_root;  // <bpffs>/<pin_dir>
    std::uint32_t max_workloads = MESHLANE_MAX_WORKLOADS_DEFAULT;
};

// Where one workload's programs go.
struct AttachTarget {
    std::string name;
    std::uint32_t workload_id = 0;
    std::uint64_t netns_cookie = 0;
    int cgroup_fd = -1;
    std::string cgroup_path;
    int netns_fd = -1;
    std::string netns_path;
    bool dns_capture = false;  // attach the DNS capture programs (sendmsg/recvmsg)
};

using RedirectCounters = std::array<std::uint64_t, MESHLANE_REDIRECT_COUNTER_MAX>;

// The datapath's own dates of startup events (enum meshlane_redirect_time), CLOCK_MONOTONIC ns
// as the kernel stamped them; 0: never happened.
struct RedirectTimes {
    std::uint64_t inbound_refused_first = 0;
    std::uint64_t inbound_refused_last = 0;
    std::uint64_t listener_registered_first = 0;
    std::uint64_t listener_registered_last = 0;
};
const char* redirect_counter_name(unsigned counter);

class RedirectDatapath {
  public:
    static Result<std::unique_ptr<RedirectDatapath>> load(const DatapathOptions& options);
    ~RedirectDatapath();
    RedirectDatapath(const RedirectDatapath&) = delete;
    RedirectDatapath& operator=(const RedirectDatapath&) = delete;

    const std::string& pin_root() const { return options_.pin_root; }
    std::uint32_t max_workloads() const { return options_.max_workloads; }
    std::string workload_pin_dir(const std::string& name) const;

    // Port and CIDR rules plus the pod's own addresses, keyed by workload id. Replaces any
    // previous rules of that id.
    Status write_rules(std::uint32_t workload_id, const WorkloadSpec& spec,
                       const std::vector<PodAddress>& pod_addresses);
    // Replaces only the pod-address entries (addresses can change while a pod runs).
    Status write_pod_addresses(std::uint32_t workload_id,
                               const std::vector<PodAddress>& pod_addresses);
    // Creates (or, when the pin exists, re-points to this agent's programs) every link.
    Status attach(const AttachTarget& target);
    // Ok when the DNS capture programs loaded; otherwise why not.
    Status dns_capture_available() const;
    // Turned off by the agent (a missing kernel feature, MESHLANE_TEST_DISABLE_FEATURE).
    void disable_dns_capture(const std::string& reason);
    // Publishes the config: from here on the programs act on the workload.
    Status activate(std::uint64_t netns_cookie, const workload_config& config);
    Status deactivate(std::uint64_t netns_cookie);
    // Force-detaches and unpins every link of the workload; missing pins are not an error.
    Status detach(const std::string& name);
    // Rules, listener slots and counters of the id.
    Status clear_workload(std::uint32_t workload_id);

    // Puts an already-listening socket (e.g. the proxy started before enrolment) in the
    // inbound listener slots of the families it serves.
    Status register_inbound_listener(std::uint32_t workload_id, int socket_fd);
    bool inbound_listener_registered(std::uint32_t workload_id, unsigned slot) const;
    RedirectCounters counters(std::uint32_t workload_id) const;
    RedirectTimes times(std::uint32_t workload_id) const;
    std::vector<AttachedProgram> attached_programs(const std::string& name) const;
    // Names of the workloads that have a pin directory.
    std::vector<std::string> pinned_workloads() const;
    // Netns cookies present in workload_by_netns.
    std::vector<std::uint64_t> active_netns_cookies() const;

  private:
    struct Impl;
    Status load_dns_capture(const bpf_object_open_opts* open_opts);
    Status attach_dns_capture(const AttachTarget& target, const std::string& dir,
                              std::vector<std::string>& created);
    explicit RedirectDatapath(DatapathOptions options);
    DatapathOptions options_;
    std::unique_ptr<Impl> impl_;
};

}  // namespace meshlane
