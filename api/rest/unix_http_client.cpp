#include "api/rest/unix_http_client.h"

#include <sys/un.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/serialize.hpp>

namespace meshlane::rest {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using UnixProtocol = asio::local::stream_protocol;

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

asio::awaitable<void> exchange(const std::string& path, http::request<http::string_body> request,
                               std::chrono::milliseconds timeout,
                               std::optional<Result<HttpReply>>& out) {
    beast::basic_stream<UnixProtocol> stream(co_await asio::this_coro::executor);
    stream.expires_after(timeout);
    auto [connect_ec] = co_await stream.async_connect(UnixProtocol::endpoint(path), kAwait);
    if (connect_ec) {
        out = connect_ec == beast::error::timeout ? exchange_error(path, connect_ec, timeout)
                                                  : connect_error(path, connect_ec);
        co_return;
    }
    auto [write_ec, written] = co_await http::async_write(stream, request, kAwait);
    if (write_ec) {
        out = exchange_error(path, write_ec, timeout);
        co_return;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kReplyBodyLimit);
    auto [read_ec, read] = co_await http::async_read(stream, buffer, parser, kAwait);
    if (read_ec) {
        out = exchange_error(path, read_ec, timeout);
        co_return;
    }
    const auto& response = parser.get();
    out = HttpReply{response.result_int(), std::string(response[http::field::content_type]),
                    response.body()};
}

}  // namespace

Result<HttpReply> http_request(const std::string& socket_path, http::verb method,
                               const std::string& target,
                               const std::optional<boost::json::value>& body,
                               std::chrono::milliseconds timeout) {
    // asio's endpoint constructor would throw on an over-long path.
    if (socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return Error{ENAMETOOLONG, "API socket path " + socket_path + " is too long"};
    }
    asio::io_context io;
    std::optional<Result<HttpReply>> out;
    asio::co_spawn(io, exchange(socket_path, build_request(method, target, body), timeout, out),
                   asio::detached);
    io.run();
    if (!out) return Error{EIO, "talking to the meshlane agent at " + socket_path + ": aborted"};
    return std::move(*out);
}

}  // namespace meshlane::rest
