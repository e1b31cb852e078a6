#include "api/client/unix_http_client.h"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/json/serialize.hpp>
#include <fstream>
#include <sstream>

#include "agent/common/unique_fd.h"

namespace meshlane::rest {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using UnixProtocol = asio::local::stream_protocol;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

namespace {

constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
// Listing many workloads with counters is large but bounded; more means something is wrong.
constexpr std::uint64_t kReplyBodyLimit = 64ull << 20;

Error connect_error(const std::string& path, const beast::error_code& ec) {
    const int code = ec.value();
    const char* hint = (code == EACCES || code == EPERM)
                           ? " — the API socket is root-only; run as root"
                           : " — is `meshlane agent` running?";
    return Error{code, "cannot reach the meshlane agent at " + path + ": " + ec.message() + hint};
}

Error exchange_error(const std::string& path, const beast::error_code& ec,
                     std::chrono::milliseconds timeout) {
    if (ec == beast::error::timeout) {
        return Error{ETIMEDOUT, "the meshlane agent at " + path + " did not answer within " +
                                    std::to_string(timeout.count()) + " ms"};
    }
    const int code = ec.category() == boost::system::system_category() ? ec.value() : EPROTO;
    return Error{code, "talking to the meshlane agent at " + path + ": " + ec.message()};
}

http::request<http::string_body> build_request(http::verb method, const std::string& target,
                                               const std::optional<boost::json::value>& body) {
    http::request<http::string_body> request{method, target, 11};
    request.set(http::field::host, "meshlane");
    request.set(http::field::user_agent, "meshlane-cli");
    request.set(http::field::accept, "application/json");
    request.keep_alive(false);
    if (body) {
        request.set(http::field::content_type, "application/json");
        request.body() = boost::json::serialize(*body);
    }
    request.prepare_payload();
    return request;
}

// Write the request, read the reply: the same over either transport.
template <typename Stream>
asio::awaitable<void> send_and_receive(Stream& stream, const std::string& where,
                                       http::request<http::string_body>& request,
                                       std::chrono::milliseconds timeout,
                                       std::optional<Result<HttpReply>>& out) {
    auto [write_ec, written] = co_await http::async_write(stream, request, kAwait);
    if (write_ec) {
        out = exchange_error(where, write_ec, timeout);
        co_return;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kReplyBodyLimit);
    auto [read_ec, read] = co_await http::async_read(stream, buffer, parser, kAwait);
    if (read_ec) {
        out = exchange_error(where, read_ec, timeout);
        co_return;
    }
    const auto& response = parser.get();
    out = HttpReply{response.result_int(), std::string(response[http::field::content_type]),
                    response.body()};
}

// A streaming GET on an open stream: the header within the timeout, then the body handed to
// on_body chunk by chunk with no deadline, until the agent ends it or on_body says stop.
template <typename Stream>
asio::awaitable<void> receive_stream(Stream& stream, const std::string& where,
                                     http::request<http::string_body>& request,
                                     std::chrono::milliseconds timeout, const BodySink& on_body,
                                     std::optional<Result<StreamOutcome>>& out) {
    auto [write_ec, written] = co_await http::async_write(stream, request, kAwait);
    if (write_ec) {
        out = exchange_error(where, write_ec, timeout);
        co_return;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);  // a stream has no end; chunks are consumed as they come
    auto [header_ec, header] = co_await http::async_read_header(stream, buffer, parser, kAwait);
    if (header_ec) {
        out = exchange_error(where, header_ec, timeout);
        co_return;
    }
    StreamOutcome outcome;
    outcome.status = parser.get().result_int();
    if (outcome.status != 200) {  // an error reply: small, read it whole
        parser.body_limit(kReplyBodyLimit);
        auto [read_ec, read] = co_await http::async_read(stream, buffer, parser, kAwait);
        if (read_ec) {
            out = exchange_error(where, read_ec, timeout);
            co_return;
        }
        outcome.error_body = parser.get().body();
        out = std::move(outcome);
        co_return;
    }
    beast::get_lowest_layer(stream).expires_never();
    bool reading = true;
    // The parser keeps a reference to the callback: it lives until the loop ends.
    auto on_chunk = [&](std::uint64_t, beast::string_view body, beast::error_code&) {
        if (reading && !on_body(std::string_view(body.data(), body.size()))) reading = false;
        return body.size();
    };
    parser.on_chunk_body(on_chunk);
    while (reading && !parser.is_done()) {
        auto [read_ec, read] = co_await http::async_read_some(stream, buffer, parser, kAwait);
        if (read_ec) {
            out = exchange_error(where, read_ec, timeout);
            co_return;
        }
    }
    outcome.stopped_by_reader = !reading;
    out = std::move(outcome);
}

// Connects to the unix socket, then talk(stream, where, out) exchanges on it.
template <typename Out, typename Talk>
asio::awaitable<void> exchange(const std::string path, std::chrono::milliseconds timeout, Talk talk,
                               std::optional<Result<Out>>& out) {
    beast::basic_stream<UnixProtocol> stream(co_await asio::this_coro::executor);
    stream.expires_after(timeout);
    auto [connect_ec] = co_await stream.async_connect(UnixProtocol::endpoint(path), kAwait);
    if (connect_ec) {
        out = connect_ec == beast::error::timeout ? exchange_error(path, connect_ec, timeout)
                                                  : connect_error(path, connect_ec);
        co_return;
    }
    co_await talk(stream, path, out);
}

// -- HTTPS --------------------------------------------------------------------------------------

Result<std::string> read_token_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) return Error::last_errno("--token-file " + path);
    std::stringstream text;
    text << in.rdbuf();
    std::string token = text.str();
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' '))
        token.pop_back();
    if (token.empty() || token.find_first_of(" \r\n") != std::string::npos)
        return Error::invalid("--token-file " + path + ": expected one line holding the token");
    return token;
}

