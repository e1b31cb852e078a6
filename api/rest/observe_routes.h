// Handlers of the observability views, listed in the route table (rest_routes.cpp):
//   GET /v1/connections?workload=NAME
//   GET /v1/drops?workload=NAME&reason=NETFILTER_DROP&since=UNIX_MS&limit=N
// They join the registry's workload names with ObservationSource copies; 503 when the agent
// runs without the observer.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "agent/common/result.h"
#include "api/rest/rest_router.h"

namespace meshlane::rest {

Response list_connections(const RouteContext& context);
Response list_drops(const RouteContext& context);
// GET /v1/tls?workload=NAME: TLS handshakes per workload (wire and libssl sources).
Response list_tls(const RouteContext& context);

// "a=1&b=x%20y" -> {a: "1", b: "x y"}; Error on a malformed escape or a repeated key.
Result<std::map<std::string, std::string>> parse_query(std::string_view target);

}  // namespace meshlane::rest
