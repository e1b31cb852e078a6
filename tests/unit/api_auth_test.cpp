// The API's TCP listeners without root: address parsing, config validation, the TLS files the
// agent loads, the bearer-token check, and both servers over real TLS on 127.0.0.1 (a CA, server
// and client certificates made with the openssl command in a private temporary directory).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "agent/daemon/config.h"
#include "api/client/unix_http_client.h"
#include "api/grpc/grpc_server.h"
#include "api/grpc/tcp_auth.h"
#include "api/meshlane.grpc.pb.h"
#include "api/rest/rest_server.h"
#include "api/tls/tls_auth.h"
#include "api/tls/tls_config.h"
#include "fake_workload_registry.h"

namespace meshlane {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using boost::beast::http::verb;

constexpr const char* kToken = "s3cr3t-token-0123456789abcdef";

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

void write_text(const std::string& path, const std::string& text, mode_t mode = 0600) {
    std::ofstream(path) << text;
    ::chmod(path.c_str(), mode);
}

// A throwaway PKI: ca (signs server + client), other-ca (signs a stranger), with EC P-256 keys.
class Pki {
  public:
    Pki() {
        char pattern[] = "/tmp/meshlane-api-auth-test-XXXXXX";
        if (::mkdtemp(pattern) == nullptr) return;
        dir_ = pattern;
        const std::string script = "set -e; cd " + dir_ + R"(
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key 2>/dev/null; }
ca() { key $1; openssl req -x509 -new -key $1.key -out $1.crt -subj /CN=$1 -days 2 2>/dev/null; }
leaf() { key $1; openssl req -new -key $1.key -out $1.csr -subj /CN=$1 2>/dev/null;
         printf "$3" > $1.ext;
         openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -set_serial 0x$(openssl rand -hex 8) \
             -out $1.crt -days 2 -extfile $1.ext 2>/dev/null; }
ca ca; ca other-ca
leaf server ca "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
leaf client ca "extendedKeyUsage=clientAuth\n"
leaf stranger other-ca "extendedKeyUsage=clientAuth\n"
chmod 600 *.key
)";
        ok_ = std::system(("bash -c '" + script + "' >/dev/null").c_str()) == 0;
        write_text(path("token"), std::string(kToken) + "\n");
    }
    ~Pki() {
        if (!dir_.empty()) fs::remove_all(dir_);
    }
    bool ok() const { return ok_; }
    std::string path(const std::string& name) const { return dir_ + "/" + name; }
    tls::TlsFiles files(bool client_ca, bool require, bool token) const {
        return {path("server.crt"), path("server.key"), client_ca ? path("ca.crt") : "", require,
                token ? path("token") : ""};
    }

  private:
    std::string dir_;
    bool ok_ = false;
};

// ---------------------------------------------------------------------------------------------
// Addresses and config
// ---------------------------------------------------------------------------------------------

TEST(ApiTcpEndpoint, ParsesLoopbackAndOthers) {
    auto v4 = tls::parse_tcp_endpoint("127.0.0.1:9876");
    ASSERT_TRUE(v4.ok()) << v4.error().message;
    EXPECT_EQ(v4->address, "127.0.0.1");
    EXPECT_EQ(v4->port, 9876);
    EXPECT_TRUE(v4->loopback);
    EXPECT_EQ(v4->text(), "127.0.0.1:9876");
    auto v6 = tls::parse_tcp_endpoint("[::1]:443");
    ASSERT_TRUE(v6.ok()) << v6.error().message;
    EXPECT_TRUE(v6->loopback && v6->v6);
    EXPECT_EQ(v6->text(), "[::1]:443");
    EXPECT_TRUE(tls::parse_tcp_endpoint("127.9.9.9:1")->loopback);
    EXPECT_FALSE(tls::parse_tcp_endpoint("0.0.0.0:9876")->loopback);
    EXPECT_FALSE(tls::parse_tcp_endpoint("[::]:9876")->loopback);
    EXPECT_FALSE(tls::parse_tcp_endpoint("10.1.2.3:9876")->loopback);
}

