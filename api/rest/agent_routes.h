// Handlers listed in the route table (rest_routes.cpp) beyond the workload resources:
//   GET /metrics                                   Prometheus text format (metrics_route.cpp)
//   GET /v1/events?follow=&workload=&type=&since=  NDJSON event stream (events_route.cpp)
//   GET /healthz, /readyz                          probes (health_routes.cpp)
#pragma once

#include <boost/json/value.hpp>

#include "agent/model/readiness.h"
#include "api/rest/rest_router.h"

namespace meshlane::rest {

Response get_metrics(const RouteContext& context);
Response get_healthz(const RouteContext& context);
Response get_readyz(const RouteContext& context);
// {"status": "ready|degraded|not_ready", "issues": [{problem, feature, reason}]}
boost::json::value to_json(const ReadinessReport& report);
Response list_events(const RouteContext& context);

}  // namespace meshlane::rest
