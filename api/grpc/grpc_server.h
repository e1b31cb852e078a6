// The gRPC API (api/meshlane.proto, service meshlane.v1.Agent) with the standard health service
// and server reflection, on a unix socket (mode 0600: root only). gRPC's synchronous server runs
// the handlers on its own threads; the registry and event bus are thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "agent/common/result.h"
#include "agent/model/workload_registry.h"
#include "api/tls/tls_config.h"

namespace meshlane::events {
class EventBus;
}
namespace meshlane {
class ObservationSource;  // agent/observe/observation_source.h
}

namespace meshlane::grpc_api {

// The service name grpc.health.v1 answers for (besides "").
inline constexpr const char* kAgentServiceName = "meshlane.v1.Agent";

struct GrpcServerOptions {
    std::string unix_socket_path = "/run/meshlane/grpc.sock";
    // Open StreamEvents calls on the unix socket; beyond, RESOURCE_EXHAUSTED.
    std::size_t max_streams = 16;
    // Largest request message (the REST body limit's counterpart).
    int max_receive_message_bytes = 1 << 20;
    // Handler threads of the unix socket's server; streams hold one each while open.
    int max_threads = 64;
    // The TCP listener is a server of its own with its own budgets (docs/api.md "Budgets"):
    // event streams, handler threads, memory of all its connections together (gRPC resource
    // quota), concurrent HTTP/2 streams per connection, connection age and idleness.
    std::size_t max_tcp_streams = 8;
    int max_tcp_threads = 16;
    std::size_t tcp_memory_bytes = 32 << 20;
    std::size_t max_tcp_concurrent_streams = 16;
    std::chrono::milliseconds tcp_max_connection_age{std::chrono::minutes(30)};
    std::chrono::milliseconds tcp_max_connection_idle{std::chrono::minutes(5)};
    // The observer's data for Diagnose (drops, refused connects); null: not running.
    const ObservationSource* observations = nullptr;
    // Optional TCP listener with SslServerCredentials (same files and rule as REST: read-only
    // methods open to TLS clients, the rest need a bearer token or a verified client
    // certificate, api/grpc/tcp_auth.h). Port 0 picks a free port (tcp_port()).
    struct Tcp {
        tls::TcpEndpoint endpoint;
        std::shared_ptr<const tls::TlsMaterial> tls;
    };
    std::optional<Tcp> tcp;
};

class GrpcServer {
  public:
    // `registry` and `events` must outlive the server; `events` may be null (StreamEvents then
    // answers UNAVAILABLE).
    GrpcServer(WorkloadRegistry& registry, events::EventBus* events, GrpcServerOptions options);
    ~GrpcServer();  // stop()
    GrpcServer(const GrpcServer&) = delete;
    GrpcServer& operator=(const GrpcServer&) = delete;

    // Same socket-file rules as the REST server: parents created, a stale socket replaced, a
    // live one or a non-socket refused; then mode 0600.
    Status start();
    // Ends open streams, waits up to `grace` for calls in flight, removes the socket. Idempotent.
    void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));

    std::size_t active_streams() const;
    // The bound TCP port; 0 without a TCP listener.
    int tcp_port() const;

    // Sets grpc.health.v1 for "" and kAgentServiceName to SERVING when the agent is ready or
    // degraded (agent/model/readiness.h: the same rule as GET /readyz), NOT_SERVING when not
    // ready. start() calls it; the agent again every few seconds. Returns the state set.
    bool refresh_health();

    struct Impl;  // public for the file-local helpers in grpc_server.cpp

  private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace meshlane::grpc_api
