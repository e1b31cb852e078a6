// The sk_msg fast path in the kernel (features/fastpath/fastpath_sockmap.bpf.c, docs/fastpath.md):
// loads the object once, its maps pinned under <pin_root>/maps next to the redirect datapath's (it
// shares workload_by_netns), the sk_msg program attached to the SOCKHASH by a link pinned at
// <pin_root>/fastpath/sk_msg, and per workload a sockops link pinned in the workload's pin
// directory (<pin_root>/workloads/<name>/fastpath_sockops), next to redirect_sockops on the same
// cgroup (multi-attach). Restarted agents re-point the pinned links with BPF_LINK_UPDATE.
//
// A workload's pairs are accelerated only while its entry in fastpath_workload_kinds is non-zero;
// the agent writes 0 for every workload when the kernel self-test failed.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "features/fastpath/fastpath_abi.h"

namespace meshlane {

struct FastpathOptions {
    std::string pin_root;  // <bpffs>/<pin_dir>, the same as the redirect datapath's
    std::uint32_t max_workloads = MESHLANE_MAX_WORKLOADS_DEFAULT;
    // enum meshlane_fastpath_policy: which sockets may join the SOCKHASH (from the kernel
    // self-test: PROXY_SOCKETS_ONLY where blocking readers can get EAGAIN).
    std::uint32_t reader_policy = MESHLANE_FASTPATH_POLICY_ANY_SOCKET;
};

using FastpathCounters = std::array<std::uint64_t, MESHLANE_FP_COUNTER_MAX>;
const char* fastpath_counter_name(unsigned counter);

// The fast path's pins inside a workload pin directory and under the pin root.
inline constexpr const char* kFastpathSockopsPin = "fastpath_sockops";
inline constexpr const char* kFastpathDirName = "fastpath";
// The PROG_ARRAY fastpath_msg tail-calls after a redirect, pinned under <pin_root>/maps; the TLS
// observer puts observe_tls_msg in it (agent/observe/tls_observer.cpp).
inline constexpr const char* kFastpathMsgObserversPin = "fastpath_msg_observers";

class FastpathDatapath {
  public:
    // Must run after RedirectDatapath::load (it creates workload_by_netns).
    static Result<std::unique_ptr<FastpathDatapath>> load(const FastpathOptions& options);
    ~FastpathDatapath();
    FastpathDatapath(const FastpathDatapath&) = delete;
    FastpathDatapath& operator=(const FastpathDatapath&) = delete;

    // Creates (or re-points) <workload_pin_dir>/fastpath_sockops on the cgroup.
    Status attach(const std::string& workload_pin_dir, int cgroup_fd,
                  const std::string& cgroup_path);
    // Missing pin: not an error.
    Status detach(const std::string& workload_pin_dir);
    // enum meshlane_fastpath_kind bits; 0 switches the workload's new connections off.
    Status set_kinds(std::uint32_t workload_id, std::uint32_t kinds);
    std::uint32_t kinds(std::uint32_t workload_id) const;
    // The workload's IPv4 pod addresses (network order) for proxy <-> proxy: replaces what was
    // written for it before. Connections from other pods' proxies to these addresses may be
    // accelerated.
    Status set_pod_addresses(std::uint32_t workload_id, const std::vector<std::uint32_t>& ipv4);
    // Kinds 0, pod addresses removed and counters zeroed.
    Status clear_workload(std::uint32_t workload_id);
    FastpathCounters counters(std::uint32_t workload_id) const;
    std::uint32_t reader_policy() const { return options_.reader_policy; }

  private:
    struct Impl;
    explicit FastpathDatapath(FastpathOptions options);
    FastpathOptions options_;
    std::unique_ptr<Impl> impl_;
};

}  // namespace meshlane
