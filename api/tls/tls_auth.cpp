#include "api/tls/tls_auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <array>
#include <cctype>

namespace meshlane::tls {

namespace {

using Digest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;

Digest sha256(std::string_view text) {
    Digest digest{};
    SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
    return digest;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

}  // namespace

bool bearer_token_matches(std::string_view authorization, std::string_view expected) {
    constexpr std::string_view kScheme = "bearer";
    if (expected.empty() || authorization.size() <= kScheme.size() ||
        !iequals(authorization.substr(0, kScheme.size()), kScheme) ||
        authorization[kScheme.size()] != ' ')
        return false;
    auto presented = authorization.substr(kScheme.size() + 1);
    while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
    while (!presented.empty() && presented.back() == ' ') presented.remove_suffix(1);
    // Digests have a fixed length, so the comparison time says nothing about either token.
    const Digest want = sha256(expected);
    const Digest got = sha256(presented);
    return CRYPTO_memcmp(want.data(), got.data(), want.size()) == 0;
}

AuthDecision authorize_mutation(const TlsMaterial& material, bool peer_certificate_verified,
                                std::string_view authorization) {
    if (peer_certificate_verified && material.verifies_clients()) return AuthDecision::kAllowed;
    if (authorization.empty()) return AuthDecision::kMissingCredentials;
    if (bearer_token_matches(authorization, material.token)) return AuthDecision::kAllowed;
    return AuthDecision::kInvalidToken;
}

std::string_view describe(AuthDecision decision, const TlsMaterial& material) {
    switch (decision) {
        case AuthDecision::kAllowed:
            return "authorized";
        case AuthDecision::kInvalidToken:
            return "invalid bearer token";
        case AuthDecision::kMissingCredentials:
            break;
    }
    if (!material.accepts_mutations())
        return "mutating calls are disabled on TCP (the agent has neither api_token_file nor "
               "tls_client_ca_file); use the unix socket";
    if (material.token.empty()) return "mutating calls over TCP need a verified client certificate";
    if (!material.verifies_clients())
        return "mutating calls over TCP need a bearer token (Authorization: Bearer ...)";
    return "mutating calls over TCP need a bearer token (Authorization: Bearer ...) or a "
           "verified client certificate";
}

std::string_view www_authenticate(AuthDecision decision) {
    if (decision == AuthDecision::kInvalidToken)
        return "Bearer realm=\"meshlane\", error=\"invalid_token\"";
    return "Bearer realm=\"meshlane\"";
}

}  // namespace meshlane::tls
