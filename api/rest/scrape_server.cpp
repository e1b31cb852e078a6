#include "api/rest/scrape_server.h"

#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <exception>
#include <map>

#include "api/rest/agent_routes.h"

namespace meshlane::rest {

namespace asio = boost::asio;
namespace beast = boost::beast;
using Tcp = asio::ip::tcp;

namespace {

constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);

struct ScrapeRoute {
    std::string_view path;
    Handler handler;
};

// The whole surface: read-only views, nothing that changes state or streams.
constexpr std::array<ScrapeRoute, 3> kScrapeRoutes{{
    {"/metrics", get_metrics},
    {"/healthz", get_healthz},
    {"/readyz", get_readyz},
}};

Response dispatch(const Request& request, const ScrapeContext& context) {
    const auto target = std::string_view(request.target());
    const auto path = target.substr(0, target.find('?'));
    for (const auto& route : kScrapeRoutes) {
        if (route.path != path) continue;
        if (request.method() != http::verb::get && request.method() != http::verb::head) {
            auto response = error_response(
                http::status::method_not_allowed, "method_not_allowed",
                std::string(request.method_string()) + " is not allowed on " + std::string(path));
            response.set(http::field::allow, "GET, HEAD");
            return response;
        }
        if (!request.body().empty())
            return error_response(http::status::payload_too_large, "payload_too_large",
                                  "the scrape listener takes no request body");
        const PathParams params;
        return route.handler(RouteContext{context.registry, request, params, context.observations,
                                          context.events, nullptr, context.metrics});
    }
    return error_response(http::status::not_found, "not_found",
                          "the scrape listener serves only /metrics, /healthz and /readyz");
}

}  // namespace

Response handle_scrape_request(const Request& request, const ScrapeContext& context) {
    Response response;
    try {
        response = dispatch(request, context);
    } catch (const std::exception& e) {
        response = error_response(http::status::internal_server_error, "internal",
                                  std::string("internal error: ") + e.what());
    }
    response.version(request.version());
    response.keep_alive(request.keep_alive());
    response.prepare_payload();
    if (request.method() == http::verb::head) response.body().clear();
    return response;
}

struct ScrapeServer::State {
    State(asio::io_context& io_context, WorkloadRegistry& registry_ref, ScrapeServerOptions opts)
        : io(io_context), registry(registry_ref), options(std::move(opts)) {}

    asio::io_context& io;
    WorkloadRegistry& registry;
    ScrapeServerOptions options;
    std::optional<Tcp::acceptor> acceptor;
    bool stopped = false;
    std::size_t active = 0;
    std::uint64_t next_id = 0;
    std::map<std::uint64_t, std::weak_ptr<beast::tcp_stream>> open;  // for stop()
};

namespace {

using State = ScrapeServer::State;

// Request after request on one connection (Prometheus keeps it alive between scrapes); every
// read and write has the timeout, so an idle or slow client gives its slot back.
asio::awaitable<void> serve(std::shared_ptr<State> state,
                            std::shared_ptr<beast::tcp_stream> stream) {
    const ScrapeContext context{state->registry, state->options.observations, state->options.events,
                                &state->options.metrics};
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(state->options.header_limit));
        parser.body_limit(0);
        stream->expires_after(state->options.timeout);
        auto [ec, bytes] = co_await http::async_read(*stream, buffer, parser, kAwait);
        if (ec) {
            if (ec == http::error::header_limit || ec == http::error::body_limit ||
                ec == http::error::bad_target || ec == http::error::bad_method) {
                auto response = error_response(http::status::bad_request, "invalid_argument",
                                               "malformed or oversized request: " + ec.message());
                response.keep_alive(false);
                response.prepare_payload();
                stream->expires_after(state->options.timeout);
                co_await http::async_write(*stream, response, kAwait);
            }
            break;
        }
        auto response = handle_scrape_request(parser.get(), context);
        stream->expires_after(state->options.timeout);
        auto [write_ec, written] = co_await http::async_write(*stream, response, kAwait);
        if (write_ec || !response.keep_alive() || state->stopped) break;
    }
    beast::error_code ignored;
    stream->socket().shutdown(Tcp::socket::shutdown_send, ignored);
    stream->close();
}

