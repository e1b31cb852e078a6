#include "api/rest/rest_server.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <functional>
#include <map>
#include <optional>

#include "agent/common/log_limiter.h"
#include "agent/common/unix_socket_path.h"
#include "api/rest/rest_router.h"
#include "api/tls/tls_auth.h"

namespace meshlane::rest {

namespace asio = boost::asio;
namespace beast = boost::beast;
using UnixProtocol = asio::local::stream_protocol;
using TcpProtocol = asio::ip::tcp;
using UnixStream = beast::basic_stream<UnixProtocol>;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);

// Who a connection belongs to, for the budgets: the unix socket (root: the CLI, the CNI plugin),
// a TCP client whose certificate the handshake verified, any other TCP client.
enum class Principal : std::size_t { kUnix = 0, kTcpCertificate = 1, kTcpAnonymous = 2 };

struct Budget {
    std::size_t connections = 0;
    std::size_t streams = 0;
    std::size_t blocking = 0;  // blocking calls running or queued on the worker pool
};

struct Limits {
    std::size_t connections;
    std::size_t streams;
    std::size_t blocking;
};

Limits limits_for(const RestServerOptions& options, Principal principal) {
    if (principal == Principal::kUnix)
        return {options.max_connections, options.max_streaming_clients, options.max_blocking_calls};
    return {options.max_tcp_connections, options.max_tcp_streaming_clients,
            options.max_tcp_blocking_calls};
}

// A request that is refused after the connection cap is read within this, then answered.
constexpr std::chrono::seconds kRefusalReadTimeout{2};

struct detail::ServerState : std::enable_shared_from_this<detail::ServerState> {
    ServerState(asio::io_context& io_context, WorkloadRegistry& registry, RestServerOptions opts)
        : io(io_context),
          router(registry, opts.body_limit, opts.observations, opts.events, opts.metrics),
          options(std::move(opts)) {}

    asio::io_context& io;
    RestRouter router;
    RestServerOptions options;
    std::optional<UnixProtocol::acceptor> unix_acceptor;
    std::optional<std::pair<dev_t, ino_t>> unix_socket_identity;  // what stop() may unlink
    std::optional<asio::ssl::context> tls_context;
    std::optional<TcpProtocol::acceptor> tcp_acceptor;
    bool stopped = false;
    asio::thread_pool* workers = nullptr;  // owned by RestServer
    std::array<Budget, 3> budgets;         // by Principal
    // TCP sockets open (from accept to close) and of those still in the TLS handshake.
    std::size_t tcp_sockets = 0;
    std::size_t handshaking = 0;
    // Lines an unauthenticated client can cause are rate-limited (LogLimiter).
    LogLimiter refusal_log;
    LogLimiter handshake_log;
    LogLimiter accept_log;
    std::uint64_t next_session_id = 0;

    Budget& budget(Principal principal) { return budgets[static_cast<std::size_t>(principal)]; }
    std::map<std::uint64_t, std::function<void()>> closers;  // open sessions, for stop()
};

