// Diagnose/Verify results (agent/diagnose/diagnose_service.h) as api/meshlane.proto messages:
// the same fields as the REST JSON (diagnose::to_json), so both views say the same thing.
#pragma once

#include "agent/diagnose/diagnose_service.h"
#include "api/meshlane.pb.h"

namespace meshlane::grpc_api {

void to_proto(const diagnose::DiagnosisReport& report, v1::DiagnoseResponse& out);
void to_proto(const diagnose::VerifyReport& report, v1::VerifyResponse& out);

}  // namespace meshlane::grpc_api
