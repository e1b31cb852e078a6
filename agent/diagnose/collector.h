// Builds a DiagnosisInput for one workload from the kernel and /proc: the processes in the pod's
// netns and cgroup (uid/gid, start time, socket fds), the LISTEN sockets seen from inside the
// netns, the nat tables inside the netns (iptables-save run from a helper thread that joined the
// netns), and the cgroup connect4/connect6 programs in effect (BPF_F_QUERY_EFFECTIVE). Nothing
// here changes state; a check that cannot run is reported in collection_errors.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent/common/in_netns.h"
#include "agent/common/result.h"
#include "agent/diagnose/diagnosis.h"
#include "agent/model/workload_registry.h"

namespace meshlane::diagnose {

DiagnosisInput collect(const WorkloadStatus& status, const std::string& cgroup2_mount);

// Pieces the verifier re-uses.
std::vector<ProcessInfo> scan_processes(std::uint64_t netns_inode,
                                        const std::string& pod_cgroup_rel);
// socket inode -> pids holding it, for the given pids.
std::map<std::uint64_t, std::vector<pid_t>> socket_holders(
    const std::vector<ProcessInfo>& processes);
// The calling thread's netns' LISTEN sockets (sock_diag), pids not filled in; call inside
// in_netns() (agent/common/in_netns.h).
Result<std::vector<ListenSocket>> read_listeners_here();
// `cgroup_resolved` relative to the cgroup2 mount ("/ml-x/b").
std::string cgroup_relative(const std::string& cgroup_resolved, const std::string& cgroup2_mount);

}  // namespace meshlane::diagnose
