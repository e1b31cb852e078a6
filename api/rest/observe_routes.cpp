#include "api/rest/observe_routes.h"

#include <boost/json.hpp>
#include <charconv>
#include <optional>
#include <vector>

#include "agent/model/workload_spec.h"
#include "agent/observe/observation_source.h"
#include "agent/observe/observe_json.h"
#include "agent/observe/tls_json.h"

namespace meshlane::rest {

namespace json = boost::json;

namespace {

constexpr std::size_t kMaxDropLimit = 10000;

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

Result<std::string> percent_decode(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '+') {
            out += ' ';
        } else if (text[i] == '%') {
            if (i + 2 >= text.size())
                return Error::invalid("malformed %-escape in the query string");
            const int hi = hex_value(text[i + 1]), lo = hex_value(text[i + 2]);
            if (hi < 0 || lo < 0) return Error::invalid("malformed %-escape in the query string");
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else {
            out += text[i];
        }
    }
    return out;
}

template <typename Int>
Result<Int> parse_int(const std::string& text, const char* what) {
    Int value{};
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size())
        return Error::invalid(std::string(what) + " must be a non-negative integer, got \"" + text +
                              "\"");
    return value;
}

Response unavailable() {
    return error_response(http::status::service_unavailable, "unavailable",
                          "connection and drop observation is not running in this agent");
}

// The workloads a view covers: one by name (404 when unknown), or all.
Result<std::vector<WorkloadStatus>> selected_workloads(
    const RouteContext& context, const std::map<std::string, std::string>& query) {
    auto it = query.find("workload");
    if (it == query.end() || it->second.empty()) return context.registry.list();
    if (auto valid = validate_name(it->second); !valid)
        return valid.error().with_context("workload");
    auto status = context.registry.get(it->second);
    if (!status) return status.error();
    return std::vector<WorkloadStatus>{std::move(*status)};
}

Status only_known_keys(const std::map<std::string, std::string>& query,
                       std::initializer_list<std::string_view> known) {
    for (const auto& [key, value] : query) {
        bool ok = false;
        for (auto k : known) ok = ok || key == k;
        if (!ok) return Error::invalid("unknown query parameter \"" + key + "\"");
    }
    return Ok{};
}

// since=<unix milliseconds> -> unix nanoseconds; absent -> nullopt.
Result<std::optional<std::int64_t>> parse_since_ns(
    const std::map<std::string, std::string>& query) {
    auto it = query.find("since");
    if (it == query.end()) return std::optional<std::int64_t>{};
    auto since = parse_int<std::int64_t>(it->second, "since (unix milliseconds)");
    if (!since) return since.error();
    // Negative times, or times so large they overflow nanoseconds, are not instants.
    if (*since < 0 || *since > std::int64_t{9'000'000'000'000})
        return Error::invalid("since (unix milliseconds): out of range");
    return std::optional<std::int64_t>{*since * 1'000'000};
}

}  // namespace

Result<std::map<std::string, std::string>> parse_query(std::string_view target) {
    std::map<std::string, std::string> params;
    const auto mark = target.find('?');
    if (mark == std::string_view::npos) return params;
    std::string_view rest = target.substr(mark + 1);
    while (!rest.empty()) {
        const auto amp = rest.find('&');
        const auto pair = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
        if (pair.empty()) continue;
        const auto eq = pair.find('=');
        auto key = percent_decode(pair.substr(0, eq));
        if (!key) return key.error();
        auto value =
            percent_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
        if (!value) return value.error();
        if (!params.emplace(std::move(*key), std::move(*value)).second)
            return Error::invalid("query parameter given twice");
    }
    return params;
}

Response list_connections(const RouteContext& context) {
    if (!context.observations) return unavailable();
    auto query = parse_query(context.request.target());
    if (!query) return error_response(query.error());
    if (auto known = only_known_keys(*query, {"workload", "since"}); !known)
        return error_response(known.error());
    auto since_ns = parse_since_ns(*query);
    if (!since_ns) return error_response(since_ns.error());
    auto workloads = selected_workloads(context, *query);
    if (!workloads) return error_response(workloads.error());
    json::array items;
    for (const auto& status : *workloads) {
        auto view = context.observations->connections(status.workload_id, status.netns_cookie);
        // since filters the recent slow/failed connects; totals and histograms stay cumulative.
        if (*since_ns)
            std::erase_if(view.recent,
                          [&](const ConnectionRecord& r) { return r.unix_time_ns < **since_ns; });
        items.push_back(to_json(view, status.spec.name));
    }
    return json_response(http::status::ok,
                         json::object{{"workloads", std::move(items)},
                                      {"observer", to_json(context.observations->health())}});
}

Response list_drops(const RouteContext& context) {
    if (!context.observations) return unavailable();
    auto query = parse_query(context.request.target());
    if (!query) return error_response(query.error());
    if (auto known = only_known_keys(*query, {"workload", "reason", "since", "limit"}); !known)
        return error_response(known.error());
    DropQuery drop_query;
    if (auto it = query->find("reason"); it != query->end() && !it->second.empty()) {
        drop_query.reason = context.observations->drop_reason_value(it->second);
        if (!drop_query.reason)
            return error_response(Error::invalid("reason \"" + it->second +
                                                 "\" is not a drop reason of this kernel"));
    }
    auto since_ns = parse_since_ns(*query);
    if (!since_ns) return error_response(since_ns.error());
    drop_query.since_unix_ns = *since_ns;
    if (auto it = query->find("limit"); it != query->end()) {
        auto limit = parse_int<std::size_t>(it->second, "limit");
        if (!limit) return error_response(limit.error());
        if (*limit > kMaxDropLimit)
            return error_response(
                Error::invalid("limit must be at most " + std::to_string(kMaxDropLimit)));
        drop_query.limit = *limit;
    }
    auto workloads = selected_workloads(context, *query);
    if (!workloads) return error_response(workloads.error());
    json::array items;
    for (const auto& status : *workloads)
        items.push_back(to_json(
            context.observations->drops(status.workload_id, status.netns_cookie, drop_query),
            status.spec.name));
    return json_response(http::status::ok,
                         json::object{{"workloads", std::move(items)},
                                      {"observer", to_json(context.observations->health())}});
}

Response list_tls(const RouteContext& context) {
    if (!context.observations) return unavailable();
    auto query = parse_query(context.request.target());
    if (!query) return error_response(query.error());
    if (auto known = only_known_keys(*query, {"workload"}); !known)
        return error_response(known.error());
    auto workloads = selected_workloads(context, *query);
    if (!workloads) return error_response(workloads.error());
    json::array items;
    for (const auto& status : *workloads)
        items.push_back(to_json(context.observations->tls(status.workload_id, status.netns_cookie),
                                status.spec.name));
    return json_response(http::status::ok,
                         json::object{{"workloads", std::move(items)},
                                      {"observer", to_json(context.observations->health())}});
}

}  // namespace meshlane::rest
