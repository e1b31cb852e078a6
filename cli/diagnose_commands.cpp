#include "cli/diagnose_commands.h"

#include <boost/json.hpp>
#include <chrono>
#include <ctime>
#include <iostream>
#include <map>
#include <thread>
#include <vector>

#include "api/client/unix_http_client.h"
#include "cli/output.h"

namespace meshlane::cli {

namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

std::optional<json::value> call(const GlobalOptions& global, http::verb method,
                                const std::string& target, int& exit_code) {
    auto reply = rest::http_request(global, method, target);
    if (!reply) {
        std::cerr << "meshlane: " << reply.error().message << '\n';
        exit_code = kExitUnreachable;
        return std::nullopt;
    }
    boost::system::error_code ec;
    auto body = json::parse(reply->body, ec);
    if (ec) {
        std::cerr << "meshlane: unexpected reply from the agent (HTTP " << reply->status
                  << ", not JSON)\n";
        exit_code = kExitFailed;
        return std::nullopt;
    }
    if (reply->status >= 400) {
        const auto message = field_text(body, "error");
        std::cerr << "meshlane: "
                  << (message != "-" ? message
                                     : "the agent answered HTTP " + std::to_string(reply->status))
                  << '\n';
        exit_code = kExitFailed;
        return std::nullopt;
    }
    exit_code = kExitOk;
    return body;
}

std::string upper(std::string text) {
    for (auto& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return text;
}

std::string utc(std::int64_t ms) {
    const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    ::gmtime_r(&seconds, &tm);
    char buffer[32];
    std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buffer;
}

}  // namespace

int run_diagnose(const GlobalOptions& global, const std::string& name, bool as_json,
                 unsigned window_seconds) {
    int exit_code = kExitOk;
    std::string target = "/v1/workloads/" + name + "/diagnose";
    if (window_seconds != 0) target += "?window=" + std::to_string(window_seconds);
    auto body = call(global, http::verb::get, target, exit_code);
    if (!body) return exit_code;
    const auto& object = body->as_object();
    const auto& findings = object.at("findings").as_array();
    const auto critical = object.at("critical").to_number<std::int64_t>();
    if (as_json) {
        std::cout << json::serialize(*body) << '\n';
        return critical > 0 ? kExitProblemFound : kExitOk;
    }
    std::cout << "Workload " << name << ": " << findings.size() << " finding(s), " << critical
              << " critical (at "
              << utc(object.at("collected_at_unix_ms").to_number<std::int64_t>()) << ")\n";
    if (findings.empty()) {
        const auto& checked = object.at("checked").as_object();
        std::cout << "No interception problem found. Checked: "
                  << json::serialize(checked.at("processes")) << " processes, "
                  << json::serialize(checked.at("listeners"))
                  << " listening sockets, iptables nat v4/v6, "
                  << json::serialize(checked.at("connect_programs"))
                  << " cgroup connect programs, datapath counters"
                  << (checked.at("observer").as_bool() ? ", kernel drops and refused connects" : "")
                  << (checked.at("tls").as_bool() ? ", TLS handshakes" : "") << ".\n";
        return kExitOk;
    }
    for (const auto& value : findings) {
        const auto& f = value.as_object();
        const bool resolved = field_text(value, "status") == "resolved";
        std::cout << "\n[" << upper(std::string(f.at("severity").as_string()))
                  << (resolved ? ", RESOLVED" : "") << "] " << f.at("code").as_string().c_str()
                  << "\n";
        std::cout << "  Cause:    " << f.at("cause").as_string().c_str() << "\n";
        std::cout << "  Evidence:\n";
        for (const auto& e : f.at("evidence").as_array())
            std::cout << "    - " << e.as_string().c_str() << "\n";
        std::cout << "  Fix:      " << f.at("fix").as_string().c_str() << "\n";
    }
    return critical > 0 ? kExitProblemFound : kExitOk;
}

std::optional<unsigned> since_to_window(const std::string& since, std::int64_t now_unix_s) {
    if (since.empty()) return std::nullopt;
    std::int64_t seconds = 0;
    if (since.find('T') != std::string::npos) {
        std::tm tm{};
        const char* end = ::strptime(since.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
        if (end == nullptr || (*end != '\0' && std::string(end) != "Z")) return std::nullopt;
        seconds = now_unix_s - static_cast<std::int64_t>(::timegm(&tm));
    } else {
        std::size_t used = 0;
        long long value = 0;
        try {
            value = std::stoll(since, &used);
        } catch (const std::exception&) {
            return std::nullopt;
        }
        const std::string unit = since.substr(used);
        const std::map<std::string, std::int64_t> units = {
            {"", 1}, {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400}};
        const auto it = units.find(unit);
        if (it == units.end() || value < 0) return std::nullopt;
        seconds = value * it->second;
    }
    if (seconds < 1) return std::nullopt;
    return static_cast<unsigned>(std::min<std::int64_t>(seconds, 0xffffffffLL));
}

namespace {

struct FollowState {
    std::string severity, status, cause;
};

std::string label(const FollowState& s) {
    return "[" + upper(s.severity) + (s.status == "resolved" ? ", RESOLVED" : "") + "]";
}

}  // namespace

int run_diagnose_follow(const GlobalOptions& global, const std::string& name, bool as_json,
                        unsigned window_seconds, unsigned interval_seconds) {
    std::string target = "/v1/workloads/" + name + "/diagnose";
    if (window_seconds != 0) target += "?window=" + std::to_string(window_seconds);
    std::map<std::string, FollowState> shown;
    for (bool first = true;; first = false) {
        int exit_code = kExitOk;
        auto body = call(global, http::verb::get, target, exit_code);
        if (!body) return exit_code;
        const auto& object = body->as_object();
        const auto at = utc(object.at("collected_at_unix_ms").to_number<std::int64_t>());
        if (as_json) {
            std::cout << json::serialize(*body) << std::endl;
        } else {
            std::map<std::string, FollowState> now;
            for (const auto& value : object.at("findings").as_array())
                now[field_text(value, "code")] = {field_text(value, "severity"),
                                                  field_text(value, "status"),
                                                  field_text(value, "cause")};
            for (const auto& [code, state] : now) {
                auto it = shown.find(code);
                if (it == shown.end())
                    std::cout << at << " + " << label(state) << " " << code << ": " << state.cause
                              << "\n";
                else if (it->second.severity != state.severity || it->second.status != state.status)
                    std::cout << at << " ~ " << label(state) << " " << code << " (was "
                              << label(it->second) << "): " << state.cause << "\n";
            }
            for (const auto& [code, state] : shown)
                if (now.count(code) == 0)
                    std::cout << at << " - " << code << ": no longer in the window\n";
            if (first && now.empty()) std::cout << at << " no finding\n";
            std::cout << std::flush;
            shown = std::move(now);
        }
        std::this_thread::sleep_for(std::chrono::seconds(interval_seconds));
    }
}

int run_diagnose_all(const GlobalOptions& global, bool as_json, unsigned window_seconds) {
    int exit_code = kExitOk;
    auto list = call(global, http::verb::get, "/v1/workloads", exit_code);
    if (!list) return exit_code;
    std::vector<std::string> names;
    if (const auto* workloads = field(*list, "workloads"); workloads && workloads->is_array())
        for (const auto& w : workloads->get_array()) names.push_back(field_text(w, "name"));
    const std::string query =
        window_seconds != 0 ? "?window=" + std::to_string(window_seconds) : "";
    Table table({"WORKLOAD", "CRITICAL", "WARNING", "INFO", "FINDINGS"});
    json::array reports;
    std::size_t critical_workloads = 0, errors = 0;
    for (const auto& name : names) {
        int code = kExitOk;
        // A workload unenrolled meanwhile answers 404: listed as an error, the rest go on.
        auto body =
            call(global, http::verb::get, "/v1/workloads/" + name + "/diagnose" + query, code);
        if (!body) {
            if (code == kExitUnreachable) return code;
            ++errors;
            table.add_row({name, "-", "-", "-", "error: not diagnosed (see above)"});
            reports.push_back(json::object{{"workload", name}, {"error", "not diagnosed"}});
            continue;
        }
        std::map<std::string, std::size_t> by_severity;
        std::string codes;
        if (const auto* findings = field(*body, "findings"); findings && findings->is_array()) {
            for (const auto& f : findings->get_array()) {
                ++by_severity[field_text(f, "severity")];
                codes += (codes.empty() ? "" : ",") + field_text(f, "code");
            }
        }
        if (by_severity["critical"] > 0) ++critical_workloads;
        table.add_row({name, std::to_string(by_severity["critical"]),
                       std::to_string(by_severity["warning"]), std::to_string(by_severity["info"]),
                       codes.empty() ? "none" : codes});
        reports.push_back(std::move(*body));
    }
    if (as_json) {
        std::cout << json::serialize(json::object{{"workloads", std::move(reports)},
                                                  {"critical_workloads", critical_workloads},
                                                  {"errors", errors}})
                  << '\n';
    } else {
        table.print(std::cout);
        std::cout << names.size() << " workload(s), " << critical_workloads
                  << " with a critical finding"
                  << (errors ? ", " + std::to_string(errors) + " not diagnosed" : "")
                  << (names.empty() ? "" : ". Details: meshlane diagnose WORKLOAD") << "\n";
    }
    if (critical_workloads > 0) return kExitProblemFound;
    return errors > 0 ? kExitFailed : kExitOk;
}

int run_verify(const GlobalOptions& global, const std::string& name, bool as_json) {
    int exit_code = kExitOk;
    auto body = call(global, http::verb::post, "/v1/workloads/" + name + "/verify", exit_code);
    if (!body) return exit_code;
    const auto& object = body->as_object();
    const bool passed = object.at("passed").as_bool();
    if (as_json) {
        std::cout << json::serialize(*body) << '\n';
        return passed ? kExitOk : kExitProblemFound;
    }
    std::cout << "Workload " << name << ": " << (passed ? "interception verified" : "VERIFY FAILED")
              << "\n";
    for (const auto& value : object.at("checks").as_array()) {
        const auto& c = value.as_object();
        std::cout << "\n"
                  << (c.at("passed").as_bool() ? "PASS " : "FAIL ") << "["
                  << c.at("hop").as_string().c_str() << "] " << c.at("name").as_string().c_str()
                  << "\n";
        for (const auto& e : c.at("evidence").as_array())
            std::cout << "    - " << e.as_string().c_str() << "\n";
    }
    return passed ? kExitOk : kExitProblemFound;
}

}  // namespace meshlane::cli