// The client's TLS context: verify the agent's certificate (and, through the verify callback,
// its name or IP address); present a client certificate when given one.
Status configure_tls(asio::ssl::context& context, const ClientOptions& options) {
    const auto failed = [](const std::string& what, const boost::system::system_error& e) {
        return Error::invalid(what + ": " + e.code().message());
    };
    SSL_CTX_set_min_proto_version(context.native_handle(), TLS1_2_VERSION);
    context.set_verify_mode(asio::ssl::verify_peer);
    try {
        if (options.ca_file.empty())
            context.set_default_verify_paths();
        else
            context.load_verify_file(options.ca_file);
    } catch (const boost::system::system_error& e) {
        return failed("--cacert " + options.ca_file, e);
    }
    if (options.cert_file.empty() != options.key_file.empty())
        return Error::invalid("--cert and --key go together");
    if (options.cert_file.empty()) return Ok{};
    try {
        context.use_certificate_chain_file(options.cert_file);
    } catch (const boost::system::system_error& e) {
        return failed("--cert " + options.cert_file, e);
    }
    try {
        context.use_private_key_file(options.key_file, asio::ssl::context::pem);
    } catch (const boost::system::system_error& e) {
        return failed("--key " + options.key_file, e);
    }
    if (SSL_CTX_check_private_key(context.native_handle()) != 1)
        return Error::invalid("--key " + options.key_file + " does not match --cert " +
                              options.cert_file);
    return Ok{};
}

Error handshake_error(const std::string& where, TlsStream& stream, const beast::error_code& ec,
                      std::chrono::milliseconds timeout) {
    if (ec == beast::error::timeout) return exchange_error(where, ec, timeout);
    const long verify = SSL_get_verify_result(stream.native_handle());
    if (verify != X509_V_OK) {
        return Error{EPROTO, "TLS handshake with " + where +
                                 " failed: the agent's certificate was not accepted (" +
                                 X509_verify_cert_error_string(verify) +
                                 "); pass the CA that signed it with --cacert"};
    }
    return Error{EPROTO, "TLS handshake with " + where + " failed: " + ec.message() +
                             " (does the agent require a client certificate? --cert/--key)"};
}

