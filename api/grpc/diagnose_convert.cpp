#include "api/grpc/diagnose_convert.h"

namespace meshlane::grpc_api {

namespace {

v1::Severity severity_of(diagnose::Severity severity) {
    switch (severity) {
        case diagnose::Severity::kCritical:
            return v1::SEVERITY_CRITICAL;
        case diagnose::Severity::kWarning:
            return v1::SEVERITY_WARNING;
        case diagnose::Severity::kInfo:
            return v1::SEVERITY_INFO;
    }
    return v1::SEVERITY_UNSPECIFIED;
}

}  // namespace

void to_proto(const diagnose::DiagnosisReport& report, v1::DiagnoseResponse& out) {
    const auto& input = report.input;
    out.set_workload(input.workload);
    out.set_collected_at_unix_ms(input.collected_at_unix_ms);
    out.set_window_start_unix_ms(input.window_start_unix_ms);
    std::uint32_t critical = 0;
    for (const auto& f : report.findings) {
        auto& finding = *out.add_findings();
        finding.set_severity(severity_of(f.severity));
        finding.set_code(f.code);
        finding.set_cause(f.cause);
        for (const auto& e : f.evidence) finding.add_evidence(e);
        finding.set_fix(f.fix);
        for (const auto& [key, value] : f.data) (*finding.mutable_data())[key] = value;
        if (f.severity == diagnose::Severity::kCritical) ++critical;
    }
    out.set_critical(critical);
    auto& checked = *out.mutable_checked();
    checked.set_processes(static_cast<std::uint32_t>(input.processes.size()));
    if (input.listeners) checked.set_listeners(static_cast<std::uint32_t>(input.listeners->size()));
    checked.set_iptables_v4(input.nat_v4.has_value());
    checked.set_iptables_v6(input.nat_v6.has_value());
    if (input.connect_programs)
        checked.set_connect_programs(static_cast<std::uint32_t>(input.connect_programs->size()));
    checked.set_observer(input.observed.has_value());
    checked.set_tls(input.tls.has_value());
}

void to_proto(const diagnose::VerifyReport& report, v1::VerifyResponse& out) {
    out.set_workload(report.workload);
    out.set_passed(report.passed);
    for (const auto& c : report.checks) {
        auto& check = *out.add_checks();
        check.set_hop(c.hop);
        check.set_name(c.name);
        check.set_passed(c.passed);
        for (const auto& e : c.evidence) check.add_evidence(e);
    }
}

}  // namespace meshlane::grpc_api
