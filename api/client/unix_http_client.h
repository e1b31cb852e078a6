// A small synchronous HTTP/1.1 client for the CLI and the CNI plugin: over the agent's unix
// socket (the default), or over TLS to its optional TCP listener ("https://HOST:PORT", server
// certificate verified against --cacert or the system store, optional client certificate and
// bearer token). Every returned Error is a transport failure (agent not running, refused, TLS
// verification failed, timed out, connection dropped); an HTTP error status is a successful
// exchange and comes back as an HttpReply.
#pragma once

#include <boost/beast/http/verb.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "agent/common/result.h"

namespace meshlane::rest {

struct HttpReply {
    unsigned status = 0;
    std::string content_type;
    std::string body;
};

// Where and how to reach the agent. Implicit from a unix socket path, so callers that only ever
// use the socket pass a string.
struct ClientOptions {
    ClientOptions() = default;
    ClientOptions(std::string server_address)  // NOLINT(google-explicit-constructor)
        : server(std::move(server_address)) {}
    ClientOptions(const char* server_address)  // NOLINT(google-explicit-constructor)
        : server(server_address) {}

    // A unix socket path ("/run/meshlane/api.sock", also "unix:/path") or "https://HOST:PORT"
    // (HOST an IP address or a name; IPv6 as [ADDRESS]).
    std::string server;
    std::string ca_file;     // PEM bundle the agent's certificate must chain to; empty: system
    std::string cert_file;   // client certificate (PEM), with key_file
    std::string key_file;    // client private key (PEM)
    std::string token_file;  // bearer token sent as Authorization on every request
};

inline constexpr std::chrono::milliseconds kDefaultClientTimeout{30000};

// One request on a fresh connection ("Connection: close"). `body`, when present, is sent as
// application/json. The timeout covers connect, handshake, write and read together.
Result<HttpReply> http_request(const ClientOptions& server, boost::beast::http::verb method,
                               const std::string& target,
                               const std::optional<boost::json::value>& body = std::nullopt,
                               std::chrono::milliseconds timeout = kDefaultClientTimeout);

// A streaming GET (GET /v1/events?follow=true): the reply's chunked body is handed to on_body
// piece by piece as it arrives (on_body returns false to stop reading). Ends when the agent ends
// the response, on_body stops, or SIGINT/SIGTERM arrives (interrupted). A non-200 reply comes
// back whole in error_body. The timeout covers connect, handshake, request and reply header.
using BodySink = std::function<bool(std::string_view)>;
struct StreamOutcome {
    unsigned status = 0;
    std::string error_body;          // a non-200 reply's body
    bool stopped_by_reader = false;  // on_body returned false
    bool interrupted = false;        // SIGINT or SIGTERM
};
Result<StreamOutcome> http_stream(const ClientOptions& server, const std::string& target,
                                  const BodySink& on_body,
                                  std::chrono::milliseconds timeout = kDefaultClientTimeout);

// Reads and checks the files the options name (CA bundle, client certificate and key, token
// file) the way a request would, without contacting the agent; errors name the flag and file.
Status check_client_files(const ClientOptions& options);

// "https://HOST:PORT" split; errors name what is wrong with it.
struct HttpsAddress {
    std::string host;  // without brackets
    std::string port;
};
Result<HttpsAddress> parse_https_address(const std::string& server);

}  // namespace meshlane::rest