namespace {

// ---------------------------------------------------------------------------------------------
// Socket file housekeeping
// ---------------------------------------------------------------------------------------------

// mkdir -p with mode 0755 for the directories it creates; existing ones are left alone.

// A socket file left by a crashed agent makes bind() fail with EADDRINUSE. It is removed only
// when it is a socket and connect() is refused, i.e. no live agent owns it.

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

Response transport_error_response(http::status status, std::string_view message) {
    auto response = error_response(status, error_code_for_status(status), message);
    response.keep_alive(false);
    response.prepare_payload();
    return response;
}

// What to tell a client whose request could not be read. nullopt: just close (clean EOF, a
// timeout, a reset: nobody is listening for an answer, as in the Beast examples).
std::optional<Response> reply_for_read_error(const beast::error_code& ec,
                                             const RestServerOptions& options) {
    if (ec == http::error::body_limit) {
        return transport_error_response(
            http::status::payload_too_large,
            "request body exceeds " + std::to_string(options.body_limit) + " bytes");
    }
    if (ec == http::error::header_limit) {
        return transport_error_response(
            http::status::request_header_fields_too_large,
            "request header exceeds " + std::to_string(options.header_limit) + " bytes");
    }
    if (ec.category() == beast::http::make_error_code(http::error::bad_target).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
        return transport_error_response(http::status::bad_request,
                                        "malformed HTTP request: " + ec.message());
    }
    return std::nullopt;
}

bool expects_continue(const http::request_parser<http::string_body>& parser) {
    return beast::iequals(parser.get()[http::field::expect], "100-continue");
}

// One request: header, optional 100 Continue (curl waits a second for it on bodies > 1 KiB),
// body. One deadline covers the whole read, so a slow sender cannot hold a slot forever.
template <typename Stream>
asio::awaitable<beast::error_code> read_request(Stream& stream, beast::flat_buffer& buffer,
                                                http::request_parser<http::string_body>& parser,
                                                const RestServerOptions& options,
                                                std::chrono::seconds timeout) {
    parser.header_limit(static_cast<std::uint32_t>(options.header_limit));
    parser.body_limit(options.body_limit);
    beast::get_lowest_layer(stream).expires_after(timeout);
    auto [ec, header_bytes] = co_await http::async_read_header(stream, buffer, parser, kAwait);
    if (ec) co_return ec;
    if (expects_continue(parser)) {
        http::response<http::empty_body> go_on{http::status::continue_, 11};
        auto [write_ec, written] = co_await http::async_write(stream, go_on, kAwait);
        if (write_ec) co_return write_ec;
    }
    auto [body_ec, body_bytes] = co_await http::async_read(stream, buffer, parser, kAwait);
    co_return body_ec;
}

template <typename Stream>
asio::awaitable<bool> write_response(Stream& stream, Response& response,
                                     const RestServerOptions& options) {
    beast::get_lowest_layer(stream).expires_after(options.read_timeout);
    auto [ec, bytes] = co_await http::async_write(stream, response, kAwait);
    co_return !ec;
}

// ---------------------------------------------------------------------------------------------
// Streaming responses (GET /v1/events?follow=true): header, then one chunk per batch of NDJSON
// lines until the client goes away, the agent stops or the bus closes. Every chunk write has
// the write timeout, so a client that stops reading loses its slot once the socket buffer is
// full; meanwhile its bounded bus queue drops (and counts) what it cannot take.
// ---------------------------------------------------------------------------------------------

class StreamSlot {
  public:
    explicit StreamSlot(Budget& budget) : budget_(budget) { ++budget_.streams; }
    ~StreamSlot() { --budget_.streams; }
    StreamSlot(const StreamSlot&) = delete;
    StreamSlot& operator=(const StreamSlot&) = delete;