TEST(ApiTcpEndpoint, RejectsWhatIsNotAnAddressAndPort) {
    for (const char* bad :
         {"", "9876", "localhost:9876", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
          "127.0.0.1:98x", "::1:9876", "[::1]9876", "[nope]:1", "300.0.0.1:1"}) {
        auto parsed = tls::parse_tcp_endpoint(bad);
        EXPECT_FALSE(parsed.ok()) << bad;
        if (!parsed.ok()) {
            EXPECT_NE(parsed.error().message.find(bad), std::string::npos);
        }
    }
}

TEST(ApiTcpConfig, OffByDefaultAndValidWithTls) {
    auto defaults = parse_agent_config("", "t");
    ASSERT_TRUE(defaults.ok());
    EXPECT_FALSE(defaults->tcp_enabled());
    auto c = parse_agent_config(
        "rest_tcp_listen = 127.0.0.1:9876\ngrpc_tcp_listen = [::1]:9877\n"
        "tls_cert_file = /etc/m/s.crt\ntls_key_file = /etc/m/s.key\n"
        "tls_client_ca_file = /etc/m/ca.crt\ntls_require_client_cert = true\n"
        "api_token_file = /etc/m/token\n",
        "t");
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_TRUE(c->tcp_enabled());
    EXPECT_EQ(c->rest_tcp_listen, "127.0.0.1:9876");
    EXPECT_EQ(c->grpc_tcp_listen, "[::1]:9877");
    EXPECT_TRUE(c->tls_require_client_cert);
    EXPECT_EQ(c->api_token_file, "/etc/m/token");
    auto opted = parse_agent_config(
        "rest_tcp_listen = 0.0.0.0:9876\napi_tcp_allow_non_loopback = true\n"
        "tls_cert_file = /c\ntls_key_file = /k\n",
        "t");
    EXPECT_TRUE(opted.ok()) << opted.error().message;
}

TEST(ApiTcpConfig, ErrorsNameTheKey) {
    const std::string tls = "tls_cert_file = /c\ntls_key_file = /k\n";
    struct Case {
        std::string text;
        const char* expect;
    } cases[] = {
        {"rest_tcp_listen = 127.0.0.1:9876\n", "rest_tcp_listen needs tls_cert_file"},
        {"grpc_tcp_listen = 127.0.0.1:9876\ntls_cert_file = /c\n", "plain-text TCP is refused"},
        {"rest_tcp_listen = 0.0.0.0:9876\n" + tls, "api_tcp_allow_non_loopback"},
        {"grpc_tcp_listen = 10.0.0.1:9876\n" + tls, "grpc_tcp_listen 10.0.0.1:9876 is not a loop"},
        {"rest_tcp_listen = localhost:9876\n" + tls, "rest_tcp_listen: 'localhost:9876'"},
        {"rest_tcp_listen = 127.0.0.1:0\n" + tls, "port must be"},
        {"rest_tcp_listen = 127.0.0.1:1\ngrpc_tcp_listen = 127.0.0.1:1\n" + tls, "must differ"},
        {"tls_require_client_cert = true\n", "needs tls_client_ca_file"},
        {"tls_require_client_cert = maybe\n", "t:1 tls_require_client_cert: expected true"},
        {"api_tcp_allow_non_loopback = 2\n", "api_tcp_allow_non_loopback"},
        {"tls_key_file = key.pem\n", "tls_key_file must be an absolute path"},
        {"api_token_file = token\n", "api_token_file must be an absolute path"},
    };
    for (const auto& c : cases) {
        auto parsed = parse_agent_config(c.text, "t");
        ASSERT_FALSE(parsed.ok()) << c.text;
        EXPECT_NE(parsed.error().message.find(c.expect), std::string::npos)
            << c.text << " -> " << parsed.error().message;
    }
}

// ---------------------------------------------------------------------------------------------
// TLS files
// ---------------------------------------------------------------------------------------------

TEST(ApiTlsFiles, LoadsAValidSet) {
    Pki pki;
    ASSERT_TRUE(pki.ok()) << "openssl failed to make the test PKI";
    auto material = tls::load_tls_material(pki.files(true, true, true));
    ASSERT_TRUE(material.ok()) << material.error().message;
    EXPECT_EQ(material->token, kToken);  // the trailing newline is not part of it
    EXPECT_TRUE(material->verifies_clients());
    EXPECT_TRUE(material->require_client_cert);
    EXPECT_NE(material->cert_chain_pem.find("BEGIN CERTIFICATE"), std::string::npos);
    auto bare = tls::load_tls_material(pki.files(false, false, false));
    ASSERT_TRUE(bare.ok()) << bare.error().message;
    EXPECT_FALSE(bare->accepts_mutations());
}

