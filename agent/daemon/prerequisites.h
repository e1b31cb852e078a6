// Kernel prerequisites, probed at agent start before any program is loaded: BTF, cgroup v2,
// bpffs, and every BPF program type, attach type, map type and helper the redirect datapath
// uses. The report says exactly what is missing and which capabilities still work, instead of
// the first verifier error. The probe results become AgentStatus.features.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/model/workload_registry.h"

namespace meshlane {

struct ProbeResult {
    std::string name;  // feature key, e.g. "prog_type.sk_lookup", "helper.sk_lookup.sk_assign"
    bool available = false;
    std::string detail;  // why not, when missing
};

// What meshlane does with the features; a capability works when all its features are present.
struct Capability {
    std::string name;                // "outbound capture"
    std::vector<std::string> needs;  // feature keys
};

struct PrerequisiteReport {
    std::vector<ProbeResult> probes;

    bool all_available() const;
    std::vector<const ProbeResult*> missing() const;
    std::map<std::string, bool> features() const;  // feature key -> available
    // Capabilities whose needs are all available / not.
    std::vector<std::string> working_capabilities() const;
    std::vector<std::string> broken_capabilities() const;
    // Multi-line text: one line per missing feature with its detail, then what still works.
    std::string describe() const;
};

// Every capability of the redirect datapath and the features each one needs.
const std::vector<Capability>& redirect_capabilities();

// The probing primitives, replaceable in tests.
struct ProbeEnvironment {
    std::function<ProbeResult()> btf_probe;
    std::function<ProbeResult()> cgroup2_probe;
    std::function<ProbeResult()> bpffs_probe;
    std::function<ProbeResult(const std::string& key)> bpf_probe;  // prog_type.*, attach.*, ...
};

ProbeEnvironment kernel_probe_environment(const std::string& bpffs_wanted);

// Runs every probe redirect_capabilities() and agent_features() refer to.
PrerequisiteReport probe_prerequisites(const ProbeEnvironment& environment);

// ---- degraded start ------------------------------------------------------------------------
// The agent's parts. Each starts when its kernel features are present (and, later, when its
// object loads); the others keep working without it. Only the redirect datapath is essential:
// without it the agent still serves status and diagnostics but refuses enrolment.
inline constexpr const char* kFeatureRedirect = "redirect";
inline constexpr const char* kFeatureObserveConnect = "observe_connect";
inline constexpr const char* kFeatureObserveDrops = "observe_drops";
inline constexpr const char* kFeatureFastPath = "fast_path";
inline constexpr const char* kFeatureDnsCapture = "dns_capture";

struct FeatureDefinition {
    std::string name;
    bool essential = false;
    std::string what;                // "connect latency and failures (tracepoints)"
    std::vector<std::string> needs;  // probe keys
};
const std::vector<FeatureDefinition>& agent_features();

// Names listed in MESHLANE_TEST_DISABLE_FEATURE (comma-separated), for tests: each one's probe
// fails as a verifier rejection would. Unknown names are returned in `unknown`.
std::set<std::string> features_forced_off(std::vector<std::string>* unknown = nullptr);

// A forced probe failure: a deliberately invalid program for the feature, so the reason carries a
// real verifier log tail.
std::string forced_probe_failure(const std::string& feature);

// Each feature on when every probe it needs succeeded and it is not forced off; the reason names
// the missing probes and their details.
std::map<std::string, FeatureState> evaluate_features(
    const PrerequisiteReport& report, const std::set<std::string>& forced_off,
    const std::function<std::string(const std::string&)>& forced_reason = forced_probe_failure);

// "redirect: on", "observe_drops: OFF (reason)", one line each.
std::string describe_features(const std::map<std::string, FeatureState>& states);

}  // namespace meshlane
