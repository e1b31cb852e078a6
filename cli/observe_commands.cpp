#include "cli/observe_commands.h"

#include <boost/json.hpp>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "api/client/unix_http_client.h"
#include "cli/output.h"

namespace meshlane::cli {

namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

int fail(int code, const std::string& message) {
    std::cerr << "meshlane: " << message << '\n';
    return code;
}

// GET target; on failure prints the error and returns the exit code in `exit_code`.
std::optional<json::value> get(const GlobalOptions& global, const std::string& target,
                               int& exit_code) {
    auto reply = rest::http_request(global, http::verb::get, target);
    if (!reply) {
        exit_code = fail(kExitUnreachable, reply.error().message);
        return std::nullopt;
    }
    boost::system::error_code ec;
    auto body = json::parse(reply->body, ec);
    if (ec) {
        exit_code = fail(kExitFailed, "unexpected reply from the agent (HTTP " +
                                          std::to_string(reply->status) + ", not JSON)");
        return std::nullopt;
    }
    if (reply->status >= 400) {
        const auto message = field_text(body, "error");
        exit_code = fail(
            kExitFailed,
            message != "-" ? message : "the agent answered HTTP " + std::to_string(reply->status));
        return std::nullopt;
    }
    exit_code = kExitOk;
    return body;
}

std::string number_text(const json::value& object, std::string_view key, int precision = 1) {
    const auto* value = field(object, key);
    if (value == nullptr) return "-";
    if (value->is_double()) {
        std::ostringstream out;
        out << std::fixed << std::setprecision(precision) << value->get_double();
        return out.str();
    }
    return field_text(object, key);
}

std::string clock_text(const json::value& object) {
    const auto* value = field(object, "time_unix_ms");
    if (value == nullptr || !value->is_number()) return "-";
    const auto ms = value->to_number<std::int64_t>();
    const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    ::localtime_r(&seconds, &tm);
    std::ostringstream out;
    out << std::put_time(&tm, "%H:%M:%S") << '.' << std::setw(3) << std::setfill('0') << ms % 1000;
    return out.str();
}

std::string or_dash(std::string text) { return text.empty() ? "-" : text; }

void print_observer(const json::value& body) {
    const auto* observer = field(body, "observer");
    if (observer == nullptr) return;
    std::cout << "Observer: lost events " << field_text(*observer, "lost_events_total")
              << ", evicted " << field_text(*observer, "events_evicted") << ", memory "
              << field_text(*observer, "memory_bytes") << " of "
              << field_text(*observer, "memory_limit_bytes") << " bytes (BPF maps "
              << field_text(*observer, "bpf_map_bytes") << ")\n";
    const auto* problems = field(*observer, "problems");
    if (problems != nullptr && problems->is_array())
        for (const auto& problem : problems->get_array())
            std::cout << "  problem: " << problem.as_string().c_str() << '\n';
}

const json::array* workloads_of(const json::value& body) {
    const auto* workloads = field(body, "workloads");
    return workloads != nullptr && workloads->is_array() ? &workloads->get_array() : nullptr;
}

void print_connections(const json::value& w, std::size_t limit) {
    std::cout << "Workload " << field_text(w, "name") << " (id " << field_text(w, "workload_id")
              << ")\n";
    Table table({"  SIDE", "ESTABLISHED", "REFUSED", "TIMED OUT", "OTHER", "SYN RETX", "P50 ms",
                 "P90 ms", "P99 ms"});
    for (const char* side : {"app", "upstream"}) {
        const auto* s = field(w, side);
        if (s == nullptr) continue;
        const json::value empty;
        const auto* latency = field(*s, "latency");
        const auto& l = latency ? *latency : empty;
        table.add_row({std::string("  ") + side, field_text(*s, "established"),
                       field_text(*s, "refused"), field_text(*s, "timed_out"),
                       field_text(*s, "other_failures"), field_text(*s, "syn_retransmits"),
                       number_text(l, "p50_ms"), number_text(l, "p90_ms"),
                       number_text(l, "p99_ms")});
    }
    table.print(std::cout);
    std::cout << "  TCP: retransmits " << field_text(w, "tcp", "retransmits") << ", SYN "
              << field_text(w, "tcp", "syn_retransmits") << ", SYN-ACK "
              << field_text(w, "tcp", "synack_retransmits") << ", resets sent "
              << field_text(w, "tcp", "resets_sent") << ", received "
              << field_text(w, "tcp", "resets_received") << '\n';
    const auto* recent = field(w, "recent");
    if (recent == nullptr || !recent->is_array() || recent->get_array().empty()) return;
    std::cout << "  Recent slow or failed connects:\n";
    Table events({"    TIME", "SIDE", "OUTCOME", "LATENCY ms", "SOURCE", "DESTINATION",
                  "ORIGINAL DST", "PID", "COMM", "SYN RETX"});
    const auto& items = recent->get_array();
    const std::size_t first = items.size() > limit ? items.size() - limit : 0;
    for (std::size_t i = first; i < items.size(); ++i) {
        const auto& e = items[i];
        std::string outcome = field_text(e, "outcome");
        if (field_text(e, "error") != "0") outcome += " (" + field_text(e, "error_text") + ")";
        events.add_row({"    " + clock_text(e), field_text(e, "side"), outcome,
                        number_text(e, "latency_ms"), or_dash(field_text(e, "source")),
                        or_dash(field_text(e, "destination")),
                        or_dash(e.as_object().contains("original_destination")
                                    ? std::string(e.at("original_destination").as_string())
                                    : ""),
                        field_text(e, "pid"), or_dash(field_text(e, "comm")),
                        field_text(e, "syn_retransmits")});
    }
    events.print(std::cout);
}

void print_drops(const json::value& w) {
    std::cout << "Workload " << field_text(w, "name") << " (id " << field_text(w, "workload_id")
              << "): " << field_text(w, "total") << " drops\n";
    const auto* by_reason = field(w, "by_reason");
    if (by_reason != nullptr && by_reason->is_array() && !by_reason->get_array().empty()) {
        Table table({"  REASON", "COUNT"});
        for (const auto& r : by_reason->get_array())
            table.add_row({"  " + field_text(r, "reason"), field_text(r, "count")});
        table.print(std::cout);
    }
    const auto* recent = field(w, "recent");
    if (recent == nullptr || !recent->is_array() || recent->get_array().empty()) return;
    std::cout << "  Recent drops:\n";
    Table events({"    TIME", "REASON", "PROTO", "SOURCE", "DESTINATION", "LEN", "BY", "IFINDEX"});
    for (const auto& e : recent->get_array())
        events.add_row({"    " + clock_text(e), field_text(e, "reason"),
                        or_dash(field_text(e, "protocol")), or_dash(field_text(e, "source")),
                        or_dash(field_text(e, "destination")), field_text(e, "length"),
                        field_text(e, "attributed_by"), field_text(e, "ifindex")});
    events.print(std::cout);
}

void print_tls(const json::value& w, std::size_t limit) {
    std::cout << "Workload " << field_text(w, "name") << " (id " << field_text(w, "workload_id")
              << ")\n";
    Table table({"  SOURCE", "COMPLETED", "FAILURES", "ALERTS", "RESETS", "CLOSED", "ERRORS",
                 "P50 ms", "P90 ms", "P99 ms"});
    for (const char* source : {"wire", "libssl"}) {
        const auto* s = field(w, source);
        if (s == nullptr) continue;
        const json::value empty;
        const auto* latency = field(*s, "latency");
        const auto& l = latency ? *latency : empty;
        table.add_row({std::string("  ") + source, field_text(*s, "completed"),
                       field_text(*s, "failures"), field_text(*s, "alerts"),
                       field_text(*s, "resets"), field_text(*s, "closed"), field_text(*s, "errors"),
                       number_text(l, "p50_ms"), number_text(l, "p90_ms"),
                       number_text(l, "p99_ms")});
    }
    table.print(std::cout);
    const auto* destinations = field(w, "destinations");
    if (destinations != nullptr && destinations->is_array() && !destinations->get_array().empty()) {
        std::cout << "  By destination:\n";
        Table by({"    DESTINATION", "SOURCE", "OK", "FAILED", "P50 ms", "P99 ms", "VERSION",
                  "LAST FAILURE"});
        for (const auto& d : destinations->get_array())
            by.add_row({"    " + field_text(d, "destination"), field_text(d, "source"),
                        field_text(d, "handshakes"), field_text(d, "failures"),
                        number_text(d, "p50_ms"), number_text(d, "p99_ms"),
                        or_dash(field_text(d, "version")),
                        or_dash(field_text(d, "last_failure_reason"))});
        by.print(std::cout);
    }
    const auto* recent = field(w, "recent");
    if (recent == nullptr || !recent->is_array() || recent->get_array().empty()) return;
    std::cout << "  Recent handshakes:\n";
    Table events({"    TIME", "SOURCE", "SIDE", "OUTCOME", "LATENCY ms", "VERSION", "SNI", "PEER",
                  "ORIGINAL DST", "PID", "COMM"});
    const auto& items = recent->get_array();
    const std::size_t first = items.size() > limit ? items.size() - limit : 0;
    for (std::size_t i = first; i < items.size(); ++i) {
        const auto& e = items[i];
        std::string outcome = field_text(e, "outcome");
        if (outcome == "alert") outcome = field_text(e, "alert");
        events.add_row({"    " + clock_text(e), field_text(e, "source"), field_text(e, "side"),
                        outcome, number_text(e, "latency_ms", 2), or_dash(field_text(e, "version")),
                        or_dash(field_text(e, "sni")), or_dash(field_text(e, "peer")),
                        or_dash(field_text(e, "original_destination")), field_text(e, "pid"),
                        or_dash(field_text(e, "comm"))});
    }
    events.print(std::cout);
}

// GET target; print JSON as is, or each workload with `print_workload` and the observer state.
template <typename PrintWorkload>
int show_view(const GlobalOptions& global, const std::string& target, bool json,
              PrintWorkload print_workload) {
    int exit_code = kExitOk;
    auto body = get(global, target, exit_code);
    if (!body) return exit_code;
    if (json) {
        std::cout << pretty_json(*body) << '\n';
        return kExitOk;
    }
    if (const auto* workloads = workloads_of(*body))
        for (const auto& w : *workloads) print_workload(w);
    print_observer(*body);
    return kExitOk;
}

}  // namespace

int run_conns(const GlobalOptions& global, const ObserveFlags& flags) {
    if (flags.follow) return run_follow(global, {"connect", flags.workload, "", flags.json});
    std::string target = "/v1/connections";
    if (!flags.workload.empty()) target += "?workload=" + query_escape(flags.workload);
    return show_view(global, target, flags.json,
                     [&](const auto& w) { print_connections(w, flags.limit); });
}

int run_drops(const GlobalOptions& global, const ObserveFlags& flags) {
    if (flags.follow) return run_follow(global, {"drop", flags.workload, flags.reason, flags.json});
    std::string target = "/v1/drops?limit=" + std::to_string(flags.limit);
    if (!flags.workload.empty()) target += "&workload=" + query_escape(flags.workload);
    if (!flags.reason.empty()) target += "&reason=" + query_escape(flags.reason);
    return show_view(global, target, flags.json, [](const auto& w) { print_drops(w); });
}

int run_tls(const GlobalOptions& global, const ObserveFlags& flags) {
    std::string target = "/v1/tls";
    if (!flags.workload.empty()) target += "?workload=" + query_escape(flags.workload);
    return show_view(global, target, flags.json, [&](const auto& w) { print_tls(w, flags.limit); });
}

}  // namespace meshlane::cli
