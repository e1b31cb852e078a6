// GET /v1/events: the pure route (history, query validation) and the streaming transport over a
// real unix socket (chunked NDJSON, live events, the streaming-client cap, clients leaving,
// server stop).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <future>
#include <thread>

#include "agent/events/event_bus.h"
#include "api/rest/rest_router.h"
#include "api/rest/rest_server.h"
#include "fake_workload_registry.h"

namespace meshlane::rest {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

events::Event event(std::string type, std::string workload) {
    return events::Event{.type = std::move(type), .workload = std::move(workload)};
}

class EventsRouteTest : public ::testing::Test {
  protected:
    Response get(std::string target) {
        Request request{http::verb::get, target, 11};
        return router_.handle(request);
    }
    meshlane::testing::FakeWorkloadRegistry registry_;
    events::EventBus bus_;
    RestRouter router_{registry_, kDefaultBodyLimit, nullptr, &bus_};
};

TEST_F(EventsRouteTest, HistoryAsNdjsonFiltered) {
    bus_.publish(event(events::kWorkloadEnrolled, "web"));
    bus_.publish(event(events::kWorkloadEnrolled, "db"));
    bus_.publish(event(events::kWorkloadUnenrolled, "web"));
    auto all = get("/v1/events");
    EXPECT_EQ(all.result(), http::status::ok);
    EXPECT_EQ(all[http::field::content_type], "application/x-ndjson");
    EXPECT_EQ(std::count(all.body().begin(), all.body().end(), '\n'), 3);
    auto web = get("/v1/events?workload=web&type=workload_unenrolled&follow=false");
    ASSERT_EQ(std::count(web.body().begin(), web.body().end(), '\n'), 1) << web.body();
    auto line = json::parse(web.body());
    EXPECT_EQ(line.at("type").as_string(), "workload_unenrolled");
    EXPECT_EQ(line.at("workload").as_string(), "web");
    EXPECT_EQ(line.at("sequence").to_number<int>(), 3);
    EXPECT_EQ(get("/v1/events?since=99999999999999").body(), "");
}

TEST_F(EventsRouteTest, BadQueriesAre400) {
    for (const char* target :
         {"/v1/events?bogus=1", "/v1/events?since=-1", "/v1/events?since=yesterday",
          "/v1/events?type=Bad-Type", "/v1/events?type=a,,b", "/v1/events?follow=maybe",
          "/v1/events?workload=../etc", "/v1/events?workload=a&workload=b",
          "/v1/events?workload=%zz"}) {
        auto response = get(target);
        EXPECT_EQ(response.result(), http::status::bad_request) << target << response.body();
        EXPECT_EQ(json::parse(response.body()).at("code").as_string(), "invalid_argument");
    }
    // follow needs the streaming transport; the pure router cannot stream.
    EXPECT_EQ(get("/v1/events?follow=true").result(), http::status::bad_request);
}

TEST_F(EventsRouteTest, StatusReportsTheBus) {
    auto sub = bus_.subscribe({});
    bus_.publish(event(events::kWorkloadEnrolled, "web"));
    auto status = json::parse(get("/v1/status").body());
    EXPECT_EQ(status.at("events").at("published").to_number<int>(), 1);
    EXPECT_EQ(status.at("events").at("subscribers").to_number<int>(), 1);
    EXPECT_EQ(status.at("events").at("lost").to_number<int>(), 0);
}

TEST(EventsRoute, WithoutABusIs503) {
    meshlane::testing::FakeWorkloadRegistry registry;
    RestRouter router(registry);
    Request request{http::verb::get, "/v1/events", 11};
    EXPECT_EQ(router.handle(request).result(), http::status::service_unavailable);
}

// ---------------------------------------------------------------------------------------------

class Client {
  public:
    explicit Client(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        path.copy(address.sun_path, sizeof address.sun_path - 1);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    }
    ~Client() { close(); }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    bool connected() const { return connected_; }
    void send(std::string_view data) {
        ASSERT_EQ(::write(fd_, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    }
    // Reads until `needle` is in what was received, EOF, or the timeout.
    bool read_until(std::string_view needle, std::chrono::milliseconds timeout = 5000ms) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (received_.find(needle) == std::string::npos) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left <= 0ms) return false;
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
            char buffer[4096];
            const auto n = ::read(fd_, buffer, sizeof buffer);
            if (n <= 0) {
                eof_ = true;
                return received_.find(needle) != std::string::npos;
            }
            received_.append(buffer, static_cast<std::size_t>(n));
        }
        return true;
    }
    const std::string& received() const { return received_; }
    bool eof() const { return eof_; }

  private:
    bool eof_ = false;
    int fd_;
    bool connected_ = false;
    std::string received_;
};

class EventsStreamTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/meshlane-events-test-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern), nullptr);
        dir_ = pattern;
        socket_path_ = dir_ + "/api.sock";
    }
    void TearDown() override {
        stop_server();
        std::filesystem::remove_all(dir_);
    }
    void start_server(std::size_t max_streams = 4) {
        RestServerOptions options;
        options.unix_socket_path = socket_path_;
        options.events = &bus_;
        options.max_streaming_clients = max_streams;
        options.read_timeout = 2s;
        server_ = std::make_unique<RestServer>(io_, registry_, options);
        ASSERT_TRUE(server_->start().ok());
        thread_ = std::thread([this] { io_.run(); });
    }
    template <typename F>
    auto on_io(F f) {
        std::packaged_task<decltype(f())()> task(f);
        auto result = task.get_future();
        boost::asio::post(io_, [&] { task(); });
        return result.get();
    }
    void stop_server() {
        if (!server_) return;
        if (thread_.joinable()) {
            on_io([&] { server_->stop(); });
            work_.reset();
            thread_.join();
        }
        server_.reset();
    }
    std::size_t streams() {
        return on_io([&] { return server_->active_streams(); });
    }
    bool wait_for_streams(std::size_t n) {
        for (int i = 0; i < 200; ++i) {
            if (streams() == n) return true;
            std::this_thread::sleep_for(10ms);
        }
        return false;
    }
    static constexpr std::string_view kFollow =
        "GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n";

    events::EventBus bus_;
    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
        io_.get_executor()};
    meshlane::testing::FakeWorkloadRegistry registry_;
    std::unique_ptr<RestServer> server_;
    std::thread thread_;
    std::string dir_, socket_path_;
};

TEST_F(EventsStreamTest, FollowSendsHistoryThenLiveEventsAsChunkedNdjson) {
    bus_.publish(event(events::kWorkloadEnrolled, "before"));
    start_server();
    Client client(socket_path_);
    ASSERT_TRUE(client.connected());
    client.send(kFollow);
    ASSERT_TRUE(client.read_until("\"workload\":\"before\"")) << client.received();
    EXPECT_NE(client.received().find("HTTP/1.1 200"), std::string::npos);
    EXPECT_NE(client.received().find("Transfer-Encoding: chunked"), std::string::npos);
    EXPECT_NE(client.received().find("application/x-ndjson"), std::string::npos);
    bus_.publish(event(events::kWorkloadRemoved, "live"));  // from another thread
    EXPECT_TRUE(client.read_until("\"workload\":\"live\"")) << client.received();
    EXPECT_EQ(streams(), 1u);
    client.close();
    EXPECT_TRUE(wait_for_streams(0)) << "a departed client must free its slot";
}

TEST_F(EventsStreamTest, StreamingCapAnswers429AndOthersKeepWorking) {
    start_server(1);
    Client first(socket_path_);
    first.send(kFollow);
    ASSERT_TRUE(first.read_until("\r\n\r\n"));
    ASSERT_TRUE(wait_for_streams(1));
    Client second(socket_path_);
    second.send(kFollow);
    EXPECT_TRUE(second.read_until("too_many_streams")) << second.received();
    EXPECT_NE(second.received().find("HTTP/1.1 429"), std::string::npos);
    Client plain(socket_path_);
    plain.send("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    EXPECT_TRUE(plain.read_until("\"ok\""));
    first.close();
    ASSERT_TRUE(wait_for_streams(0));
    Client third(socket_path_);
    third.send(kFollow);
    EXPECT_TRUE(third.read_until("HTTP/1.1 200")) << third.received();
}

TEST_F(EventsStreamTest, ClientThatNeverReadsLosesItsSlotAndEventsAreCounted) {
    start_server();
    Client lazy(socket_path_);
    lazy.send(kFollow);
    ASSERT_TRUE(wait_for_streams(1));
    // Far more than the socket buffer and the subscriber queue hold.
    const std::string big(2000, 'x');
    for (int i = 0; i < 5000; ++i)
        bus_.publish(
            events::Event{.type = "test_event", .workload = "w", .details = {{"pad", big}}});
    EXPECT_TRUE(wait_for_streams(0) || (std::this_thread::sleep_for(3s), wait_for_streams(0)))
        << "the write timeout must end a stream whose client does not read";
    EXPECT_GT(bus_.stats().dropped, 0u);
}

TEST_F(EventsStreamTest, StopEndsOpenStreams) {
    start_server();
    Client client(socket_path_);
    client.send(kFollow);
    ASSERT_TRUE(client.read_until("\r\n\r\n"));
    stop_server();
    EXPECT_FALSE(client.read_until("never", 2000ms));
    EXPECT_TRUE(client.eof()) << "the server must close the stream's connection";
}

}  // namespace
}  // namespace meshlane::rest
