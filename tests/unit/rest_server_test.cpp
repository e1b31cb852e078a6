// RestServer and the CLI's client over a real unix socket in a private temporary directory:
// socket file handling, limits, the connection cap and timeouts.
#include "api/rest/rest_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "api/client/unix_http_client.h"
#include "fake_workload_registry.h"

namespace meshlane::rest {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

// A raw client socket, for what the HTTP client would not do (idle, half requests).
class RawConnection {
  public:
    explicit RawConnection(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        path.copy(address.sun_path, sizeof address.sun_path - 1);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
        timeval timeout{5, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    }
    ~RawConnection() { ::close(fd_); }
    bool connected() const { return connected_; }
    void send(std::string_view data) {
        ASSERT_EQ(::write(fd_, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    }
    // Everything until EOF (or the 5 s receive timeout).
    std::string read_all() {
        std::string out;
        char buffer[4096];
        for (;;) {
            const auto n = ::read(fd_, buffer, sizeof buffer);
            if (n <= 0) return out;
            out.append(buffer, static_cast<std::size_t>(n));
        }
    }

  private:
    int fd_;
    bool connected_ = false;
};

class RestServerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/meshlane-rest-test-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern), nullptr);
        dir_ = pattern;
        socket_path_ = dir_ + "/run/meshlane/api.sock";
    }

    void TearDown() override {
        stop_server();
        fs::remove_all(dir_);
    }

    Status start_server(RestServerOptions options = {}) {
        options.unix_socket_path = socket_path_;
        server_ = std::make_unique<RestServer>(io_, registry_, options);
        auto started = server_->start();
        if (started) thread_ = std::thread([this] { io_.run(); });
        return started;
    }

