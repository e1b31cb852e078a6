// WorkloadTls (agent/observe/tls_aggregate.h) -> meshlane.v1.WorkloadTls, the gRPC twin of
// agent/observe/tls_json.h.
#pragma once

#include <string>

#include "agent/observe/tls_aggregate.h"
#include "api/meshlane.pb.h"

namespace meshlane::grpc_api {

void to_proto(const WorkloadTls& tls, const std::string& name, v1::WorkloadTls& out);

}  // namespace meshlane::grpc_api
