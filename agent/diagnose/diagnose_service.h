// Diagnose and verify as one implementation behind every view: the REST routes
// (api/rest/diagnose_routes.cpp) and the gRPC Diagnose/Verify RPCs (api/grpc/) call these and
// only convert the result. Gathers the snapshot (collector.h), the observer's connects and drops
// inside the diagnosis window, and TLS handshake stats, then runs the rules (diagnosis.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "agent/common/result.h"
#include "agent/diagnose/diagnosis.h"
#include "agent/diagnose/verify.h"
#include "agent/model/workload_registry.h"
#include "agent/observe/tls_aggregate.h"

namespace meshlane {
class ObservationSource;
}

namespace meshlane::diagnose {

inline constexpr std::chrono::seconds kDefaultWindow{600};
inline constexpr std::chrono::seconds kMaxWindow{7 * 24 * 3600};

// TLS handshake stats of one workload since `window_start_unix_ms` (agent/observe TLS
// aggregate); nullopt when TLS observation is not running.
using TlsStatsReader =
    std::function<std::optional<TlsObservation>(const WorkloadStatus&, std::int64_t)>;

// The reader over the observer's TLS aggregate (agent/observe/tls_aggregate.h); empty when the
// observer has none. Threshold: config tls_slow_handshake_threshold_ms.
TlsStatsReader tls_stats_reader(const ObservationSource* observations);
// Per destination in the window: handshakes, failures (last reason), slow ones, p99, max.
// pod_addresses: the pod's own addresses, to tell the inbound proxy's delivery to its own app
// (this pod is the TLS server) from its upstream connections to other pods.
TlsObservation summarize_tls(const WorkloadTls& tls, std::chrono::milliseconds threshold,
                             std::int64_t window_start_unix_ms,
                             const std::vector<std::string>& pod_addresses = {});

struct DiagnoseEnvironment {
    WorkloadRegistry* registry = nullptr;
    const ObservationSource* observations = nullptr;  // null: observer not running
    TlsStatsReader tls;                               // empty: no TLS observation
};

struct DiagnosisReport {
    DiagnosisInput input;
    std::vector<Finding> findings;
};

// Error{EINVAL} for a bad name or window (the message names it), Error{ENOENT} when unknown.
Result<DiagnosisReport> diagnose_workload(const DiagnoseEnvironment& environment,
                                          const std::string& name,
                                          std::chrono::seconds window = kDefaultWindow);
Result<VerifyReport> verify_workload(const DiagnoseEnvironment& environment,
                                     const std::string& name);

// Observer data of one workload in the window, with drops in OTHER enrolled workloads that
// match its failed connects (the server side of a client's timeout).
ObservedTraffic observe_workload(const ObservationSource& observations,
                                 const WorkloadStatus& status,
                                 const std::vector<WorkloadStatus>& others,
                                 std::int64_t window_start_unix_ms);

}  // namespace meshlane::diagnose