template <typename Out, typename Talk>
asio::awaitable<void> exchange_tls(const HttpsAddress address, const std::string where,
                                   asio::ssl::context& context, std::chrono::milliseconds timeout,
                                   Talk talk, std::optional<Result<Out>>& out) {
    auto executor = co_await asio::this_coro::executor;
    asio::ip::tcp::resolver resolver(executor);
    auto [resolve_ec, endpoints] =
        co_await resolver.async_resolve(address.host, address.port, kAwait);
    if (resolve_ec) {
        out = Error{EHOSTUNREACH, "cannot resolve " + where + ": " + resolve_ec.message()};
        co_return;
    }
    TlsStream stream(executor, context);
    auto& tcp = beast::get_lowest_layer(stream);
    tcp.expires_after(timeout);
    auto [connect_ec, endpoint] = co_await tcp.async_connect(endpoints, kAwait);
    if (connect_ec) {
        out = connect_ec == beast::error::timeout ? exchange_error(where, connect_ec, timeout)
                                                  : connect_error(where, connect_ec);
        co_return;
    }
    boost::system::error_code not_ip;
    asio::ip::make_address(address.host, not_ip);
    // SNI only for names (RFC 6066 forbids IP literals there).
    if (not_ip) SSL_set_tlsext_host_name(stream.native_handle(), address.host.c_str());
    stream.set_verify_callback(asio::ssl::host_name_verification(address.host));
    auto [handshake_ec] = co_await stream.async_handshake(asio::ssl::stream_base::client, kAwait);
    if (handshake_ec) {
        out = handshake_error(where, stream, handshake_ec, timeout);
        co_return;
    }
    co_await talk(stream, where, out);
    // Connection: close and a complete reply: no need to wait for the agent's close_notify.
}

}  // namespace

Result<HttpsAddress> parse_https_address(const std::string& server) {
    constexpr std::string_view kScheme = "https://";
    if (server.rfind("http://", 0) == 0)
        return Error::invalid("--server " + server +
                              ": the agent serves TCP over TLS only; use https://");
    if (server.rfind(kScheme, 0) != 0)
        return Error::invalid("--server " + server + ": expected https://HOST:PORT");
    std::string rest = server.substr(kScheme.size());
    if (!rest.empty() && rest.back() == '/') rest.pop_back();
    HttpsAddress address;
    std::size_t port_colon = std::string::npos;
    if (!rest.empty() && rest.front() == '[') {
        const auto close = rest.find(']');
        if (close == std::string::npos)
            return Error::invalid("--server " + server + ": unterminated [IPv6] address");
        address.host = rest.substr(1, close - 1);
        if (close + 1 < rest.size() && rest[close + 1] == ':')
            port_colon = close + 1;
        else if (close + 1 != rest.size())
            return Error::invalid("--server " + server + ": expected https://[ADDRESS]:PORT");
    } else {
        port_colon = rest.rfind(':');
        address.host = rest.substr(0, port_colon);
    }
    address.port = port_colon == std::string::npos ? "443" : rest.substr(port_colon + 1);
    if (address.host.empty() || address.host.find('/') != std::string::npos)
        return Error::invalid("--server " + server + ": expected https://HOST:PORT (no path)");
    if (address.port.empty() || address.port.find_first_not_of("0123456789") != std::string::npos ||
        address.port.size() > 5 || std::stoul(address.port) == 0 ||
        std::stoul(address.port) > 65535)
        return Error::invalid("--server " + server + ": port must be a number in 1..65535");
    return address;
}

