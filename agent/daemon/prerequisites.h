// Kernel prerequisites, probed at agent start before any program is loaded: BTF, cgroup v2,
// bpffs, and every BPF program type, attach type, map type and helper the redirect datapath
// uses. The report says exactly what is missing and which capabilities still work, instead of
// the first verifier error. The probe results become AgentStatus.features.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

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

// Runs every probe redirect_capabilities() refers to.
PrerequisiteReport probe_prerequisites(const ProbeEnvironment& environment);

}  // namespace meshlane
