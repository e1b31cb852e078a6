// Handlers listed in the route table (rest_routes.cpp) beyond the workload resources:
//   GET /metrics                                   Prometheus text format (metrics_route.cpp)
//   GET /v1/events?follow=&workload=&type=&since=  NDJSON event stream (events_route.cpp)
#pragma once

#include "api/rest/rest_router.h"

namespace meshlane::rest {

Response get_metrics(const RouteContext& context);
Response list_events(const RouteContext& context);

}  // namespace meshlane::rest
