// Verify: prove interception works for one workload, hop by hop, with evidence.
//   1. programs: every link pinned under <pin_root>/workloads/<name>/ is read back from the kernel
//      (bpf link info) and found in the kernel's effective program list of the pod cgroup (or
//      the netns, for sk_lookup);
//   2. outbound: a short-lived child joins the pod cgroup (cgroup.procs) and netns, drops to an
//      unprivileged uid and connects to a TEST-NET-1 address (192.0.2.1:15002); the kernel's own
//      socket table must show the connection landed on the outbound listener, owned by the proxy
//      uid, with no hop outside the pod; the datapath must then answer the proxy's
//      SO_ORIGINAL_DST (counter orig_dst_answered);
//   3. inbound: the pod's attached sk_lookup program, run by the kernel inside the pod netns
//      (BPF_PROG_TEST_RUN) on a SYN from TEST-NET-1 to the pod's address and a captured port,
//      selects the proxy's inbound listener (same socket cookie as the listener the proxy holds);
//      sk_lookup does no NAT, so the accepted socket keeps the original local address. No packet
//      is sent: a real one from outside would need an interface or route the pod does not have;
//   4. no loop: a child as the proxy's uid/gid, its socket bound to "lo" (so nothing can leave the
//      pod), connects to the TEST-NET address and must NOT be redirected (stays in SYN_SENT to
//      it; counter outbound_pass_proxy_owner grows);
//   5. fast path: whether the outbound probe's two sockets are in the fast path's SOCKHASH
//      (pinned maps of features/fastpath/fastpath_sockmap.bpf.c), or "fast path off for this
//      workload".
// Before the proxy listens, the outbound probe is not sent at all ("proxy not listening"); every
// wait is bounded (1 s connect, 2 s SO_ORIGINAL_DST, 0.3 s for the no-loop probe).
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent/model/workload_registry.h"

namespace meshlane::diagnose {

struct VerifyCheck {
    std::string hop;   // "programs" | "outbound" | "orig_dst" | "inbound" | "no_loop" | "fast_path"
    std::string name;  // what was checked
    bool passed = false;
    std::vector<std::string> evidence;
};

struct VerifyReport {
    std::string workload;
    bool passed = false;
    std::vector<VerifyCheck> checks;
};

struct VerifyOptions {
    std::string cgroup2_mount;
    std::string pin_root;
    std::string probe_address = "192.0.2.1";  // TEST-NET-1: never routed
    // The outbound probe's destination: what the proxy dials upstream when it accepts the probe.
    // Limited broadcast: a TCP connect to it fails in the kernel (ENETUNREACH) before any packet,
    // so neither the probe (were it not redirected) nor the proxy's upstream connect can leave
    // the pod, even through the default route every real pod has.
    std::string outbound_probe_address = "255.255.255.255";
    std::uint16_t probe_port = 15002;
    // Re-reads the workload's counters (for orig_dst_answered after the probe).
    std::function<std::map<std::string, std::uint64_t>()> read_counters;
};

VerifyReport verify(const WorkloadStatus& status, const VerifyOptions& options);
boost::json::object to_json(const VerifyReport& report);

}  // namespace meshlane::diagnose
