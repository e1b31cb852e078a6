// Authorization on the gRPC TCP listener, with the rule REST applies (api/tls/tls_auth.h): the
// read-only methods below are open to any TLS client; every other method (Enroll, Unenroll,
// Verify, and whatever is added later until listed here) needs `authorization: Bearer <token>`
// metadata or a client certificate the handshake verified, else UNAUTHENTICATED. It hangs off the
// TCP port's credentials only, so the unix socket (root-only) is unaffected.
#pragma once

#include <grpcpp/security/auth_metadata_processor.h>

#include <memory>
#include <string_view>

#include "api/tls/tls_config.h"

namespace meshlane::grpc_api {

// Full method paths ("/meshlane.v1.Agent/Status") that change nothing.
bool is_read_only_method(std::string_view path);

class TcpAuthProcessor final : public grpc::AuthMetadataProcessor {
  public:
    explicit TcpAuthProcessor(std::shared_ptr<const tls::TlsMaterial> material)
        : material_(std::move(material)) {}

    // Cheap and non-blocking: runs on the call's thread.
    bool IsBlocking() const override { return false; }
    grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext* context,
                         OutputMetadata* consumed, OutputMetadata* response) override;

  private:
    std::shared_ptr<const tls::TlsMaterial> material_;
};

}  // namespace meshlane::grpc_api
