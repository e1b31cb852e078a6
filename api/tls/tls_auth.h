// Authorization on the API's TCP listeners (the unix sockets are root-only and need none):
// read-only calls are open to any TLS client; mutating calls need a bearer token equal to the
// one in api_token_file, or a client certificate the TLS handshake verified against
// tls_client_ca_file. REST and gRPC share this decision.
#pragma once

#include <string_view>

#include "api/tls/tls_config.h"

namespace meshlane::tls {

enum class AuthDecision {
    kAllowed,
    kMissingCredentials,  // no token, no verified certificate
    kInvalidToken,        // an Authorization header that is not our bearer token
};

// `authorization` is the whole header value ("Bearer <token>"; the scheme is case-insensitive).
// Compares SHA-256 digests with CRYPTO_memcmp: neither the token's content nor its length leaks
// through timing.
bool bearer_token_matches(std::string_view authorization, std::string_view expected);

// The decision for a mutating call. A verified client certificate suffices on its own; a token
// is only checked when the server has one.
AuthDecision authorize_mutation(const TlsMaterial& material, bool peer_certificate_verified,
                                std::string_view authorization);

// The sentence a 401 / UNAUTHENTICATED carries.
std::string_view describe(AuthDecision decision, const TlsMaterial& material);

// RFC 6750 challenge for a 401.
std::string_view www_authenticate(AuthDecision decision);

}  // namespace meshlane::tls
