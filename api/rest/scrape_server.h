// The scrape listener (config key metrics_address, off by default; on in the DaemonSet at
// 0.0.0.0:9966): plain HTTP/1.1 on TCP for Prometheus and kubelet probes, which cannot speak to
// a unix socket or bring a client certificate. It serves exactly GET|HEAD /metrics, /healthz and
// /readyz — read-only views that the unix API also serves — and nothing else (404; other
// methods 405). Its own small limits (16 connections, 8 KiB header, no body, 5 s per read and
// write) keep a flood of scrapers from using the descriptors and time the unix API needs; both
// run on the agent's one io_context.
//
// Threading: construct, start() and stop() on the thread that runs the io_context.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "agent/common/result.h"
#include "agent/model/workload_registry.h"
#include "api/metrics/metrics_options.h"
#include "api/rest/rest_router.h"
#include "api/tls/tls_config.h"

namespace meshlane::rest {

struct ScrapeServerOptions {
    tls::TcpEndpoint endpoint;  // port 0 picks a free port (port() tells which)
    std::size_t max_connections = 16;
    std::size_t header_limit = 8 * 1024;
    std::chrono::seconds timeout{5};  // per request read and per response write
    metrics::MetricsOptions metrics;
    const ObservationSource* observations = nullptr;  // must outlive the server
    events::EventBus* events = nullptr;               // must outlive the server
};

struct ScrapeContext {
    WorkloadRegistry& registry;
    const ObservationSource* observations = nullptr;
    events::EventBus* events = nullptr;
    const metrics::MetricsOptions* metrics = nullptr;
};

// Pure: the scrape listener's whole routing (unit-tested without sockets). Never throws.
Response handle_scrape_request(const Request& request, const ScrapeContext& context);

class ScrapeServer {
  public:
    ScrapeServer(boost::asio::io_context& io, WorkloadRegistry& registry,
                 ScrapeServerOptions options);
    ~ScrapeServer();  // stop()
    ScrapeServer(const ScrapeServer&) = delete;
    ScrapeServer& operator=(const ScrapeServer&) = delete;

    // Binds and listens; then accepts on the io_context. On failure nothing is left open.
    Status start();
    // Stops accepting and closes open connections. Idempotent.
    void stop();
    std::uint16_t port() const;
    std::size_t active_connections() const;

    struct State;  // shared with the connection coroutines, which may outlive the server

  private:
    std::shared_ptr<State> state_;
};

}  // namespace meshlane::rest
