#include "agent/observe/tls_json.h"

#include <boost/json.hpp>

#include "agent/observe/observe_json.h"

namespace meshlane {

namespace json = boost::json;

namespace {

double ms(double us) { return us / 1000.0; }

json::object source_json(const TlsSourceTotals& s) {
    return json::object{
        {"completed", s.completed},
        {"failures", s.failures()},
        {"alerts", s.alerts},
        {"resets", s.resets},
        {"closed", s.closed},
        {"errors", s.errors},
        {"latency", latency_json(s.latency, s.latency_sum_us)},
    };
}

json::object destination_json(const TlsDestinationStats& d) {
    return json::object{
        {"destination", d.destination},
        {"source", d.source},
        {"handshakes", d.handshakes},
        {"failures", d.failures},
        {"p50_ms", ms(d.p50_us())},
        {"p90_ms", ms(d.p90_us())},
        {"p99_ms", ms(d.p99_us())},
        {"mean_ms", d.handshakes ? ms(static_cast<double>(d.latency_sum_us) /
                                      static_cast<double>(d.handshakes))
                                 : 0.0},
        {"version", d.last_version},
        {"last_seen_unix_ms", d.last_seen_unix_ns / 1'000'000},
        {"last_failure_unix_ms", d.last_failure_unix_ns / 1'000'000},
        {"last_failure_reason", d.last_failure_reason},
    };
}

}  // namespace

json::object to_json(const TlsHandshakeRecord& r) {
    return json::object{
        {"time_unix_ms", r.unix_time_ns / 1'000'000},
        {"latency_ms", static_cast<double>(r.latency_ns) / 1e6},
        {"source", r.source},
        {"side", r.side},
        {"outcome", r.outcome},
        {"alert",
         r.outcome == "alert" ? tls_alert_text(r.alert_level, r.alert_description) : std::string()},
        {"version", r.version},
        {"sni", r.sni},
        {"local", r.local},
        {"peer", r.peer},
        {"original_destination", r.original_destination},
        {"destination", r.destination},
        {"error", r.error},
        {"libssl_calls", r.libssl_calls},
        {"pid", r.pid},
        {"comm", r.comm},
    };
}

json::object to_json(const WorkloadTls& t, const std::string& name) {
    json::array destinations;
    for (const auto& d : t.destinations) destinations.push_back(destination_json(d));
    json::array recent;
    for (const auto& r : t.recent) recent.push_back(to_json(r));
    return json::object{
        {"name", name},
        {"workload_id", t.workload_id},
        {"netns_cookie", t.netns_cookie},
        {"wire", source_json(t.sources[MESHLANE_TLS_SOURCE_WIRE])},
        {"libssl", source_json(t.sources[MESHLANE_TLS_SOURCE_LIBSSL])},
        {"destinations", std::move(destinations)},
        {"recent", std::move(recent)},
    };
}

}  // namespace meshlane
