// Handlers of the diagnosis routes, listed in the route table (rest_routes.cpp):
//   GET  /v1/workloads/{name}/diagnose   findings (agent/diagnose/diagnosis.h)
//   POST /v1/workloads/{name}/verify     hop-by-hop probe (agent/diagnose/verify.h)
#pragma once

#include "api/rest/rest_router.h"

namespace meshlane::rest {

Response diagnose_workload(const RouteContext& context);
Response verify_workload(const RouteContext& context);

}  // namespace meshlane::rest
