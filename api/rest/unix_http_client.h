// A small synchronous HTTP/1.1 client over a unix stream socket, for the CLI. Every returned
// Error is a transport failure (agent not running, refused, timed out, connection dropped);
// an HTTP error status is a successful exchange and comes back as an HttpReply.
#pragma once

#include <boost/beast/http/verb.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <optional>
#include <string>

#include "agent/common/result.h"

namespace meshlane::rest {

struct HttpReply {
    unsigned status = 0;
    std::string content_type;
    std::string body;
};

inline constexpr std::chrono::milliseconds kDefaultClientTimeout{30000};

// One request on a fresh connection ("Connection: close"). `body`, when present, is sent as
// application/json. The timeout covers connect, write and read together.
Result<HttpReply> http_request(const std::string& socket_path, boost::beast::http::verb method,
                               const std::string& target,
                               const std::optional<boost::json::value>& body = std::nullopt,
                               std::chrono::milliseconds timeout = kDefaultClientTimeout);

}  // namespace meshlane::rest