  private:
    Budget& budget_;
};

constexpr std::size_t kStreamBatch = 256;
// With nothing to send, the loop still wakes this often (bus notifications wake it earlier).
constexpr std::chrono::seconds kStreamIdleWake{5};

template <typename Stream>
asio::awaitable<bool> write_chunk(Stream& stream, const std::string& text,
                                  const RestServerOptions& options) {
    beast::get_lowest_layer(stream).expires_after(options.read_timeout);
    auto [ec, bytes] =
        co_await asio::async_write(stream, http::make_chunk(asio::buffer(text)), kAwait);
    // An armed expiry with no operation pending would fail the next operation at once.
    beast::get_lowest_layer(stream).expires_never();
    co_return !ec;
}

template <typename Stream>
asio::awaitable<void> serve_stream(Stream& stream, detail::ServerState& state, Budget& budget,
                                   Response& head, StreamingReply& reply) {
    StreamSlot slot(budget);
    auto wake = std::make_shared<asio::steady_timer>(state.io);
    auto client_gone = std::make_shared<bool>(false);
    // Publishers run on any thread: hop to the io_context before touching the timer.
    reply.subscription->set_notifier([&io = state.io, weak = std::weak_ptr(wake)] {
        asio::post(io, [weak] {
            if (auto timer = weak.lock()) timer->cancel();
        });
    });
    // The client sends nothing after its request; readability means it closed (or broke the
    // protocol): either way the stream ends.
    beast::get_lowest_layer(stream).socket().async_wait(
        asio::socket_base::wait_read, [wake, client_gone](const boost::system::error_code&) {
            *client_gone = true;
            wake->cancel();
        });
    http::response<http::empty_body> header{head.base()};
    http::response_serializer<http::empty_body> serializer{header};
    beast::get_lowest_layer(stream).expires_after(state.options.read_timeout);
    auto [header_ec, header_bytes] = co_await http::async_write_header(stream, serializer, kAwait);
    beast::get_lowest_layer(stream).expires_never();
    if (header_ec) co_return;

    std::string text;
    for (auto& item : reply.backlog) text += reply.encode(item);
    reply.backlog.clear();
    if (!text.empty() && !co_await write_chunk(stream, text, state.options)) co_return;
    for (;;) {
        if (state.stopped || *client_gone) co_return;
        auto items = reply.subscription->poll(kStreamBatch);
        if (items.empty()) {
            if (reply.subscription->closed()) break;
            wake->expires_after(kStreamIdleWake);
            co_await wake->async_wait(kAwait);
            continue;
        }
        text.clear();
        for (const auto& item : items) text += reply.encode(item);
        if (!co_await write_chunk(stream, text, state.options)) co_return;
    }
    // The bus closed (agent stopping): end the body properly.
    beast::get_lowest_layer(stream).expires_after(state.options.read_timeout);
    co_await asio::async_write(stream, http::make_chunk_last(), kAwait);
    beast::get_lowest_layer(stream).expires_never();
}

// Who is on the other end, as far as authorization cares. The unix socket is root-only
// (mode 0600), so its clients are trusted with every call.
struct Peer {
    const tls::TlsMaterial* tls = nullptr;  // set on the TCP listener: mutations need auth
    bool certificate_verified = false;      // the handshake verified a client certificate