TEST(ApiTlsFiles, ErrorsNameTheKeyAndFile) {
    Pki pki;
    ASSERT_TRUE(pki.ok());
    write_text(pki.path("garbage.pem"), "not a certificate\n");
    write_text(pki.path("short-token"), "abc\n");
    write_text(pki.path("two-words"), "0123456789abcdef 0123456789abcdef\n");
    auto with = [&](auto change) {
        auto files = pki.files(true, false, true);
        change(files);
        return tls::load_tls_material(files);
    };
    struct Case {
        Result<tls::TlsMaterial> result;
        std::string expect;
    } cases[] = {
        {with([&](auto& f) { f.cert_file = pki.path("missing.crt"); }),
         "tls_cert_file " + pki.path("missing.crt") + ": No such file"},
        {with([&](auto& f) { f.cert_file = pki.path("garbage.pem"); }),
         "tls_cert_file " + pki.path("garbage.pem") + ": not a PEM certificate"},
        {with([&](auto& f) { f.key_file = pki.path("client.key"); }),
         "tls_key_file " + pki.path("client.key") + " does not match"},
        {with([&](auto& f) { f.key_file = pki.path("server.crt"); }),
         "not an unencrypted PEM private key"},
        {with([&](auto& f) { f.key_file = pki.path("nope.key"); }), "tls_key_file"},
        {with([&](auto& f) { f.client_ca_file = pki.path("garbage.pem"); }),
         "tls_client_ca_file " + pki.path("garbage.pem")},
        {with([&](auto& f) { f.token_file = pki.path("short-token"); }), "at least 16"},
        {with([&](auto& f) { f.token_file = pki.path("two-words"); }), "one line"},
        {with([&](auto& f) { f.token_file = pki.path("nope"); }), "api_token_file"},
        {with([&](auto& f) { f.cert_file.clear(); }), "plain-text TCP is refused"},
        {with([&](auto& f) {
             f.client_ca_file.clear();
             f.require_client_cert = true;
         }),
         "needs tls_client_ca_file"},
    };
    for (const auto& c : cases) {
        ASSERT_FALSE(c.result.ok()) << c.expect;
        EXPECT_NE(c.result.error().message.find(c.expect), std::string::npos)
            << c.result.error().message;
    }
}

