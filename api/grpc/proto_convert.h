// Conversions between the registry's types and api/meshlane.proto messages, and Error -> gRPC
// status. Enroll goes proto -> the REST JSON form -> workload_spec_from_json, so gRPC and REST
// accept and refuse exactly the same specs with the same messages.
#pragma once

#include <grpcpp/support/status.h>

#include "agent/common/result.h"
#include "agent/events/event_bus.h"
#include "agent/model/workload_registry.h"
#include "agent/observe/observation_source.h"
#include "api/meshlane.pb.h"

namespace meshlane::grpc_api {

// EINVAL INVALID_ARGUMENT, ENOENT NOT_FOUND, EEXIST ALREADY_EXISTS, EPERM/EACCES
// PERMISSION_DENIED, anything else INTERNAL. The message is the Error's sentence.
grpc::StatusCode status_code_for_errno(int code);
grpc::Status to_grpc_status(const Error& error);

Result<WorkloadSpec> spec_from_proto(const v1::WorkloadSpec& proto);
void to_proto(const WorkloadSpec& spec, v1::WorkloadSpec& out);
void to_proto(const WorkloadStatus& status, v1::Workload& out);
void to_proto(const AgentStatus& status, v1::StatusResponse& out);
void to_proto(const ObserverHealth& health, v1::ObserverHealth& out);
void to_proto(const BpfMapFillReport& report, v1::BpfMapFill& out);
void to_proto(const events::StreamItem& item, v1::StreamEventsResponse& out);

// Request filters, validated like the REST query parameters (INVALID_ARGUMENT otherwise).
Result<events::EventFilter> filter_from_proto(const v1::StreamEventsRequest& request);

}  // namespace meshlane::grpc_api
