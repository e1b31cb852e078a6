// The TLS part of the observability datapath, driven by Observer's one reader thread (no thread
// of its own): loads bpf/observe_tls_wire (cgroup_skb egress+ingress, attached per enrolled
// pod cgroup as workloads come and go) and bpf/observe_tls_libssl (uprobes on the system
// libssl.so.3, all processes, filtered in BPF by the enrolled pods' network namespaces).
// Either part may be unavailable; that is reported, the rest keeps working.
#pragma once

#include <bpf/libbpf.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "agent/observe/tls_aggregate.h"

namespace meshlane {

struct ObservedCgroup {
    std::uint64_t netns_cookie = 0;
    std::string cgroup_path;  // absolute path on the cgroup2 mount
};

struct TlsObserverOptions {
    std::string map_dir;  // <pin_root>/maps: the shared workload_by_netns
    std::uint32_t max_workloads = MESHLANE_MAX_WORKLOADS_DEFAULT;
    bool wire = true;
    bool libssl = true;
    // Empty: the first of the usual multiarch paths that exists.
    std::string libssl_path;
};

class TlsObserver {
  public:
    // Never fails as a whole: what could not be loaded is in problems().
    static std::unique_ptr<TlsObserver> start(const TlsObserverOptions& options);
    ~TlsObserver();
    TlsObserver(const TlsObserver&) = delete;
    TlsObserver& operator=(const TlsObserver&) = delete;

    bool wire_tracking() const;
    bool libssl_tracking() const;
    const std::vector<std::string>& problems() const;

    // Adds the tls_events ring buffers to the reader's ring (created when null); events are
    // copied into pending() by the callbacks.
    Status add_to_ring(ring_buffer*& ring);
    std::vector<tls_handshake_event>& pending();

    // Attaches the wire programs to new pods' cgroups and detaches them from gone ones.
    // Returns problems met this round (also kept, bounded, in problems()).
    void reconcile(const std::vector<ObservedCgroup>& cgroups);
    std::size_t attached_cgroups() const;

    // Kernel totals for the given workloads (cookie -> workload id), and loss counters by name
    // ("tls_wire.ringbuf_full").
    std::vector<TlsWorkloadTotals> read_totals(
        const std::map<std::uint64_t, std::uint32_t>& workloads) const;
    std::map<std::string, std::uint64_t> losses() const;
    std::vector<int> own_map_fds() const;
    // The loaded objects by name ("observe_tls_wire", ...), for map_fill
    // (agent/observe/map_fill.h).
    std::vector<std::pair<std::string, const bpf_object*>> objects() const;

  private:
    struct Impl;
    explicit TlsObserver(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace meshlane
