#include "agent/daemon/degraded_registry.h"

#include <sys/utsname.h>

#include <boost/json.hpp>
#include <fstream>
#include <sstream>

namespace meshlane {

namespace json = boost::json;

namespace {

// The records the last agent with a datapath persisted (WorkloadManager's state file).
std::vector<WorkloadStatus> read_records(const std::string& state_dir) {
    std::vector<WorkloadStatus> out;
    std::ifstream in(state_dir + "/workloads.json");
    if (!in) return out;
    std::stringstream text;
    text << in.rdbuf();
    boost::system::error_code ec;
    auto root = json::parse(text.str(), ec);
    if (ec || !root.is_object()) return out;
    const auto* workloads = root.get_object().if_contains("workloads");
    if (workloads == nullptr || !workloads->is_array()) return out;
    for (const auto& item : workloads->get_array()) {
        if (!item.is_object() || !item.get_object().contains("spec")) continue;
        auto spec = workload_spec_from_json(item.get_object().at("spec"));
        if (!spec) continue;
        WorkloadStatus status;
        status.spec = *spec;
        const auto& o = item.get_object();
        if (const auto* v = o.if_contains("workload_id"); v && v->is_int64())
            status.workload_id = static_cast<std::uint32_t>(v->get_int64());
        if (const auto* v = o.if_contains("cgroup_resolved"); v && v->is_string())
            status.cgroup_resolved = std::string(v->get_string());
        out.push_back(std::move(status));
    }
    return out;
}

}  // namespace

DegradedRegistry::DegradedRegistry(DegradedRegistryOptions options)
    : options_(std::move(options)), recorded_(read_records(options_.state_dir)) {}

Error DegradedRegistry::refused(const std::string& what) const {
    return Error{ENOTSUP, what + " refused: the redirect datapath is disabled (" + options_.reason +
                              "); the agent serves status and diagnostics only — see `meshlane "
                              "status` → feature_states"};
}

Result<EnrollResult> DegradedRegistry::enroll(const WorkloadSpec& spec) {
    if (auto valid = validate(spec); !valid) return valid.error();
    return refused("enroll " + spec.name);
}

Result<bool> DegradedRegistry::unenroll(const std::string& name) {
    return refused("unenroll " + name);
}

std::vector<WorkloadStatus> DegradedRegistry::list() { return recorded_; }

Result<WorkloadStatus> DegradedRegistry::get(const std::string& name) {
    for (const auto& status : recorded_)
        if (status.spec.name == name) return status;
    return Error{ENOENT, "workload " + name + " is not enrolled"};
}

AgentStatus DegradedRegistry::status() {
    AgentStatus s;
    s.version = MESHLANE_VERSION;
    utsname uts{};
    if (::uname(&uts) == 0) s.kernel = std::string(uts.release);
    s.bpffs_pin_dir = options_.pin_root;
    s.cgroup2_mount = options_.cgroup2_mount;
    s.state_dir = options_.state_dir;
    s.workloads = recorded_.size();
    s.max_workloads = options_.max_workloads;
    s.features = options_.features;
    if (options_.feature_states != nullptr) s.feature_states = *options_.feature_states;
    s.fast_path_reason = "the redirect datapath is disabled";
    return s;
}

}  // namespace meshlane
