// The REST API's transport: HTTP/1.1 (Boost.Beast) over a unix stream socket and, optionally,
// over TLS on a TCP listener (Beast ssl_stream; plain-text TCP does not exist), one C++20
// coroutine per connection. Requests go to RestRouter; this layer only enforces limits (read
// timeout, header and body size, connection cap), owns the listening sockets and, on TCP, the
// authorization of mutating calls (api/tls/tls_auth.h). The session and accept loop are
// templates over the stream, so the TCP listener is one more acceptor, not another server.
//
// Threading: construct, start() and stop() on the thread that runs the io_context (stop() may
// also be called after that io_context has stopped running). Quick handlers run on the
// io_context thread; blocking ones (Route::blocking) on a worker pool with a deadline, so the
// registry must be thread-safe. stop() waits for the worker calls still running.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "agent/common/result.h"
#include "agent/model/workload_registry.h"
#include "api/metrics/metrics_options.h"
#include "api/tls/tls_config.h"

namespace meshlane {
class ObservationSource;  // agent/observe/observation_source.h
namespace events {
class EventBus;  // agent/events/event_bus.h
}
}  // namespace meshlane

namespace meshlane::rest {

namespace detail {
struct ServerState;  // shared with the connection coroutines, which may outlive the server
}

struct RestServerOptions {
    std::string unix_socket_path = "/run/meshlane/api.sock";
    std::size_t body_limit = 1 << 20;
    std::size_t header_limit = 16 * 1024;
    // Applies to each request read (header and body together) and to each response write.
    std::chrono::seconds read_timeout{10};
    // Budgets, per transport and principal (docs/api.md "Budgets"). The unix socket (root, the
    // CLI, the CNI plugin) has its own, which no TCP client can use up.
    // Unix: open connections (beyond: the request is read, answered 429, closed), open
    // GET /v1/events?follow=true streams (beyond: 429; streams count as connections too).
    std::size_t max_connections = 256;
    std::size_t max_streaming_clients = 32;
    // TCP: TLS handshakes in progress (beyond: a new connection is closed at once, so the
    // agent's descriptors stay bounded); then, per principal (a verified client certificate,
    // or anonymous), open connections and event streams.
    std::size_t max_tcp_handshakes = 32;
    std::size_t max_tcp_connections = 64;
    std::size_t max_tcp_streaming_clients = 8;
    // Blocking calls (enroll, unenroll, verify, diagnose: Route::blocking) run on this many
    // worker threads (enough for both budgets below: a call never queues behind another),
    // never on the io thread. Running or queued per transport: beyond, 429.
    std::size_t worker_threads = 10;
    std::size_t max_blocking_calls = 8;
    std::size_t max_tcp_blocking_calls = 2;
    // A blocking call that has not finished by then is answered 503; it still holds its budget
    // slot until it really ends.
    std::chrono::seconds blocking_deadline{30};
    // Serves /v1/connections and /v1/drops when set; must outlive the server.
    const ObservationSource* observations = nullptr;
    // Serves /v1/events (and its /metrics families) when set; must outlive the server.
    events::EventBus* events = nullptr;
    // GET /metrics cardinality switches (config metrics_workload_histograms, ...).
    metrics::MetricsOptions metrics;
    // Optional TLS listener on TCP. Read-only calls are open to any TLS client; mutating ones
    // need the bearer token or a verified client certificate (401 otherwise). Port 0 picks a
    // free port (tcp_port() tells which).
    struct Tcp {
        tls::TcpEndpoint endpoint;
        std::shared_ptr<const tls::TlsMaterial> tls;
    };
    std::optional<Tcp> tcp;
};

class RestServer {
  public:
    // `registry` and `io` must outlive the server and every coroutine it spawned, i.e. keep
    // them alive until the io_context has stopped running or been destroyed.
    RestServer(boost::asio::io_context& io, WorkloadRegistry& registry, RestServerOptions options);
    ~RestServer();  // stop()
    RestServer(const RestServer&) = delete;
    RestServer& operator=(const RestServer&) = delete;

    // Binds and listens on options.unix_socket_path: creates missing parent directories (0755),
    // removes a stale socket file only when it is a socket nobody accepts on, refuses to
    // replace anything else, and leaves the socket mode 0600 (root-only API). Then the TCP
    // listener when configured (its TLS context first: a bad certificate fails here). Starts
    // accepting on the io_context only once everything is bound; on failure nothing is left.
    Status start();
    // Stops accepting, closes open connections and removes the socket file. Idempotent.
    void stop();

    std::size_t active_connections() const;
    std::size_t active_streams() const;
    // The bound TCP port; 0 without a TCP listener.
    std::uint16_t tcp_port() const;

  private:
    Status start_tcp();

    std::shared_ptr<detail::ServerState> state_;
    // Outside the shared state: a worker must never drop the last reference to the pool that
    // runs it. Joined by stop() and the destructor.
    std::unique_ptr<boost::asio::thread_pool> workers_;
};

}  // namespace meshlane::rest