TEST(ApiTlsFiles, UnreadableKeyIsAnErrorForNonRoot) {
    if (::geteuid() == 0) GTEST_SKIP() << "root reads mode 0000 files";
    Pki pki;
    ASSERT_TRUE(pki.ok());
    ::chmod(pki.path("server.key").c_str(), 0);
    auto material = tls::load_tls_material(pki.files(false, false, false));
    ASSERT_FALSE(material.ok());
    EXPECT_NE(material.error().message.find("Permission denied"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// The token check and the decision
// ---------------------------------------------------------------------------------------------

TEST(ApiAuth, BearerTokenMatchesExactlyInConstantTimeForm) {
    const std::string token = kToken;
    EXPECT_TRUE(tls::bearer_token_matches("Bearer " + token, token));
    EXPECT_TRUE(tls::bearer_token_matches("bearer " + token, token));
    EXPECT_TRUE(tls::bearer_token_matches("BEARER  " + token + " ", token));
    EXPECT_FALSE(tls::bearer_token_matches("Bearer " + token + "x", token));
    EXPECT_FALSE(tls::bearer_token_matches("Bearer " + token.substr(1), token));
    EXPECT_FALSE(tls::bearer_token_matches("Bearer " + token.substr(0, 8), token));
    EXPECT_FALSE(tls::bearer_token_matches(token, token));  // no scheme
    EXPECT_FALSE(tls::bearer_token_matches("Basic " + token, token));
    EXPECT_FALSE(tls::bearer_token_matches("Bearer" + token, token));
    EXPECT_FALSE(tls::bearer_token_matches("Bearer ", token));
    EXPECT_FALSE(tls::bearer_token_matches("", token));
    EXPECT_FALSE(tls::bearer_token_matches("Bearer ", ""));  // no token configured
    EXPECT_FALSE(tls::bearer_token_matches("Bearer x", ""));
}

TEST(ApiAuth, MutationNeedsTokenOrVerifiedCertificate) {
    using tls::AuthDecision;
    tls::TlsMaterial token_only;
    token_only.token = kToken;
    const std::string good = std::string("Bearer ") + kToken;
    EXPECT_EQ(tls::authorize_mutation(token_only, false, good), AuthDecision::kAllowed);
    EXPECT_EQ(tls::authorize_mutation(token_only, false, ""), AuthDecision::kMissingCredentials);
    EXPECT_EQ(tls::authorize_mutation(token_only, false, "Bearer wrong"),
              AuthDecision::kInvalidToken);
    // A "verified" certificate means nothing when the server verifies no client certificates.
    EXPECT_EQ(tls::authorize_mutation(token_only, true, ""), AuthDecision::kMissingCredentials);

    tls::TlsMaterial certs_only;
    certs_only.client_ca_pem = "-----BEGIN CERTIFICATE-----";
    EXPECT_EQ(tls::authorize_mutation(certs_only, true, ""), AuthDecision::kAllowed);
    EXPECT_EQ(tls::authorize_mutation(certs_only, false, ""), AuthDecision::kMissingCredentials);
    // Without a configured token no bearer token is ever accepted, not even an empty one.
    EXPECT_EQ(tls::authorize_mutation(certs_only, false, "Bearer "), AuthDecision::kInvalidToken);
    EXPECT_NE(tls::describe(AuthDecision::kMissingCredentials, certs_only).find("certificate"),
              std::string_view::npos);
    EXPECT_NE(
        tls::describe(AuthDecision::kMissingCredentials, tls::TlsMaterial{}).find("unix socket"),
        std::string_view::npos);
    EXPECT_NE(tls::www_authenticate(AuthDecision::kInvalidToken).find("invalid_token"),
              std::string_view::npos);
}

TEST(ApiAuth, GrpcReadOnlyMethodsAreAnAllowList) {
    EXPECT_TRUE(grpc_api::is_read_only_method("/meshlane.v1.Agent/Status"));
    EXPECT_TRUE(grpc_api::is_read_only_method("/grpc.health.v1.Health/Check"));
    EXPECT_TRUE(grpc_api::is_read_only_method(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
    EXPECT_FALSE(grpc_api::is_read_only_method("/meshlane.v1.Agent/Enroll"));
    EXPECT_FALSE(grpc_api::is_read_only_method("/meshlane.v1.Agent/Unenroll"));
    EXPECT_FALSE(grpc_api::is_read_only_method("/meshlane.v1.Agent/Verify"));
    EXPECT_FALSE(grpc_api::is_read_only_method("/meshlane.v1.Agent/SomethingNew"));
    EXPECT_FALSE(grpc_api::is_read_only_method(""));
}

// A new RPC must be classified: read-only (then listed in api/grpc/tcp_auth.cpp) or mutating
// (then listed here, and it needs credentials on TCP).
TEST(ApiAuth, EveryAgentMethodIsClassified) {
    const std::set<std::string> mutating = {"Enroll", "Unenroll", "Verify"};
    const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
        v1::Agent::service_full_name());
    ASSERT_NE(service, nullptr);
    for (int i = 0; i < service->method_count(); ++i) {
        const std::string name = service->method(i)->name();
        const bool read_only =
            grpc_api::is_read_only_method("/" + service->full_name() + "/" + name);
        EXPECT_NE(read_only, mutating.count(name) == 1)
            << name << ": classify it in api/grpc/tcp_auth.cpp (read-only) or here (mutating)";
    }
}

// ---------------------------------------------------------------------------------------------
// REST over TLS: the server and the CLI's client on 127.0.0.1
// ---------------------------------------------------------------------------------------------

class RestTlsTest : public ::testing::Test {
  protected:
    void SetUp() override { ASSERT_TRUE(pki_.ok()); }
    void TearDown() override {
        if (server_ && thread_.joinable()) {
            std::promise<void> done;
            boost::asio::post(io_, [&] {
                server_->stop();
                done.set_value();
            });
            done.get_future().wait();
            work_.reset();
            thread_.join();
        }
        server_.reset();
    }

    Status start(tls::TlsFiles files) {
        auto material = tls::load_tls_material(files);
        if (!material) return material.error();
        rest::RestServerOptions options;
        options.unix_socket_path = pki_.path("api.sock");
        options.tcp = rest::RestServerOptions::Tcp{
            *tls::parse_tcp_endpoint("127.0.0.1:1"),
            std::make_shared<const tls::TlsMaterial>(std::move(*material))};
        options.tcp->endpoint.port = 0;
        server_ = std::make_unique<rest::RestServer>(io_, registry_, options);
        auto started = server_->start();
        if (started) thread_ = std::thread([this] { io_.run(); });
        return started;
    }

    rest::ClientOptions client() const {
        rest::ClientOptions options("https://127.0.0.1:" + std::to_string(server_->tcp_port()));
        options.ca_file = pki_.path("ca.crt");
        return options;
    }

    Result<rest::HttpReply> enroll(const rest::ClientOptions& options, const std::string& name) {
        boost::json::value spec = {
            {"name", name}, {"cgroup", "/sys/fs/cgroup/" + name}, {"netns", "/n/" + name}};
        return rest::http_request(options, verb::post, "/v1/workloads", spec, 5000ms);
    }

    Pki pki_;
    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
        io_.get_executor()};
    testing::FakeWorkloadRegistry registry_;
    std::unique_ptr<rest::RestServer> server_;
    std::thread thread_;
};

TEST_F(RestTlsTest, ReadsOpenMutationsNeedTheToken) {
    auto started = start(pki_.files(false, false, true));
    ASSERT_TRUE(started.ok()) << started.error().message;
    ASSERT_NE(server_->tcp_port(), 0);
    auto health = rest::http_request(client(), verb::get, "/v1/health", std::nullopt, 5000ms);
    ASSERT_TRUE(health.ok()) << health.error().message;
    EXPECT_EQ(health->status, 200u);

    auto anonymous = enroll(client(), "web");
    ASSERT_TRUE(anonymous.ok()) << anonymous.error().message;
    EXPECT_EQ(anonymous->status, 401u) << anonymous->body;
    EXPECT_NE(anonymous->body.find("unauthenticated"), std::string::npos);
    EXPECT_EQ(registry_.enroll_calls, 0);

    write_text(pki_.path("wrong-token"), "0123456789abcdef0123\n");
    auto wrong_options = client();
    wrong_options.token_file = pki_.path("wrong-token");
    auto wrong = enroll(wrong_options, "web");
    ASSERT_TRUE(wrong.ok());
    EXPECT_EQ(wrong->status, 401u);
    EXPECT_NE(wrong->body.find("invalid bearer token"), std::string::npos);

    auto with_token = client();
    with_token.token_file = pki_.path("token");
    auto created = enroll(with_token, "web");
    ASSERT_TRUE(created.ok()) << created.error().message;
    EXPECT_EQ(created->status, 201u) << created->body;
    auto removed =
        rest::http_request(with_token, verb::delete_, "/v1/workloads/web", std::nullopt, 5000ms);
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(removed->status, 200u);
    // The unix socket is unchanged: root-only, no token.
    auto local = enroll(rest::ClientOptions(pki_.path("api.sock")), "local");
    ASSERT_TRUE(local.ok()) << local.error().message;
    EXPECT_EQ(local->status, 201u);
}

TEST_F(RestTlsTest, ClientVerifiesTheServerCertificate) {
    ASSERT_TRUE(start(pki_.files(false, false, true)).ok());
    auto options = client();
    options.ca_file = pki_.path("other-ca.crt");
    auto reply = rest::http_request(options, verb::get, "/v1/health", std::nullopt, 5000ms);
    ASSERT_FALSE(reply.ok());
    EXPECT_NE(reply.error().message.find("certificate was not accepted"), std::string::npos)
        << reply.error().message;
    options.ca_file = pki_.path("ca.crt");
    options.server = "http://127.0.0.1:" + std::to_string(server_->tcp_port());
    reply = rest::http_request(options, verb::get, "/v1/health", std::nullopt, 5000ms);
    ASSERT_FALSE(reply.ok());
    EXPECT_NE(reply.error().message.find("use https://"), std::string::npos);
}

TEST_F(RestTlsTest, RequiredClientCertificateAuthorizesMutations) {
    ASSERT_TRUE(start(pki_.files(true, true, false)).ok());
    auto anonymous = rest::http_request(client(), verb::get, "/v1/health", std::nullopt, 5000ms);
    ASSERT_FALSE(anonymous.ok()) << "handshake without a certificate must fail";
    auto stranger = client();
    stranger.cert_file = pki_.path("stranger.crt");
    stranger.key_file = pki_.path("stranger.key");
    EXPECT_FALSE(rest::http_request(stranger, verb::get, "/v1/health", std::nullopt, 5000ms).ok());
    auto holder = client();
    holder.cert_file = pki_.path("client.crt");
    holder.key_file = pki_.path("client.key");
    auto created = enroll(holder, "web");
    ASSERT_TRUE(created.ok()) << created.error().message;
    EXPECT_EQ(created->status, 201u) << created->body;
}

TEST_F(RestTlsTest, BadMaterialFailsStartAndLeavesNothing) {
    auto files = pki_.files(false, false, false);
    files.key_file = pki_.path("client.key");
    EXPECT_FALSE(start(files).ok());
    EXPECT_FALSE(fs::exists(pki_.path("api.sock")));
}

// ---------------------------------------------------------------------------------------------
// gRPC over TLS with the generated C++ client
// ---------------------------------------------------------------------------------------------

TEST(GrpcTls, ReadsOpenMutationsNeedTokenOrCertificate) {
    Pki pki;
    ASSERT_TRUE(pki.ok());
    auto material = tls::load_tls_material(pki.files(true, false, true));
    ASSERT_TRUE(material.ok()) << material.error().message;
    testing::FakeWorkloadRegistry registry;
    grpc_api::GrpcServerOptions options;
    options.unix_socket_path = pki.path("grpc.sock");
    options.tcp = grpc_api::GrpcServerOptions::Tcp{
        *tls::parse_tcp_endpoint("127.0.0.1:1"),
        std::make_shared<const tls::TlsMaterial>(std::move(*material))};
    options.tcp->endpoint.port = 0;
    grpc_api::GrpcServer server(registry, nullptr, options);
    auto started = server.start();
    ASSERT_TRUE(started.ok()) << started.error().message;
    ASSERT_NE(server.tcp_port(), 0);

    auto stub = [&](bool with_cert) {
        grpc::SslCredentialsOptions ssl;
        ssl.pem_root_certs = read_text(pki.path("ca.crt"));
        if (with_cert) {
            ssl.pem_private_key = read_text(pki.path("client.key"));
            ssl.pem_cert_chain = read_text(pki.path("client.crt"));
        }
        return v1::Agent::NewStub(grpc::CreateChannel(
            "127.0.0.1:" + std::to_string(server.tcp_port()), grpc::SslCredentials(ssl)));
    };
    auto context = [](const char* token = nullptr) {
        auto c = std::make_unique<grpc::ClientContext>();
        c->set_deadline(std::chrono::system_clock::now() + 10s);
        if (token != nullptr) c->AddMetadata("authorization", std::string("Bearer ") + token);
        return c;
    };
    v1::EnrollRequest enroll;
    enroll.mutable_spec()->set_name("web");
    enroll.mutable_spec()->set_cgroup("/sys/fs/cgroup/web");
    enroll.mutable_spec()->set_netns("/run/netns/web");
    v1::EnrollResponse enrolled;
    v1::StatusResponse status;

    auto anonymous = stub(false);
    auto read = anonymous->Status(context().get(), {}, &status);
    EXPECT_TRUE(read.ok()) << read.error_message();
    auto refused = anonymous->Enroll(context().get(), enroll, &enrolled);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED) << refused.error_message();
    auto wrong = anonymous->Enroll(context("0123456789abcdefWRONG").get(), enroll, &enrolled);
    EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(wrong.error_message(), "invalid bearer token");
    EXPECT_EQ(registry.enroll_calls, 0);
    auto with_token = anonymous->Enroll(context(kToken).get(), enroll, &enrolled);
    EXPECT_TRUE(with_token.ok()) << with_token.error_message();
    v1::UnenrollRequest unenroll;
    unenroll.set_name("web");
    v1::UnenrollResponse unenrolled;
    auto by_cert = stub(true)->Unenroll(context().get(), unenroll, &unenrolled);
    EXPECT_TRUE(by_cert.ok()) << by_cert.error_message();
    EXPECT_TRUE(unenrolled.removed());
    server.stop();
}

}  // namespace
}  // namespace meshlane
