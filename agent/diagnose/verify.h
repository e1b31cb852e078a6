// Verify: prove interception works for one workload, hop by hop, with evidence.
//   1. programs: every link pinned under <pin_root>/workloads/<name>/ is read back from the kernel
//      (bpf link info) and found in the kernel's effective program list of the pod cgroup (or
//      the netns, for sk_lookup);
//   2. outbound: a short-lived child joins the pod cgroup (cgroup.procs) and netns, drops to an
//      unprivileged uid and connects to a TEST-NET-1 address (192.0.2.1:15002); the kernel's own
//      socket table must show the connection landed on the outbound listener, owned by the proxy
//      uid, with no hop outside the pod; the datapath must then answer the proxy's
//      SO_ORIGINAL_DST (counter orig_dst_answered);
//   3. inbound: the proxy's inbound listener is registered in the datapath.
// Before the proxy listens, the probe is not sent at all ("proxy not listening"); every wait is
// bounded (1 s connect, 2 s SO_ORIGINAL_DST).
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent/workload/workload_registry.h"

namespace meshlane::diagnose {

struct VerifyCheck {
    std::string hop;   // "programs" | "outbound" | "orig_dst" | "inbound"
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
    std::uint16_t probe_port = 15002;
    // Re-reads the workload's counters (for orig_dst_answered after the probe).
    std::function<std::map<std::string, std::uint64_t>()> read_counters;
};

VerifyReport verify(const WorkloadStatus& status, const VerifyOptions& options);
boost::json::object to_json(const VerifyReport& report);

}  // namespace meshlane::diagnose