    Principal principal() const {
        if (tls == nullptr) return Principal::kUnix;
        return certificate_verified ? Principal::kTcpCertificate : Principal::kTcpAnonymous;
    }
};

// A state-changing call: everything but GET/HEAD (the route table allows mutations only by
// POST/DELETE; any other method is refused by the router anyway, authorized or not).
bool mutates(const Request& request) {
    return request.method() != http::verb::get && request.method() != http::verb::head;
}

// nullopt: go ahead. Otherwise the 401 to send instead.
std::optional<Response> refuse_unauthorized(const Request& request, const Peer& peer) {
    if (peer.tls == nullptr || !mutates(request)) return std::nullopt;
    const auto decision = tls::authorize_mutation(*peer.tls, peer.certificate_verified,
                                                  request[http::field::authorization]);
    if (decision == tls::AuthDecision::kAllowed) return std::nullopt;
    auto response = error_response(http::status::unauthorized, "unauthenticated",
                                   tls::describe(decision, *peer.tls));
    response.set(http::field::www_authenticate, tls::www_authenticate(decision));
    response.version(request.version());
    response.keep_alive(request.keep_alive());
    response.prepare_payload();
    return response;
}

// Runs a blocking route on the worker pool and waits for it on the io thread, at most until the
// deadline. The worker posts its response back to the io thread; a late one is dropped there.
// The call holds its budget slot until it really ends, so slow calls cannot pile up threads.
asio::awaitable<Response> handle_on_worker(detail::ServerState& state, Budget& budget,
                                           std::size_t limit, Request request) {
    if (budget.blocking >= limit) {
        auto busy = error_response(http::status::too_many_requests, "too_many_calls",
                                   "too many enroll/unenroll/verify/diagnose calls in progress "
                                   "(limit " +
                                       std::to_string(limit) + "); retry later");
        busy.version(request.version());
        busy.keep_alive(request.keep_alive());
        busy.prepare_payload();
        co_return busy;
    }
    ++budget.blocking;
    auto timer = std::make_shared<asio::steady_timer>(state.io, state.options.blocking_deadline);
    auto result = std::make_shared<std::optional<Response>>();
    asio::post(*state.workers, [self = state.shared_from_this(), request = std::move(request),
                                weak_timer = std::weak_ptr(timer), result, &budget]() mutable {
        Response response = self->router.handle(request);
        auto& io = self->io;
        // `self` moves on to the io thread: the last reference is never dropped here.
        asio::post(io, [self = std::move(self), response = std::move(response), weak_timer, result,
                        &budget]() mutable {
            --budget.blocking;
            *result = std::move(response);
            if (auto waiting = weak_timer.lock()) waiting->cancel();
        });
    });
    co_await timer->async_wait(kAwait);
    if (*result) co_return std::move(**result);
    auto late = transport_error_response(
        http::status::service_unavailable,
        "the call did not finish within " +
            std::to_string(state.options.blocking_deadline.count()) +
            " s; it goes on in the agent (see the agent log); retry later");
    co_return late;
}

template <typename Stream>
asio::awaitable<void> serve_connection(Stream& stream, detail::ServerState& state,
                                       const Peer& peer) {
    Budget& budget = state.budget(peer.principal());
    const Limits limits = limits_for(state.options, peer.principal());
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        const auto ec = co_await read_request(stream, buffer, parser, state.options,
                                              state.options.read_timeout);
        if (ec) {
            if (auto reply = reply_for_read_error(ec, state.options)) {
                co_await write_response(stream, *reply, state.options);
            }
            break;
        }
        if (auto refusal = refuse_unauthorized(parser.get(), peer)) {
            if (auto suppressed = state.refusal_log.admit())
                spdlog::info("api: {} {:.200} over TCP refused: {}{}",
                             std::string(parser.get().method_string()),
                             std::string(parser.get().target()), refusal->body(),
                             *suppressed
                                 ? " (" + std::to_string(*suppressed) + " more refusals not logged)"
                                 : "");
            if (!co_await write_response(stream, *refusal, state.options)) break;
            if (!refusal->keep_alive() || state.stopped) break;
            continue;
        }
        const std::string method(parser.get().method_string());
        const std::string target(parser.get().target());
        StreamingReply streaming;
        Response response;
        if (runs_blocking(parser.get())) {
            response = co_await handle_on_worker(state, budget, limits.blocking, parser.release());
        } else {
            streaming.allowed = budget.streams < limits.streams;
            response = state.router.handle(parser.get(), streaming);
        }
        spdlog::debug("api: {} {:.200} -> {}{}", method, target, response.result_int(),
                      streaming.subscription ? " (stream)" : "");
        if (state.stopped) break;
        if (streaming.subscription) {
            co_await serve_stream(stream, state, budget, response, streaming);
            break;
        }
        if (!co_await write_response(stream, response, state.options)) break;
        if (!response.keep_alive() || state.stopped) break;
    }
}

// Ends a connection politely: FIN on a unix socket; TLS close_notify (bounded, the peer may be
// gone or never answer) and then FIN on TCP.
asio::awaitable<void> finish(UnixStream& stream, const RestServerOptions&) {
    beast::error_code ignored;
    stream.socket().shutdown(asio::socket_base::shutdown_send, ignored);
    co_return;
}

constexpr std::chrono::seconds kTlsShutdownTimeout{2};

asio::awaitable<void> finish(TlsStream& stream, const RestServerOptions& options) {
    auto& tcp = beast::get_lowest_layer(stream);
    if (!tcp.socket().is_open()) co_return;
    tcp.expires_after(std::min<std::chrono::seconds>(options.read_timeout, kTlsShutdownTimeout));
    co_await stream.async_shutdown(kAwait);
    beast::error_code ignored;
    tcp.socket().shutdown(asio::socket_base::shutdown_send, ignored);
    tcp.close();
}

