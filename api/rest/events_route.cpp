// GET /v1/events: workload lifecycle (and later observer) events from the agent's event bus, as
// NDJSON, Hubble-style: without follow, the matching recent history and the end; with
// follow=true, that history and then live events until the client leaves. Lost-event notices
// ({"type":"lost_events"}) are always delivered, whatever the type filter.
#include <boost/json.hpp>
#include <charconv>

#include "agent/events/event_json.h"
#include "api/rest/agent_routes.h"
#include "api/rest/observe_routes.h"

namespace meshlane::rest {

namespace {

constexpr std::string_view kNdjson = "application/x-ndjson";

Result<bool> parse_bool(const std::string& text, std::string_view field) {
    if (text == "true" || text == "1" || text.empty()) return true;
    if (text == "false" || text == "0") return false;
    return Error::invalid(std::string(field) + " must be true or false, got \"" + text + "\"");
}

// Types are free-form snake_case (publishers add their own); the check keeps junk out of logs.
Result<std::set<std::string>> parse_types(std::string_view text) {
    std::set<std::string> types;
    while (!text.empty()) {
        const auto comma = text.find(',');
        const auto type = text.substr(0, comma);
        text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
        const bool valid = !type.empty() && type.size() <= 64 &&
                           type.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") ==
                               std::string_view::npos;
        if (!valid)
            return Error::invalid("type \"" + std::string(type) + "\" is not an event type");
        types.emplace(type);
    }
    return types;
}

Result<std::int64_t> parse_since(const std::string& text) {
    std::int64_t value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || value < 0)
        return Error::invalid("since must be unix milliseconds (a non-negative integer), got \"" +
                              text + "\"");
    return value;
}

struct EventsQuery {
    events::EventFilter filter;
    bool follow = false;
};

Result<EventsQuery> parse_events_query(std::string_view target) {
    auto query = parse_query(target);
    if (!query) return query.error();
    EventsQuery out;
    for (const auto& [key, value] : *query) {
        if (key == "follow") {
            auto follow = parse_bool(value, "follow");
            if (!follow) return follow.error();
            out.follow = *follow;
        } else if (key == "workload") {
            if (auto valid = validate_name(value); !valid) return valid.error();
            out.filter.workload = value;
        } else if (key == "type") {
            auto types = parse_types(value);
            if (!types) return types.error();
            out.filter.types = std::move(*types);
        } else if (key == "since") {
            auto since = parse_since(value);
            if (!since) return since.error();
            out.filter.since_unix_ms = *since;
        } else {
            return Error::invalid("unknown query parameter \"" + key +
                                  "\" (known: follow, workload, type, since)");
        }
    }
    return out;
}

Response ndjson_header() {
    Response response{http::status::ok, 11};
    response.set(http::field::content_type, kNdjson);
    response.set(http::field::cache_control, "no-store");
    return response;
}

}  // namespace

Response list_events(const RouteContext& context) {
    if (context.events == nullptr)
        return error_response(http::status::service_unavailable, "unavailable",
                              "the agent runs without an event bus");
    auto query = parse_events_query(context.request.target());
    if (!query) return error_response(query.error());
    if (!query->follow) {
        auto response = ndjson_header();
        for (const auto& event : context.events->history(query->filter))
            response.body() += events::to_ndjson(event);
        return response;
    }
    if (context.streaming == nullptr)
        return error_response(http::status::bad_request, "invalid_argument",
                              "follow=true needs a streaming transport");
    if (!context.streaming->allowed)
        return error_response(http::status::too_many_requests, "too_many_streams",
                              "too many open event streams; retry later");
    std::vector<events::Event> history;
    context.streaming->subscription = context.events->subscribe(query->filter, &history);
    for (auto& event : history) context.streaming->backlog.emplace_back(std::move(event));
    context.streaming->encode = events::to_ndjson;
    return ndjson_header();
}

}  // namespace meshlane::rest
