// The API's optional TCP listeners: where they listen and the TLS material they serve with.
// TCP is TLS-only (plain text is a config error), loopback unless explicitly opted out of.
// Both REST (Beast ssl_stream) and gRPC (SslServerCredentials) take the same TlsMaterial, read
// and checked once at agent start so a bad file fails the start with a message naming it, before
// anything is loaded or attached.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "agent/common/result.h"

namespace meshlane::tls {

struct TcpEndpoint {
    std::string address;  // IP literal, no brackets: "127.0.0.1", "::1"
    std::uint16_t port = 0;
    bool loopback = false;  // 127.0.0.0/8 or ::1
    bool v6 = false;
    // "127.0.0.1:9876", "[::1]:9876"; what parse_tcp_endpoint accepts back.
    std::string text() const;
};

// "HOST:PORT" with HOST an IPv4 literal, or "[IPv6]:PORT"; PORT 1..65535. Host names are refused
// (a resolver answer must not decide what the API is exposed on).
Result<TcpEndpoint> parse_tcp_endpoint(std::string_view text);

// The file names from the agent config; empty = not set.
struct TlsFiles {
    std::string cert_file;       // PEM: server certificate, then its chain
    std::string key_file;        // PEM: the certificate's private key
    std::string client_ca_file;  // PEM CA bundle: verify client certificates against it
    bool require_client_cert = false;
    std::string token_file;  // bearer token for mutating calls on TCP (one line)
};

// Minimum token length: shorter secrets are guessable over a fast loopback link.
inline constexpr std::size_t kMinTokenLength = 16;

struct TlsMaterial {
    std::string cert_chain_pem;
    std::string private_key_pem;
    std::string client_ca_pem;  // empty: client certificates are not requested
    bool require_client_cert = false;
    std::string token;  // empty: no bearer token accepted

    bool verifies_clients() const { return !client_ca_pem.empty(); }
    // Whether any caller can be authorized for mutating calls over TCP.
    bool accepts_mutations() const { return verifies_clients() || !token.empty(); }
};

// Reads every file and checks it with OpenSSL: the certificate parses, the key parses and
// matches it, the CA bundle holds at least one certificate, the token file holds one token of
// at least kMinTokenLength printable characters. Errors name the config key and the file.
Result<TlsMaterial> load_tls_material(const TlsFiles& files);

}  // namespace meshlane::tls