// Counts the connection in its principal's budget and registers a closer for stop(); undone on
// every exit path.
class SessionRegistration {
  public:
    SessionRegistration(detail::ServerState& state, Budget& budget, std::function<void()> closer)
        : state_(state), budget_(budget), id_(state.next_session_id++) {
        ++budget_.connections;
        state_.closers.emplace(id_, std::move(closer));
    }
    ~SessionRegistration() {
        --budget_.connections;
        state_.closers.erase(id_);
    }
    SessionRegistration(const SessionRegistration&) = delete;
    SessionRegistration& operator=(const SessionRegistration&) = delete;

  private:
    detail::ServerState& state_;
    Budget& budget_;
    std::uint64_t id_;
};

// Increments a counter for its lifetime.
class Counted {
  public:
    explicit Counted(std::size_t& counter) : counter_(counter) { ++counter_; }
    ~Counted() { --counter_; }
    Counted(const Counted&) = delete;
    Counted& operator=(const Counted&) = delete;

  private:
    std::size_t& counter_;
};

// Over the cap: answer 429 at once (a client that sends nothing still learns why), then read
// what the client sends, briefly: closing a socket with unread data in it resets the
// connection, and the client would see the reset instead of the 429.
template <typename Stream>
asio::awaitable<void> refuse_busy(Stream& stream, detail::ServerState& state, std::size_t limit) {
    auto response = transport_error_response(
        http::status::too_many_requests,
        "too many open API connections (limit " + std::to_string(limit) + "); retry later");
    co_await write_response(stream, response, state.options);
}

template <typename Stream>
asio::awaitable<void> drain_request(Stream& stream, detail::ServerState& state) {
    beast::flat_buffer buffer;
    http::request_parser<http::string_body> parser;
    co_await read_request(stream, buffer, parser, state.options, kRefusalReadTimeout);
}

asio::awaitable<void> run_unix_session(std::shared_ptr<detail::ServerState> state,
                                       UnixProtocol::socket socket) {
    auto stream = std::make_shared<UnixStream>(std::move(socket));
    Budget& budget = state->budget(Principal::kUnix);
    if (budget.connections >= state->options.max_connections) {
        co_await refuse_busy(*stream, *state, state->options.max_connections);
        co_await finish(*stream, state->options);  // half-close: the client reads 429, then EOF
        co_await drain_request(*stream, *state);
        co_return;
    }
    SessionRegistration registration(*state, budget, [weak = std::weak_ptr<UnixStream>(stream)] {
        if (auto open = weak.lock()) open->close();
    });
    co_await serve_connection(*stream, *state, Peer{});
    co_await finish(*stream, state->options);
}

// The handshake verified the client's certificate against tls_client_ca_file (with verify_peer
// a certificate that fails verification fails the handshake, so this is belt and braces).
bool peer_certificate_verified(SSL* ssl) {
    X509* certificate = SSL_get1_peer_certificate(ssl);
    const bool verified = certificate != nullptr && SSL_get_verify_result(ssl) == X509_V_OK;
    X509_free(certificate);
    return verified;
}

std::string endpoint_text(const TcpProtocol::endpoint& remote) {
    return remote.address().to_string() + ":" + std::to_string(remote.port());
}

// The handshake is a read like any other: a client that stalls in it loses its slot.
asio::awaitable<bool> tls_handshake(TlsStream& stream, detail::ServerState& state,
                                    const TcpProtocol::endpoint& remote) {
    Counted handshaking(state.handshaking);
    auto& tcp = beast::get_lowest_layer(stream);
    tcp.expires_after(state.options.read_timeout);
    auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, kAwait);
    tcp.expires_never();
    if (!ec) co_return true;
    if (auto suppressed = state.handshake_log.admit())
        spdlog::info(
            "api: TLS handshake with {} failed: {}{}", endpoint_text(remote), ec.message(),
            *suppressed ? " (" + std::to_string(*suppressed) + " more failed handshakes not logged)"
                        : "");
    tcp.close();
    co_return false;
}

