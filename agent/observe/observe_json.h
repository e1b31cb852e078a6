// JSON for the observability views (REST /v1/connections, /v1/drops; the CLI renders these).
// Times are unix milliseconds, latencies milliseconds (fractional), percentiles estimated from
// the log2 histogram (never outside the bucket holding the rank).
#pragma once

#include <boost/json/object.hpp>
#include <string>

#include "agent/observe/observation_source.h"

namespace meshlane {

boost::json::object to_json(const WorkloadConnections& connections, const std::string& name);
boost::json::object to_json(const WorkloadDrops& drops, const std::string& name);
boost::json::object to_json(const ObserverHealth& health);
// One slow/failed connect or one drop, as in the views' "recent" arrays and the event stream.
boost::json::object to_json(const ConnectionRecord& record);
boost::json::object to_json(const DropRecord& record);
boost::json::object latency_json(const Log2Histogram& histogram, std::uint64_t sum_us);

}  // namespace meshlane