asio::awaitable<void> run_session(std::shared_ptr<State> state, Tcp::socket socket) {
    auto stream = std::make_shared<beast::tcp_stream>(std::move(socket));
    if (state->active >= state->options.max_connections) {
        // Over the cap: say so without reading, then close.
        auto response = error_response(http::status::service_unavailable, "unavailable",
                                       "too many scrape connections (limit " +
                                           std::to_string(state->options.max_connections) + ")");
        response.keep_alive(false);
        response.prepare_payload();
        stream->expires_after(state->options.timeout);
        co_await http::async_write(*stream, response, kAwait);
        stream->close();
        co_return;
    }
    const auto id = state->next_id++;
    ++state->active;
    state->open.emplace(id, stream);
    co_await serve(state, stream);
    state->open.erase(id);
    --state->active;
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> state) {
    for (;;) {
        auto [ec, socket] = co_await state->acceptor->async_accept(kAwait);
        if (state->stopped || ec == asio::error::operation_aborted) co_return;
        if (ec) {
            // EMFILE and friends: back off instead of spinning on a full descriptor table.
            spdlog::warn("metrics listener: accept failed: {}", ec.message());
            asio::steady_timer backoff(state->io, std::chrono::milliseconds(100));
            co_await backoff.async_wait(kAwait);
            continue;
        }
        asio::co_spawn(state->io, run_session(state, std::move(socket)), asio::detached);
    }
}

Status bind(Tcp::acceptor& acceptor, const tls::TcpEndpoint& where) {
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(where.address, ec);
    if (ec) return Error::invalid("metrics_address " + where.text() + ": " + ec.message());
    const Tcp::endpoint endpoint(address, where.port);
    acceptor.open(endpoint.protocol(), ec);
    if (ec) return Error::from_errno(ec.value(), "open metrics listener socket");
    acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (ec) return Error::from_errno(ec.value(), "SO_REUSEADDR on the metrics listener");
    if (where.v6) acceptor.set_option(asio::ip::v6_only(true), ec);
    acceptor.bind(endpoint, ec);
    if (ec) return Error::from_errno(ec.value(), "bind metrics listener " + where.text());
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Error::from_errno(ec.value(), "listen on metrics listener " + where.text());
    return Ok{};
}

}  // namespace

ScrapeServer::ScrapeServer(asio::io_context& io, WorkloadRegistry& registry,
                           ScrapeServerOptions options)
    : state_(std::make_shared<State>(io, registry, std::move(options))) {}

ScrapeServer::~ScrapeServer() { stop(); }

Status ScrapeServer::start() {
    if (state_->acceptor) return Error{EALREADY, "metrics listener already started"};
    auto& acceptor = state_->acceptor.emplace(state_->io);
    if (auto bound = bind(acceptor, state_->options.endpoint); !bound) {
        boost::system::error_code ignored;
        acceptor.close(ignored);
        state_->acceptor.reset();
        return bound;
    }
    state_->stopped = false;
    asio::co_spawn(state_->io, accept_loop(state_), asio::detached);
    const tls::TcpEndpoint bound{state_->options.endpoint.address, port(),
                                 state_->options.endpoint.loopback, state_->options.endpoint.v6};
    spdlog::info("metrics listener: http://{} serves GET /metrics, /healthz, /readyz{}",
                 bound.text(),
                 bound.loopback ? "" : " (not loopback: reachable from other hosts, read-only)");
    return Ok{};
}

void ScrapeServer::stop() {
    if (!state_ || state_->stopped || !state_->acceptor) return;
    state_->stopped = true;
    boost::system::error_code ignored;
    state_->acceptor->close(ignored);
    auto open = state_->open;
    for (auto& [id, weak] : open)
        if (auto stream = weak.lock()) stream->close();
}

std::uint16_t ScrapeServer::port() const {
    if (!state_->acceptor || !state_->acceptor->is_open()) return 0;
    boost::system::error_code ec;
    const auto endpoint = state_->acceptor->local_endpoint(ec);
    return ec ? 0 : endpoint.port();
}

std::size_t ScrapeServer::active_connections() const { return state_->active; }

}  // namespace meshlane::rest