asio::awaitable<void> run_tls_session(std::shared_ptr<detail::ServerState> state,
                                      TcpProtocol::socket socket) {
    Counted open_socket(state->tcp_sockets);
    boost::system::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    auto stream = std::make_shared<TlsStream>(std::move(socket), *state->tls_context);
    if (!co_await tls_handshake(*stream, *state, remote)) co_return;
    const tls::TlsMaterial& material = *state->options.tcp->tls;
    Peer peer{&material, peer_certificate_verified(stream->native_handle())};
    Budget& budget = state->budget(peer.principal());
    if (budget.connections >= state->options.max_tcp_connections) {
        co_await refuse_busy(*stream, *state, state->options.max_tcp_connections);
        co_await drain_request(*stream, *state);
    } else {
        SessionRegistration registration(*state, budget, [weak = std::weak_ptr<TlsStream>(stream)] {
            if (auto open = weak.lock()) beast::get_lowest_layer(*open).close();
        });
        co_await serve_connection(*stream, *state, peer);
    }
    co_await finish(*stream, state->options);
}

// Whether an accepted socket may start a session. The unix socket always (its session answers
// 429 past the cap). On TCP the agent's descriptors stay bounded: handshakes in progress and
// TCP sockets open in all are capped, and a socket beyond is closed at once, unanswered.
bool admit(detail::ServerState& state, const UnixProtocol::socket&) { return !state.stopped; }

bool admit(detail::ServerState& state, const TcpProtocol::socket&) {
    const auto& o = state.options;
    const std::size_t socket_cap = o.max_tcp_handshakes + 2 * o.max_tcp_connections + 2 * 8;
    if (state.handshaking < o.max_tcp_handshakes && state.tcp_sockets < socket_cap) return true;
    if (auto suppressed = state.accept_log.admit())
        spdlog::warn(
            "api: TCP connection closed unanswered: {} handshakes in progress (limit {}), "
            "{} TCP sockets open (limit {}){}",
            state.handshaking, o.max_tcp_handshakes, state.tcp_sockets, socket_cap,
            *suppressed ? " (" + std::to_string(*suppressed) + " more not logged)" : "");
    return false;
}

template <typename Acceptor, typename Session>
asio::awaitable<void> accept_loop(std::shared_ptr<detail::ServerState> state, Acceptor& acceptor,
                                  Session session) {
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(kAwait);
        if (state->stopped || ec == asio::error::operation_aborted) co_return;
        if (ec) {
            // EMFILE and friends: back off instead of spinning on a full descriptor table.
            if (auto suppressed = state->accept_log.admit())
                spdlog::warn("api: accept failed: {}", ec.message());
            asio::steady_timer backoff(state->io, std::chrono::milliseconds(100));
            co_await backoff.async_wait(kAwait);
            continue;
        }
        if (!admit(*state, socket)) continue;  // the socket closes here
        asio::co_spawn(state->io, session(state, std::move(socket)), asio::detached);
    }
}

Status bind_unix_acceptor(UnixProtocol::acceptor& acceptor, const std::string& path) {
    boost::system::error_code ec;
    acceptor.open(UnixProtocol(), ec);
    if (ec) return Error::from_errno(ec.value(), "open API socket");
    acceptor.bind(UnixProtocol::endpoint(path), ec);
    if (ec) return Error::from_errno(ec.value(), "bind API socket " + path);
    // Before listen(), nobody can connect yet, so there is no window with a wider mode.
    if (::chmod(path.c_str(), 0600) != 0) return Error::last_errno("chmod 0600 " + path);
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Error::from_errno(ec.value(), "listen on API socket " + path);
    return Ok{};
}

