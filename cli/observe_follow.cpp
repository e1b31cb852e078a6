// `meshlane drops --follow` / `meshlane conns --follow`: GET /v1/events?follow=true streams the
// observer's events as NDJSON over a chunked response; each line is printed as it arrives (a
// human line, or the JSON line itself with --json). The agent's lost-event notices are printed
// too, so a gap is never silent. Ends cleanly (exit 0) on SIGINT/SIGTERM or when stdout's reader
// goes away (SIGPIPE is ignored, the failed write ends the loop).
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "agent/common/unique_fd.h"
#include "cli/observe_commands.h"
#include "cli/output.h"

namespace meshlane::cli {

namespace json = boost::json;
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_stop_signal(int) { g_stop = 1; }

// SIGINT/SIGTERM only set the flag (no SA_RESTART: a blocked poll returns at once).
void install_signal_handlers() {
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, nullptr);
    ::sigaction(SIGTERM, &action, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
}

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

Result<UniqueFd> connect_unix(const std::string& path) {
    sockaddr_un address{};
    if (path.size() >= sizeof(address.sun_path))
        return Error{ENAMETOOLONG, "API socket path " + path + " is too long"};
    UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    if (!fd.valid()) return Error::last_errno("socket");
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.data(), path.size());
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
        const int error = errno;
        const char* hint = (error == EACCES || error == EPERM)
                               ? " — the API socket is root-only; run as root"
                               : " — is `meshlane agent` running?";
        return Error{error, "cannot reach the meshlane agent at " + path + ": " +
                                std::strerror(error) + hint};
    }
    return fd;
}

bool write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR && !g_stop) continue;
        if (n <= 0) return false;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
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
    std::string path = global.server;
    if (path.rfind("unix:", 0) == 0) path = path.substr(5);
    if (path.rfind("https://", 0) == 0)
        return fail(kExitFailed, "--follow streams over the agent's unix socket; --server " + path +
                                     " (TCP) is not supported for streaming by the CLI yet");
    install_signal_handlers();
    auto fd = connect_unix(path);
    if (!fd) return fail(kExitUnreachable, fd.error().message);

    std::string target = "/v1/events?follow=true&type=" + flags.type + ",observe_lost_events" +
                         "&since=" + std::to_string(now_unix_ms());
    if (!flags.workload.empty()) target += "&workload=" + query_escape(flags.workload);
    const std::string request = "GET " + target +
                                " HTTP/1.1\r\nHost: meshlane\r\nUser-Agent: meshlane-cli\r\n"
                                "Accept: application/x-ndjson\r\nConnection: close\r\n\r\n";
    if (!write_all(fd->get(), request))
        return fail(kExitUnreachable,
                    "talking to the meshlane agent at " + path + ": " + std::strerror(errno));

    http::response_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(boost::none);  // a stream has no end; lines are consumed as they come
    std::string lines;               // NDJSON received, not yet split
    bool stdout_gone = false;
    // The parser keeps a reference to the callback: it must outlive the loop below.
    auto on_chunk = [&](std::uint64_t, beast::string_view body, beast::error_code&) {
        lines.append(body.data(), body.size());
        return body.size();
    };
    parser.on_chunk_body(on_chunk);
    std::string input;
    char buffer[16384];
    while (!g_stop && !stdout_gone) {
        pollfd p{fd->get(), POLLIN, 0};
        const int ready = ::poll(&p, 1, 500);
        if (ready < 0 && errno != EINTR)
            return fail(kExitFailed, "poll: " + std::string(std::strerror(errno)));
        if (ready <= 0) continue;
        const ssize_t n = ::read(fd->get(), buffer, sizeof(buffer));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return fail(kExitUnreachable,
                        "reading from the meshlane agent at " + path + ": " + std::strerror(errno));
        if (n == 0) break;
        input.append(buffer, static_cast<std::size_t>(n));
        beast::error_code ec;
        const auto used = parser.put(boost::asio::buffer(input), ec);
        input.erase(0, used);
        if (ec && ec != http::error::need_more)
            return fail(kExitFailed, "unexpected reply from the agent: " + ec.message());
        if (parser.is_header_done() && parser.get().result_int() != 200) {
            if (!parser.is_done()) continue;  // the error body is small; read all of it
            boost::system::error_code json_ec;
            const auto body = json::parse(parser.get().body(), json_ec);
            const auto message = json_ec ? std::string() : text_of(body, "error");
            return fail(kExitFailed, !message.empty()
                                         ? message
                                         : "the agent answered HTTP " +
                                               std::to_string(parser.get().result_int()));
        }
        for (auto newline = lines.find('\n'); newline != std::string::npos && !stdout_gone;
             newline = lines.find('\n')) {
            stdout_gone = emit(lines.substr(0, newline), flags) == LineResult::kStdoutGone;
            lines.erase(0, newline + 1);
        }
        if (parser.is_done()) break;
    }
    if (g_stop || stdout_gone) return kExitOk;
    return fail(kExitUnreachable, "the meshlane agent at " + path + " ended the stream");
}

}  // namespace meshlane::cli
