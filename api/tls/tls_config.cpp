#include "api/tls/tls_config.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <charconv>
#include <fstream>
#include <memory>
#include <sstream>

namespace meshlane::tls {

namespace {

// Refuse absurd files before handing them to OpenSSL (a CA bundle is well under this).
constexpr std::uintmax_t kMaxPemBytes = 1 << 20;

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
    void operator()(T* p) const { Free(p); }
};
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509, X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY, EVP_PKEY_free>>;

// The most recent OpenSSL error as text; clears the queue so it does not leak into later calls.
std::string openssl_error() {
    const unsigned long code = ERR_peek_last_error();
    ERR_clear_error();
    if (code == 0) return "no PEM data found";
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof buffer);
    return buffer;
}

Result<std::string> read_file(const std::string& key, const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return Error::last_errno(key + " " + path);
    if (!S_ISREG(st.st_mode)) return Error::invalid(key + " " + path + " is not a regular file");
    if (static_cast<std::uintmax_t>(st.st_size) > kMaxPemBytes)
        return Error::invalid(key + " " + path + " is larger than 1 MiB");
    std::ifstream in(path, std::ios::binary);
    if (!in) return Error::last_errno(key + " " + path);
    std::stringstream text;
    text << in.rdbuf();
    if (in.bad()) return Error::last_errno("read " + key + " " + path);
    return text.str();
}

// Secrets readable by other users are still used (the admin may have a reason), but said loudly.
void warn_if_shared(const std::string& key, const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 0077) != 0)
        spdlog::warn("{} {} is readable by group or others (mode {:o}); use mode 0600", key, path,
                     st.st_mode & 0777);
}

BioPtr memory_bio(const std::string& pem) {
    return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

Result<X509Ptr> first_certificate(const std::string& key, const std::string& path,
                                  const std::string& pem) {
    auto bio = memory_bio(pem);
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert)
        return Error::invalid(key + " " + path + ": not a PEM certificate (" + openssl_error() +
                              ")");
    return cert;
}

Status check_key_matches(const TlsFiles& files, const std::string& key_pem, X509* cert) {
    auto bio = memory_bio(key_pem);
    // No passphrase callback: an encrypted key cannot be unlocked unattended, say so.
    KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!key)
        return Error::invalid("tls_key_file " + files.key_file +
                              ": not an unencrypted PEM private key (" + openssl_error() + ")");
    if (X509_check_private_key(cert, key.get()) != 1) {
        ERR_clear_error();
        return Error::invalid("tls_key_file " + files.key_file +
                              " does not match the certificate in tls_cert_file " +
                              files.cert_file);
    }
    return Ok{};
}

Result<std::string> read_token(const std::string& path) {
    auto text = read_file("api_token_file", path);
    if (!text) return text.error();
    std::string token = *text;
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' '))
        token.pop_back();
    if (token.size() < kMinTokenLength)
        return Error::invalid("api_token_file " + path + ": the token must be at least " +
                              std::to_string(kMinTokenLength) + " characters");
    for (const char c : token) {
        if (c <= ' ' || c > '~')
            return Error::invalid("api_token_file " + path +
                                  ": the token must be one line of printable characters "
                                  "without spaces");
    }
    return token;
}

}  // namespace

std::string TcpEndpoint::text() const {
    return (v6 ? "[" + address + "]" : address) + ":" + std::to_string(port);
}

Result<TcpEndpoint> parse_tcp_endpoint(std::string_view text) {
    const std::string quoted = "'" + std::string(text) + "'";
    TcpEndpoint endpoint;
    std::string_view host;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return Error::invalid(quoted + ": expected [IPv6]:PORT");
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
        endpoint.v6 = true;
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos)
            return Error::invalid(quoted + ": expected HOST:PORT, e.g. 127.0.0.1:9876");
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos)
            return Error::invalid(quoted + ": write IPv6 addresses as [ADDRESS]:PORT");
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 ||
        value > 65535)
        return Error::invalid(quoted + ": port must be a number in 1..65535");
    endpoint.port = static_cast<std::uint16_t>(value);
    endpoint.address = std::string(host);
    if (endpoint.v6) {
        in6_addr address{};
        if (::inet_pton(AF_INET6, endpoint.address.c_str(), &address) != 1)
            return Error::invalid(quoted + ": '" + endpoint.address + "' is not an IPv6 address");
        endpoint.loopback = IN6_IS_ADDR_LOOPBACK(&address);
    } else {
        in_addr address{};
        if (::inet_pton(AF_INET, endpoint.address.c_str(), &address) != 1)
            return Error::invalid(quoted + ": '" + endpoint.address +
                                  "' is not an IPv4 address (host names are not accepted)");
        endpoint.loopback = (ntohl(address.s_addr) >> 24) == 127;
    }
    return endpoint;
}

Result<TlsMaterial> load_tls_material(const TlsFiles& files) {
    if (files.cert_file.empty() || files.key_file.empty())
        return Error::invalid(
            "TCP listeners need tls_cert_file and tls_key_file: plain-text TCP is refused");
    TlsMaterial material;
    auto cert = read_file("tls_cert_file", files.cert_file);
    if (!cert) return cert.error();
    auto leaf = first_certificate("tls_cert_file", files.cert_file, *cert);
    if (!leaf) return leaf.error();
    auto key = read_file("tls_key_file", files.key_file);
    if (!key) return key.error();
    if (auto matches = check_key_matches(files, *key, leaf->get()); !matches)
        return matches.error();
    warn_if_shared("tls_key_file", files.key_file);
    material.cert_chain_pem = std::move(*cert);
    material.private_key_pem = std::move(*key);
    if (!files.client_ca_file.empty()) {
        auto ca = read_file("tls_client_ca_file", files.client_ca_file);
        if (!ca) return ca.error();
        if (auto first = first_certificate("tls_client_ca_file", files.client_ca_file, *ca); !first)
            return first.error();
        material.client_ca_pem = std::move(*ca);
    } else if (files.require_client_cert) {
        return Error::invalid("tls_require_client_cert = true needs tls_client_ca_file");
    }
    material.require_client_cert = files.require_client_cert;
    if (!files.token_file.empty()) {
        auto token = read_token(files.token_file);
        if (!token) return token.error();
        warn_if_shared("api_token_file", files.token_file);
        material.token = std::move(*token);
    }
    return material;
}

}  // namespace meshlane::tls