// Sends the CA names in the CertificateRequest, so a client holding several certificates picks
// one this server can verify.
void advertise_client_cas(SSL_CTX* ctx, const std::string& ca_pem) {
    BIO* bio = BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size()));
    if (bio == nullptr) return;
    while (X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
        SSL_CTX_add_client_CA(ctx, ca);
        X509_free(ca);
    }
    ERR_clear_error();  // the loop ends on "no more PEM data"
    BIO_free(bio);
}

// TLS 1.2 or newer, the configured certificate chain and key, and client-certificate
// verification when a CA bundle is configured (required or merely requested).
Status make_tls_context(std::optional<asio::ssl::context>& out, const tls::TlsMaterial& material) {
    try {
        auto& context = out.emplace(asio::ssl::context::tls_server);
        SSL_CTX* ctx = context.native_handle();
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        context.set_options(asio::ssl::context::default_workarounds |
                            asio::ssl::context::single_dh_use);
        context.use_certificate_chain(asio::buffer(material.cert_chain_pem));
        context.use_private_key(asio::buffer(material.private_key_pem), asio::ssl::context::pem);
        if (material.verifies_clients()) {
            context.add_certificate_authority(asio::buffer(material.client_ca_pem));
            advertise_client_cas(ctx, material.client_ca_pem);
            context.set_verify_mode(asio::ssl::verify_peer |
                                    (material.require_client_cert
                                         ? asio::ssl::verify_fail_if_no_peer_cert
                                         : asio::ssl::verify_none));
            // Session resumption with verify_peer needs a session id context, or OpenSSL fails
            // every resumed handshake.
            static constexpr unsigned char kSessionContext[] = "meshlane-api";
            SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof kSessionContext - 1);
        } else {
            context.set_verify_mode(asio::ssl::verify_none);
        }
    } catch (const boost::system::system_error& e) {
        out.reset();
        return Error::invalid(std::string("API TLS setup: ") + e.what());
    }
    return Ok{};
}

Status bind_tcp_acceptor(TcpProtocol::acceptor& acceptor, const tls::TcpEndpoint& where) {
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(where.address, ec);
    if (ec) return Error::invalid("API TCP address " + where.text() + ": " + ec.message());
    const TcpProtocol::endpoint endpoint(address, where.port);
    acceptor.open(endpoint.protocol(), ec);
    if (ec) return Error::from_errno(ec.value(), "open API TCP socket");
    acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (ec) return Error::from_errno(ec.value(), "SO_REUSEADDR on API TCP socket");
    if (where.v6) acceptor.set_option(asio::ip::v6_only(true), ec);
    acceptor.bind(endpoint, ec);
    if (ec) return Error::from_errno(ec.value(), "bind API TCP listener " + where.text());
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Error::from_errno(ec.value(), "listen on API TCP " + where.text());
    return Ok{};
}

}  // namespace

RestServer::RestServer(asio::io_context& io, WorkloadRegistry& registry, RestServerOptions options)
    : state_(std::make_shared<detail::ServerState>(io, registry, std::move(options))),
      workers_(std::make_unique<asio::thread_pool>(
          std::max<std::size_t>(1, state_->options.worker_threads))) {
    state_->workers = workers_.get();
}

RestServer::~RestServer() {
    stop();
    workers_->join();
}