    // stop() belongs on the io thread; the work guard keeps run() alive until then.
    void stop_server() {
        if (!server_) return;
        if (thread_.joinable()) {
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

    Result<HttpReply> request(boost::beast::http::verb method, const std::string& target,
                              std::optional<json::value> body = std::nullopt) {
        return http_request(socket_path_, method, target, body, 5000ms);
    }

    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
        io_.get_executor()};
    testing::FakeWorkloadRegistry registry_;
    std::unique_ptr<RestServer> server_;
    std::thread thread_;
    std::string dir_;
    std::string socket_path_;
};

using boost::beast::http::verb;

TEST_F(RestServerTest, ServesAndCreatesSocketWithModes) {
    ASSERT_TRUE(start_server());
    struct stat st {};
    ASSERT_EQ(::stat(socket_path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(::stat((dir_ + "/run/meshlane").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0755u);

    auto health = request(verb::get, "/v1/health");
    ASSERT_TRUE(health.ok()) << health.error().message;
    EXPECT_EQ(health->status, 200u);
    EXPECT_EQ(health->content_type, "application/json");
    EXPECT_EQ(json::parse(health->body), (json::value{{"status", "ok"}}));
}

TEST_F(RestServerTest, EnrollListUnenrollThroughTheClient) {
    ASSERT_TRUE(start_server());
    json::value spec = {{"name", "web"}, {"cgroup", "/sys/fs/cgroup/web"}, {"netns", "/n/web"}};
    auto created = request(verb::post, "/v1/workloads", spec);
    ASSERT_TRUE(created.ok()) << created.error().message;
    EXPECT_EQ(created->status, 201u) << created->body;
    auto list = request(verb::get, "/v1/workloads");
    ASSERT_TRUE(list.ok());
    EXPECT_EQ(json::parse(list->body).at("workloads").as_array().size(), 1u);
    auto removed = request(verb::delete_, "/v1/workloads/web");
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(json::parse(removed->body).at("removed").as_bool(), true);
    auto missing = request(verb::get, "/v1/workloads/web");
    ASSERT_TRUE(missing.ok()) << "an HTTP error is still a completed exchange";
    EXPECT_EQ(missing->status, 404u);
}

TEST_F(RestServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
    ASSERT_TRUE(start_server());
    RawConnection raw(socket_path_);
    ASSERT_TRUE(raw.connected());
    raw.send(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const auto replies = raw.read_all();
    EXPECT_NE(replies.find("\"status\":\"ok\""), std::string::npos) << replies;
    EXPECT_NE(replies.find("\"max_workloads\":4096"), std::string::npos) << replies;
}

TEST_F(RestServerTest, BodyOverLimitIs413) {
    RestServerOptions options;
    options.body_limit = 1024;
    ASSERT_TRUE(start_server(options));
    json::value big = {{"name", "web"}, {"cgroup", std::string(4096, 'a')}, {"netns", "/n"}};
    auto reply = request(verb::post, "/v1/workloads", big);
    ASSERT_TRUE(reply.ok()) << reply.error().message;
    EXPECT_EQ(reply->status, 413u);
    EXPECT_EQ(json::parse(reply->body).at("code").as_string(), "payload_too_large");
    EXPECT_EQ(registry_.enroll_calls, 0);
}

TEST_F(RestServerTest, HeaderOverLimitIs431) {
    RestServerOptions options;
    options.header_limit = 512;
    ASSERT_TRUE(start_server(options));
    RawConnection raw(socket_path_);
    raw.send("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2048, 'a') + "\r\n\r\n");
    EXPECT_NE(raw.read_all().find("431"), std::string::npos);
}

TEST_F(RestServerTest, MalformedRequestIs400) {
    ASSERT_TRUE(start_server());
    RawConnection raw(socket_path_);
    raw.send("NOT HTTP AT ALL\r\n\r\n");
    EXPECT_NE(raw.read_all().find("HTTP/1.1 400"), std::string::npos);
}

TEST_F(RestServerTest, ConnectionCapAnswers429) {
    RestServerOptions options;
    options.max_connections = 1;
    ASSERT_TRUE(start_server(options));
    RawConnection idle(socket_path_);
    ASSERT_TRUE(idle.connected());
    // Wait until the server has accepted the idle connection (up to 10 s: a loaded CI box).
    for (int i = 0; i < 2000 && server_->active_connections() == 0; ++i) {
        std::this_thread::sleep_for(5ms);
    }
    ASSERT_EQ(server_->active_connections(), 1u);
    auto reply = request(verb::get, "/v1/health");
    ASSERT_TRUE(reply.ok()) << reply.error().message;
    EXPECT_EQ(reply->status, 429u);
    EXPECT_EQ(json::parse(reply->body).at("code").as_string(), "too_many_connections");
}

TEST_F(RestServerTest, IdleConnectionIsClosedAfterReadTimeout) {
    RestServerOptions options;
    options.read_timeout = 1s;
    ASSERT_TRUE(start_server(options));
    RawConnection slow(socket_path_);
    slow.send("GET /v1/health HTTP/1.1\r\n");  // and never finish the header
    const auto begin = std::chrono::steady_clock::now();
    EXPECT_EQ(slow.read_all(), "");
    const auto waited = std::chrono::steady_clock::now() - begin;
    EXPECT_GE(waited, 800ms);
    EXPECT_LT(waited, 4s);
}

TEST_F(RestServerTest, StopRemovesSocketAndClosesConnections) {
    ASSERT_TRUE(start_server());
    RawConnection idle(socket_path_);
    for (int i = 0; i < 2000 && server_->active_connections() == 0; ++i) {
        std::this_thread::sleep_for(5ms);
    }
    stop_server();
    EXPECT_FALSE(fs::exists(socket_path_));
    EXPECT_EQ(idle.read_all(), "");
}

TEST_F(RestServerTest, ReplacesStaleSocketFile) {
    fs::create_directories(fs::path(socket_path_).parent_path());
    {
        // Bound and closed without listening: what a crashed agent leaves behind.
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        socket_path_.copy(address.sun_path, sizeof address.sun_path - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
        ::close(fd);
    }
    ASSERT_TRUE(fs::is_socket(socket_path_));
    auto started = start_server();
    ASSERT_TRUE(started) << started.error().message;
    EXPECT_TRUE(request(verb::get, "/v1/health").ok());
}

TEST_F(RestServerTest, RefusesToReplaceARegularFile) {
    fs::create_directories(fs::path(socket_path_).parent_path());
    std::ofstream(socket_path_) << "precious";
    auto started = start_server();
    ASSERT_FALSE(started);
    EXPECT_EQ(started.error().code, EEXIST);
    EXPECT_NE(started.error().message.find("not a socket"), std::string::npos);
}

TEST_F(RestServerTest, RefusesWhenAnotherServerIsLive) {
    ASSERT_TRUE(start_server());
    boost::asio::io_context other_io;
    testing::FakeWorkloadRegistry other_registry;
    RestServerOptions options;
    options.unix_socket_path = socket_path_;
    RestServer other(other_io, other_registry, options);
    auto started = other.start();
    ASSERT_FALSE(started);
    EXPECT_EQ(started.error().code, EADDRINUSE);
    EXPECT_TRUE(fs::is_socket(socket_path_)) << "the live server's socket must survive";
}

TEST_F(RestServerTest, RejectsRelativeOrOverlongPaths) {
    RestServerOptions options;
    options.unix_socket_path = "relative.sock";
    RestServer relative(io_, registry_, options);
    EXPECT_EQ(relative.start().error().code, EINVAL);
    options.unix_socket_path = "/tmp/" + std::string(200, 'x');
    RestServer overlong(io_, registry_, options);
    EXPECT_EQ(overlong.start().error().code, ENAMETOOLONG);
}

TEST(RestClient, MissingSocketSaysTheAgentIsNotRunning) {
    auto reply = http_request("/nonexistent/meshlane/api.sock", verb::get, "/v1/health");
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.error().code, ENOENT);
    EXPECT_EQ(reply.error().message,
              "cannot reach the meshlane agent at /nonexistent/meshlane/api.sock: No such file "
              "or directory — is `meshlane agent` running?");
}

TEST(RestClient, TimesOutOnASilentServer) {
    char pattern[] = "/tmp/meshlane-rest-client-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    const std::string path = std::string(pattern) + "/silent.sock";
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    path.copy(address.sun_path, sizeof address.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ASSERT_EQ(::listen(fd, 1), 0);  // accepts into the backlog, never answers
    auto reply = http_request(path, verb::get, "/v1/health", std::nullopt, 300ms);
    ::close(fd);
    fs::remove_all(pattern);
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.error().code, ETIMEDOUT);
    EXPECT_NE(reply.error().message.find("did not answer"), std::string::npos);
}

}  // namespace
}  // namespace meshlane::rest
