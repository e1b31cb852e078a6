#include "agent/events/event_json.h"

#include <boost/json.hpp>

namespace meshlane::events {

namespace json = boost::json;

json::object to_json(const Event& event) {
    json::object details;
    for (const auto& [key, value] : event.details) details[key] = value;
    return json::object{{"type", event.type},
                        {"sequence", event.sequence},
                        {"time_unix_ms", event.unix_time_ms},
                        {"workload", event.workload},
                        {"details", std::move(details)}};
}

json::object to_json(const LostEvents& lost) {
    return json::object{
        {"type", kLostEventsType}, {"lost", lost.count}, {"time_unix_ms", lost.unix_time_ms}};
}

std::string to_ndjson(const StreamItem& item) {
    std::string line =
        std::visit([](const auto& value) { return json::serialize(to_json(value)); }, item);
    line += '\n';
    return line;
}

}  // namespace meshlane::events
