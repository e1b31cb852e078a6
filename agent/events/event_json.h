// JSON form of bus items, shared by REST (/v1/events NDJSON lines) and the CLI. Field names are
// documented in api/openapi.yaml (Event, LostEvents) and mirror api/meshlane.proto.
#pragma once

#include <boost/json/object.hpp>
#include <string>

#include "agent/events/event_bus.h"

namespace meshlane::events {

// {"type", "sequence", "time_unix_ms", "workload", "details": {...}}
boost::json::object to_json(const Event& event);
// {"type": "lost_events", "lost": N, "time_unix_ms"}
boost::json::object to_json(const LostEvents& lost);
// One NDJSON line (with its '\n') for either.
std::string to_ndjson(const StreamItem& item);

inline constexpr const char* kLostEventsType = "lost_events";

}  // namespace meshlane::events
