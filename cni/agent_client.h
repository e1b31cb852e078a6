// meshlane-cni's own HTTP/1.1 client for the agent's unix socket: plain POSIX sockets and poll,
// no Asio/Beast, no TLS. The plugin is a static executable that runs on any node (cni/README.md);
// the CLI's client (api/client/unix_http_client.*) also speaks TLS and would pull OpenSSL in.
//
// One request per connection ("Connection: close"); the timeout covers connect, write and read
// together. Every returned Error is a transport failure (no agent, refused, timed out, reply
// malformed); an HTTP error status is a successful exchange and comes back as an AgentReply.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "agent/common/result.h"

namespace meshlane::cni {

enum class Method { kGet, kPost, kDelete };

std::string_view to_string(Method method);

struct AgentReply {
    unsigned status = 0;
    std::string body;
};

// Replies larger than this are refused (the agent's workload documents are a few kB).
inline constexpr std::size_t kMaxReplyBytes = 4 << 20;

// `body`, when not empty, is sent as application/json.
Result<AgentReply> unix_http_request(const std::string& socket_path, Method method,
                                     const std::string& target, const std::string& body,
                                     std::chrono::milliseconds timeout);

// The reply bytes of one exchange (status line, headers, body: Content-Length, chunked, or up to
// the end of the connection) -> status and body. Pure, for the unit tests.
Result<AgentReply> parse_http_reply(std::string_view raw);

}  // namespace meshlane::cni
