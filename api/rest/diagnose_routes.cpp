#include "api/rest/diagnose_routes.h"

#include <boost/json.hpp>

#include "agent/diagnose/collector.h"
#include "agent/diagnose/diagnosis.h"
#include "agent/diagnose/verify.h"
#include "agent/workload/workload_spec.h"

namespace meshlane::rest {

namespace {

Result<WorkloadStatus> workload(const RouteContext& context) {
    auto name = context.params.get("name");
    if (auto valid = validate_name(name); !valid) return valid.error();
    return context.registry.get(name);
}

}  // namespace

Response diagnose_workload(const RouteContext& context) {
    auto status = workload(context);
    if (!status) return error_response(status.error());
    const auto agent = context.registry.status();
    const auto input = diagnose::collect(*status, agent.cgroup2_mount);
    const auto findings = diagnose::diagnose(input);
    return json_response(http::status::ok, diagnose::to_json(input, findings));
}

Response verify_workload(const RouteContext& context) {
    auto status = workload(context);
    if (!status) return error_response(status.error());
    const auto agent = context.registry.status();
    diagnose::VerifyOptions options;
    options.cgroup2_mount = agent.cgroup2_mount;
    options.pin_root = agent.bpffs_pin_dir;
    const std::string name = status->spec.name;
    WorkloadRegistry& registry = context.registry;
    options.read_counters = [&registry, name] {
        auto now = registry.get(name);
        return now ? now->counters : std::map<std::string, std::uint64_t>{};
    };
    const auto report = diagnose::verify(*status, options);
    return json_response(http::status::ok, diagnose::to_json(report));
}

}  // namespace meshlane::rest