Status RestServer::start() {
    const std::string& path = state_->options.unix_socket_path;
    if (state_->unix_acceptor) return Error{EALREADY, "API server already started on " + path};
    if (path.empty() || path.front() != '/') {
        return Error::invalid("API socket path \"" + path + "\" must be absolute");
    }
    if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return Error{ENAMETOOLONG, "API socket path " + path + " is longer than " +
                                       std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) +
                                       " bytes"};
    }
    // TCP first: it has no side effects on the file system to undo if the unix socket fails.
    if (auto s = start_tcp(); !s) return s;
    auto undo_tcp = [this] {
        boost::system::error_code ignored;
        if (state_->tcp_acceptor) state_->tcp_acceptor->close(ignored);
        state_->tcp_acceptor.reset();
        state_->tls_context.reset();
    };
    if (auto s = create_parent_directories(path); !s) {
        undo_tcp();
        return s;
    }
    if (auto s = remove_stale_socket(path); !s) {
        undo_tcp();
        return s;
    }
    auto& acceptor = state_->unix_acceptor.emplace(state_->io);
    if (auto s = bind_unix_acceptor(acceptor, path); !s) {
        boost::system::error_code ignored;
        acceptor.close(ignored);
        state_->unix_acceptor.reset();
        undo_tcp();
        return s;
    }
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) state_->unix_socket_identity = {st.st_dev, st.st_ino};
    state_->stopped = false;
    asio::co_spawn(state_->io, accept_loop(state_, acceptor, run_unix_session), asio::detached);
    spdlog::info("api: listening on unix:{}", path);
    if (state_->tcp_acceptor) {
        asio::co_spawn(state_->io, accept_loop(state_, *state_->tcp_acceptor, run_tls_session),
                       asio::detached);
        const auto& tcp = *state_->options.tcp;
        spdlog::info("api: listening on https://{} (TLS{}; mutating calls need {})",
                     tls::TcpEndpoint{tcp.endpoint.address, tcp_port(), tcp.endpoint.loopback,
                                      tcp.endpoint.v6}
                         .text(),
                     tcp.tls->require_client_cert ? ", client certificate required" : "",
                     tcp.tls->accepts_mutations() ? "a bearer token or client certificate"
                                                  : "the unix socket (no token or client CA)");
    }
    return Ok{};
}

Status RestServer::start_tcp() {
    if (!state_->options.tcp) return Ok{};
    const auto& tcp = *state_->options.tcp;
    if (!tcp.tls) return Error::invalid("API TCP listener without TLS material: refused");
    if (auto s = make_tls_context(state_->tls_context, *tcp.tls); !s) return s;
    auto& acceptor = state_->tcp_acceptor.emplace(state_->io);
    if (auto s = bind_tcp_acceptor(acceptor, tcp.endpoint); !s) {
        boost::system::error_code ignored;
        acceptor.close(ignored);
        state_->tcp_acceptor.reset();
        state_->tls_context.reset();
        return s;
    }
    if (!tcp.endpoint.loopback)
        spdlog::warn("api: REST listens on non-loopback {}: reachable from other hosts",
                     tcp.endpoint.text());
    return Ok{};
}

void RestServer::stop() {
    if (!state_ || state_->stopped || !state_->unix_acceptor) return;
    state_->stopped = true;
    boost::system::error_code ignored;
    state_->unix_acceptor->close(ignored);
    if (state_->tcp_acceptor) state_->tcp_acceptor->close(ignored);
    // Unlink only our own socket file: a newer agent may already have replaced it.
    const std::string& path = state_->options.unix_socket_path;
    struct stat st {};
    if (state_->unix_socket_identity && ::lstat(path.c_str(), &st) == 0 &&
        std::pair{st.st_dev, st.st_ino} == *state_->unix_socket_identity) {
        ::unlink(path.c_str());
    }
    // Closing a session's socket makes its pending read fail, which ends the coroutine.
    auto closers = state_->closers;
    for (auto& [id, close] : closers) close();
    // Blocking calls still running finish (their results are dropped); none starts any more.
    workers_->stop();
    workers_->join();
}

std::size_t RestServer::active_connections() const {
    std::size_t sum = 0;
    for (const auto& budget : state_->budgets) sum += budget.connections;
    return sum;
}

std::size_t RestServer::active_streams() const {
    std::size_t sum = 0;
    for (const auto& budget : state_->budgets) sum += budget.streams;
    return sum;
}

std::uint16_t RestServer::tcp_port() const {
    if (!state_->tcp_acceptor || !state_->tcp_acceptor->is_open()) return 0;
    boost::system::error_code ec;
    const auto endpoint = state_->tcp_acceptor->local_endpoint(ec);
    return ec ? 0 : endpoint.port();
}

}  // namespace meshlane::rest
