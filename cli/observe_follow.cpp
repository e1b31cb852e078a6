// `meshlane drops --follow` / `meshlane conns --follow`: GET /v1/events?follow=true streams the
// observer's events as NDJSON over a chunked response, over the unix socket or --server
// https://...; each line is printed as it arrives (a human line, or the JSON line itself with
// --json). The agent's lost-event notices are printed too, so a gap is never silent. Ends cleanly
// (exit 0) on SIGINT/SIGTERM or when stdout's reader goes away (SIGPIPE is ignored, the failed
// write ends the stream).
#include <boost/json.hpp>
#include <csignal>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/observe_commands.h"
#include "cli/output.h"

namespace meshlane::cli {

namespace json = boost::json;

namespace {

int fail(int code, const std::string& message) {
    std::cerr << "meshlane: " << message << '\n';
    return code;
}

std::string text_of(const json::value& object, std::string_view key) {
    const auto* value = field(object, key);
    if (value == nullptr) return {};
    if (value->is_string()) return std::string(value->get_string());
    return json::serialize(*value);
}

std::string time_text(const json::value& event) {
    const auto* value = field(event, "time_unix_ms");
    if (value == nullptr || !value->is_number()) return "-";
    const auto ms = value->to_number<std::int64_t>();
    const auto seconds = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    ::localtime_r(&seconds, &tm);
    std::ostringstream out;
    out << std::put_time(&tm, "%H:%M:%S") << '.' << std::setw(3) << std::setfill('0') << ms % 1000;
    return out.str();
}

std::string dash(std::string text) { return text.empty() ? "-" : text; }

// One human line per event; empty when the event is filtered out.
std::string human_line(const json::value& event, const FollowFlags& flags) {
    const std::string type = text_of(event, "type");
    const json::value empty = json::object{};
    const auto* found = field(event, "details");
    const json::value& d = found != nullptr ? *found : empty;
    std::ostringstream line;
    line << time_text(event) << "  ";
    if (type == "lost_events") {
        line << "!! " << text_of(event, "lost")
             << " events lost: this stream did not keep up (the agent's queue for it was full)";
    } else if (type == "observe_lost_events") {
        line << "!! " << text_of(d, "lost") << " events not streamed (" << text_of(d, "kind")
             << ", " << text_of(d, "lost_total")
             << " in total); the counters stay exact: see `meshlane drops` / `meshlane conns`";
    } else if (type == "drop") {
        if (!flags.reason.empty() && text_of(d, "reason") != flags.reason) return {};
        line << dash(text_of(event, "workload")) << "  " << text_of(d, "reason") << "  "
             << dash(text_of(d, "protocol")) << ' ' << dash(text_of(d, "source")) << " -> "
             << dash(text_of(d, "destination")) << "  len " << text_of(d, "length") << "  by "
             << text_of(d, "attributed_by") << " (ifindex " << text_of(d, "ifindex") << ")";
    } else if (type == "connect") {
        line << dash(text_of(event, "workload")) << "  " << text_of(d, "side") << ' '
             << text_of(d, "outcome");
        if (const auto error = text_of(d, "error_text"); !error.empty())
            line << " (" << error << ")";
        line << "  " << dash(text_of(d, "source")) << " -> " << dash(text_of(d, "destination"));
        if (const auto original = text_of(d, "original_destination"); !original.empty())
            line << " (original " << original << ")";
        line << "  " << text_of(d, "latency_ms") << " ms, SYN retransmits "
             << text_of(d, "syn_retransmits");
        if (const auto pid = text_of(d, "pid"); !pid.empty() && pid != "0")
            line << ", pid " << pid << ' ' << text_of(d, "comm");
    } else {
        line << type << "  " << dash(text_of(event, "workload"));
    }
    return line.str();
}

std::int64_t now_unix_ms() {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

enum class LineResult { kMore, kStdoutGone };

LineResult emit(const std::string& line, const FollowFlags& flags) {
    if (line.empty()) return LineResult::kMore;
    if (flags.json) {
        std::cout << line << std::endl;
    } else {
        boost::system::error_code ec;
        const auto event = json::parse(line, ec);
        if (ec) return LineResult::kMore;  // not ours to judge; --json shows it as is
        const auto text = human_line(event, flags);
        if (text.empty()) return LineResult::kMore;
        std::cout << text << std::endl;
    }
    return std::cout ? LineResult::kMore : LineResult::kStdoutGone;
}

}  // namespace

int run_follow(const GlobalOptions& global, const FollowFlags& flags) {
    // A reader that goes away (`| head`) ends the stream through a failed write, not a signal.
    ::signal(SIGPIPE, SIG_IGN);
    std::string target = "/v1/events?follow=true&type=" + flags.type + ",observe_lost_events" +
                         "&since=" + std::to_string(now_unix_ms());
    if (!flags.workload.empty()) target += "&workload=" + query_escape(flags.workload);
    std::string lines;  // NDJSON received, not yet split
    auto on_body = [&](std::string_view body) {
        lines.append(body);
        for (auto newline = lines.find('\n'); newline != std::string::npos;
             newline = lines.find('\n')) {
            if (emit(lines.substr(0, newline), flags) == LineResult::kStdoutGone) return false;
            lines.erase(0, newline + 1);
        }
        return true;
    };
    // Over the unix socket or --server https://... alike (api/client/unix_http_client.h).
    auto outcome = rest::http_stream(global, target, on_body);
    if (!outcome) return fail(kExitUnreachable, outcome.error().message);
    if (outcome->interrupted || outcome->stopped_by_reader) return kExitOk;
    if (outcome->status != 200) {
        boost::system::error_code json_ec;
        const auto body = json::parse(outcome->error_body, json_ec);
        const auto message = json_ec ? std::string() : text_of(body, "error");
        return fail(kExitFailed, !message.empty() ? message
                                                  : "the agent answered HTTP " +
                                                        std::to_string(outcome->status));
    }
    return fail(kExitUnreachable, "the meshlane agent at " + global.server + " ended the stream");
}

}  // namespace meshlane::cli
