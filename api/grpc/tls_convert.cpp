#include "api/grpc/tls_convert.h"

namespace meshlane::grpc_api {

namespace {

double ms(double us) { return us / 1000.0; }

void to_proto(const TlsSourceTotals& t, v1::TlsSourceTotals& out) {
    out.set_completed(t.completed);
    out.set_alerts(t.alerts);
    out.set_resets(t.resets);
    out.set_closed(t.closed);
    out.set_errors(t.errors);
    auto& latency = *out.mutable_latency();
    const auto count = t.latency.count();
    latency.set_count(count);
    latency.set_mean_ms(
        count ? ms(static_cast<double>(t.latency_sum_us) / static_cast<double>(count)) : 0.0);
    latency.set_p50_ms(ms(t.latency.percentile_us(0.50)));
    latency.set_p90_ms(ms(t.latency.percentile_us(0.90)));
    latency.set_p99_ms(ms(t.latency.percentile_us(0.99)));
}

}  // namespace

void to_proto(const WorkloadTls& tls, const std::string& name, v1::WorkloadTls& out) {
    out.set_name(name);
    out.set_workload_id(tls.workload_id);
    to_proto(tls.sources[MESHLANE_TLS_SOURCE_WIRE], *out.mutable_wire());
    to_proto(tls.sources[MESHLANE_TLS_SOURCE_LIBSSL], *out.mutable_libssl());
    for (const auto& d : tls.destinations) {
        auto& p = *out.add_destinations();
        p.set_destination(d.destination);
        p.set_source(d.source);
        p.set_handshakes(d.handshakes);
        p.set_failures(d.failures);
        p.set_p50_ms(ms(d.p50_us()));
        p.set_p90_ms(ms(d.p90_us()));
        p.set_p99_ms(ms(d.p99_us()));
        p.set_version(d.last_version);
        p.set_last_seen_unix_ms(d.last_seen_unix_ns / 1'000'000);
        p.set_last_failure_unix_ms(d.last_failure_unix_ns / 1'000'000);
        p.set_last_failure_reason(d.last_failure_reason);
    }
    for (const auto& r : tls.recent) {
        auto& p = *out.add_recent();
        p.set_time_unix_ms(r.unix_time_ns / 1'000'000);
        p.set_latency_ms(static_cast<double>(r.latency_ns) / 1e6);
        p.set_source(r.source);
        p.set_side(r.side);
        p.set_outcome(r.outcome);
        if (r.outcome == "alert") p.set_alert(tls_alert_text(r.alert_level, r.alert_description));
        p.set_version(r.version);
        p.set_sni(r.sni);
        p.set_local(r.local);
        p.set_peer(r.peer);
        p.set_original_destination(r.original_destination);
        p.set_destination(r.destination);
        p.set_error(r.error);
        p.set_libssl_calls(r.libssl_calls);
        p.set_pid(r.pid);
        p.set_comm(r.comm);
    }
}

}  // namespace meshlane::grpc_api