namespace {

// The TLS context and the Host and Authorization headers for an https:// server.
Result<HttpsAddress> prepare_https(const ClientOptions& options, asio::ssl::context& context,
                                   http::request<http::string_body>& request) {
    auto address = parse_https_address(options.server);
    if (!address) return address.error();
    if (auto configured = configure_tls(context, options); !configured) return configured.error();
    const bool v6 = address->host.find(':') != std::string::npos;
    request.set(http::field::host,
                (v6 ? "[" + address->host + "]" : address->host) + ":" + address->port);
    if (!options.token_file.empty()) {
        auto token = read_token_file(options.token_file);
        if (!token) return token.error();
        request.set(http::field::authorization, "Bearer " + *token);
    }
    return address;
}

std::string socket_path_of(const ClientOptions& options) {
    std::string path = options.server;
    if (path.rfind("unix:", 0) == 0) path = path.substr(5);
    return path;
}

// Runs talk(stream, where, out) over the transport --server names (TLS for https://, else the
// unix socket). With `interrupted`, SIGINT/SIGTERM end the exchange and set it.
template <typename Out, typename Talk>
Result<Out> run_exchange(const ClientOptions& options, http::request<http::string_body>& request,
                         std::chrono::milliseconds timeout, Talk talk,
                         bool* interrupted = nullptr) {
    std::optional<Result<Out>> out;
    asio::ssl::context context(asio::ssl::context::tls_client);
    // After what the exchange refers to: an unfinished exchange is destroyed with it, first.
    asio::io_context io;
    std::optional<asio::signal_set> signals;
    if (interrupted != nullptr) {
        signals.emplace(io, SIGINT, SIGTERM);
        signals->async_wait([&](const boost::system::error_code& ec, int) {
            if (ec) return;
            *interrupted = true;
            io.stop();
        });
    }
    const auto done = [&io](const std::exception_ptr&) { io.stop(); };
    const bool https = options.server.find("://") != std::string::npos;
    const std::string where = https ? options.server : socket_path_of(options);
    if (https) {
        auto address = prepare_https(options, context, request);
        if (!address) return address.error();
        asio::co_spawn(io, exchange_tls<Out>(*address, where, context, timeout, talk, out), done);
    } else {
        // asio's endpoint constructor would throw on an over-long path.
        if (where.size() >= sizeof(sockaddr_un{}.sun_path))
            return Error{ENAMETOOLONG, "API socket path " + where + " is too long"};
        asio::co_spawn(io, exchange<Out>(where, timeout, talk, out), done);
    }
    io.run();
    if (!out) return Error{EIO, "talking to the meshlane agent at " + where + ": aborted"};
    return std::move(*out);
}

}  // namespace

Result<HttpReply> http_request(const ClientOptions& options, http::verb method,
                               const std::string& target,
                               const std::optional<boost::json::value>& body,
                               std::chrono::milliseconds timeout) {
    auto request = build_request(method, target, body);
    auto talk = [&](auto& stream, const std::string& where,
                    std::optional<Result<HttpReply>>& out) -> asio::awaitable<void> {
        co_await send_and_receive(stream, where, request, timeout, out);
    };
    return run_exchange<HttpReply>(options, request, timeout, talk);
}

Result<StreamOutcome> http_stream(const ClientOptions& options, const std::string& target,
                                  const BodySink& on_body, std::chrono::milliseconds timeout) {
    auto request = build_request(http::verb::get, target, std::nullopt);
    request.set(http::field::accept, "application/x-ndjson");
    auto talk = [&](auto& stream, const std::string& where,
                    std::optional<Result<StreamOutcome>>& out) -> asio::awaitable<void> {
        co_await receive_stream(stream, where, request, timeout, on_body, out);
    };
    // SIGINT/SIGTERM end the stream cleanly.
    bool interrupted = false;
    auto result = run_exchange<StreamOutcome>(options, request, timeout, talk, &interrupted);
    if (interrupted) return StreamOutcome{.interrupted = true};
    return result;
}

Status check_client_files(const ClientOptions& options) {
    for (const auto& [flag, path] :
         {std::pair{"--cacert", &options.ca_file}, std::pair{"--cert", &options.cert_file},
          std::pair{"--key", &options.key_file}, std::pair{"--token-file", &options.token_file}}) {
        if (path->empty()) continue;
        UniqueFd fd(::open(path->c_str(), O_RDONLY | O_CLOEXEC));
        struct stat st {};
        if (!fd.valid() || ::fstat(fd.get(), &st) != 0)
            return Error::last_errno(std::string(flag) + " " + *path + ": cannot read it");
        if (S_ISDIR(st.st_mode))
            return Error{EISDIR, std::string(flag) + " " + *path + ": is a directory"};
    }
    asio::ssl::context context(asio::ssl::context::tls_client);
    if (auto configured = configure_tls(context, options); !configured) return configured.error();
    if (!options.token_file.empty())
        if (auto token = read_token_file(options.token_file); !token) return token.error();
    return Ok{};
}

}  // namespace meshlane::rest
