#include "api/grpc/tcp_auth.h"

#include <spdlog/spdlog.h>

#include <array>

#include "api/tls/tls_auth.h"

namespace meshlane::grpc_api {

namespace {

// Fail closed: a method missing here needs credentials on TCP. A unit test
// (tests/unit/api_auth_test.cpp) makes every method of meshlane.v1.Agent be classified.
constexpr std::array<std::string_view, 10> kReadOnlyMethods = {
    "/meshlane.v1.Agent/Health",
    "/meshlane.v1.Agent/Status",
    "/meshlane.v1.Agent/ListWorkloads",
    "/meshlane.v1.Agent/GetWorkload",
    "/meshlane.v1.Agent/StreamEvents",
    "/meshlane.v1.Agent/Diagnose",
    "/meshlane.v1.Agent/Tls",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
};

std::string_view find(const grpc::AuthMetadataProcessor::InputMetadata& metadata,
                      std::string_view key) {
    const auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
    if (it == metadata.end()) return {};
    return {it->second.data(), it->second.size()};
}

}  // namespace

bool is_read_only_method(std::string_view path) {
    for (const auto method : kReadOnlyMethods)
        if (method == path) return true;
    return false;
}

grpc::Status TcpAuthProcessor::Process(const InputMetadata& metadata, grpc::AuthContext* context,
                                       OutputMetadata* consumed, OutputMetadata*) {
    const auto path = find(metadata, ":path");
    if (is_read_only_method(path)) return grpc::Status::OK;
    const auto authorization = find(metadata, "authorization");
    // With a client CA configured, gRPC verifies a presented certificate during the handshake
    // and only then marks the peer authenticated (its identity is the certificate's names).
    const bool verified = context != nullptr && context->IsPeerAuthenticated();
    const auto decision = tls::authorize_mutation(*material_, verified, authorization);
    if (decision == tls::AuthDecision::kAllowed) {
        // The token is spent: handlers (and their logs) never see it.
        if (!authorization.empty()) consumed->emplace("authorization", std::string(authorization));
        return grpc::Status::OK;
    }
    const std::string reason(tls::describe(decision, *material_));
    spdlog::info("grpc: {} over TCP refused: {}", std::string(path), reason);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, reason);
}

}  // namespace meshlane::grpc_api
