// The gRPC service over a real unix socket with the generated C++ client: every RPC, the error
// mapping, StreamEvents (history, follow, lost notices, the stream cap) and the socket mode.
#include "api/grpc/grpc_server.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <thread>

#include "agent/events/event_bus.h"
#include "api/grpc/proto_convert.h"
#include "api/meshlane.grpc.pb.h"
#include "fake_workload_registry.h"

namespace meshlane::grpc_api {
namespace {

using namespace std::chrono_literals;

class GrpcServerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char pattern[] = "/tmp/meshlane-grpc-test-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern), nullptr);
        dir_ = pattern;
        path_ = dir_ + "/run/grpc.sock";
        server_ = std::make_unique<GrpcServer>(
            registry_, &bus_, GrpcServerOptions{.unix_socket_path = path_, .max_streams = 2});
        auto started = server_->start();
        ASSERT_TRUE(started.ok()) << started.error().message;
        stub_ = v1::Agent::NewStub(
            grpc::CreateChannel("unix:" + path_, grpc::InsecureChannelCredentials()));
    }
    void TearDown() override {
        server_.reset();
        std::filesystem::remove_all(dir_);
    }
    static std::unique_ptr<grpc::ClientContext> context() {
        auto c = std::make_unique<grpc::ClientContext>();
        c->set_deadline(std::chrono::system_clock::now() + 5s);
        return c;
    }
    v1::EnrollRequest enroll_request(const std::string& name) {
        v1::EnrollRequest request;
        request.mutable_spec()->set_name(name);
        request.mutable_spec()->set_cgroup("/sys/fs/cgroup/" + name);
        request.mutable_spec()->set_netns("/run/netns/" + name);
        return request;
    }

    meshlane::testing::FakeWorkloadRegistry registry_;
    events::EventBus bus_;
    std::string dir_, path_;
    std::unique_ptr<GrpcServer> server_;
    std::unique_ptr<v1::Agent::Stub> stub_;
};

TEST_F(GrpcServerTest, SocketIsRootOnly) {
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    server_.reset();
    EXPECT_FALSE(std::filesystem::exists(path_)) << "stop() removes the socket";
}

TEST_F(GrpcServerTest, HealthAndStatus) {
    v1::HealthResponse health;
    ASSERT_TRUE(stub_->Health(context().get(), {}, &health).ok());
    EXPECT_EQ(health.status(), "ok");
    bus_.publish(events::Event{.type = "workload_enrolled", .workload = "x"});
    v1::StatusResponse status;
    ASSERT_TRUE(stub_->Status(context().get(), {}, &status).ok());
    EXPECT_EQ(status.version(), "test");
    EXPECT_EQ(status.max_workloads(), 4096u);
    EXPECT_TRUE(status.features().at("sk_lookup"));
    EXPECT_EQ(status.events().published(), 1u);
}

TEST_F(GrpcServerTest, EnrollListGetUnenroll) {
    v1::EnrollResponse enrolled;
    auto request = enroll_request("web");
    request.mutable_spec()->add_exclude_inbound_ports(22);
    request.mutable_spec()->set_proxy_uid(0);  // optional: 0 is a value, not "unset"
    ASSERT_TRUE(stub_->Enroll(context().get(), request, &enrolled).ok());
    EXPECT_TRUE(enrolled.created());
    EXPECT_EQ(enrolled.workload().name(), "web");
    EXPECT_EQ(enrolled.workload().spec().outbound_port(), 15001u);
    EXPECT_EQ(enrolled.workload().spec().proxy_uid(), 0u);
    EXPECT_TRUE(enrolled.workload().spec().include_all_cidrs());
    EXPECT_EQ(enrolled.workload().counters().at("outbound_redirected"), 7u);
    ASSERT_TRUE(stub_->Enroll(context().get(), request, &enrolled).ok());
    EXPECT_FALSE(enrolled.created());

    v1::ListWorkloadsResponse list;
    ASSERT_TRUE(stub_->ListWorkloads(context().get(), {}, &list).ok());
    ASSERT_EQ(list.workloads_size(), 1);
    v1::GetWorkloadRequest get;
    get.set_name("web");
    v1::Workload workload;
    ASSERT_TRUE(stub_->GetWorkload(context().get(), get, &workload).ok());
    EXPECT_TRUE(workload.inbound_listener_v4());
    v1::UnenrollRequest unenroll;
    unenroll.set_name("web");
    v1::UnenrollResponse removed;
    ASSERT_TRUE(stub_->Unenroll(context().get(), unenroll, &removed).ok());
    EXPECT_TRUE(removed.removed());
    ASSERT_TRUE(stub_->Unenroll(context().get(), unenroll, &removed).ok());
    EXPECT_FALSE(removed.removed());
}

TEST_F(GrpcServerTest, ErrorsMapToCanonicalCodes) {
    v1::EnrollResponse enrolled;
    auto bad = enroll_request("Bad/Name");
    EXPECT_EQ(stub_->Enroll(context().get(), bad, &enrolled).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    auto port = enroll_request("web");
    port.mutable_spec()->set_outbound_port(70000);
    auto status = stub_->Enroll(context().get(), port, &enrolled);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("outbound_port"), std::string::npos)
        << status.error_message();
    auto both = enroll_request("web");
    both.mutable_spec()->set_include_all_cidrs(true);
    both.mutable_spec()->add_include_cidrs("10.0.0.0/8");
    EXPECT_EQ(stub_->Enroll(context().get(), both, &enrolled).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    ASSERT_TRUE(stub_->Enroll(context().get(), enroll_request("web"), &enrolled).ok());
    auto other = enroll_request("web");
    other.mutable_spec()->set_inbound_port(15007);
    EXPECT_EQ(stub_->Enroll(context().get(), other, &enrolled).error_code(),
              grpc::StatusCode::ALREADY_EXISTS);
    v1::GetWorkloadRequest get;
    get.set_name("nope");
    v1::Workload workload;
    EXPECT_EQ(stub_->GetWorkload(context().get(), get, &workload).error_code(),
              grpc::StatusCode::NOT_FOUND);
    get.set_name("../etc");
    EXPECT_EQ(stub_->GetWorkload(context().get(), get, &workload).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    registry_.fail_with = EPERM;
    EXPECT_EQ(stub_->Enroll(context().get(), enroll_request("db"), &enrolled).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    registry_.fail_with = EIO;
    EXPECT_EQ(stub_->Enroll(context().get(), enroll_request("db"), &enrolled).error_code(),
              grpc::StatusCode::INTERNAL);
}

TEST(GrpcStatus, ErrnoMapping) {
    EXPECT_EQ(status_code_for_errno(EINVAL), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(status_code_for_errno(ENOENT), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(status_code_for_errno(EEXIST), grpc::StatusCode::ALREADY_EXISTS);
    EXPECT_EQ(status_code_for_errno(EPERM), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(status_code_for_errno(EACCES), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(status_code_for_errno(EBUSY), grpc::StatusCode::INTERNAL);
    EXPECT_EQ(to_grpc_status(Error{ENOENT, "workload x is not enrolled"}).error_message(),
              "workload x is not enrolled");
}

TEST_F(GrpcServerTest, StreamEventsHistoryFollowAndFilters) {
    bus_.publish(events::Event{.type = "workload_enrolled", .workload = "web"});
    bus_.publish(events::Event{.type = "workload_enrolled", .workload = "db"});
    {  // history only
        v1::StreamEventsRequest request;
        request.set_workload("web");
        auto ctx = context();
        auto reader = stub_->StreamEvents(ctx.get(), request);
        v1::StreamEventsResponse item;
        ASSERT_TRUE(reader->Read(&item));
        EXPECT_EQ(item.event().workload(), "web");
        EXPECT_FALSE(reader->Read(&item));
        EXPECT_TRUE(reader->Finish().ok());
    }
    v1::StreamEventsRequest request;
    request.set_follow(true);
    request.add_types("workload_removed");
    auto ctx = context();
    auto reader = stub_->StreamEvents(ctx.get(), request);
    std::thread publisher([&] {
        std::this_thread::sleep_for(100ms);
        bus_.publish(events::Event{.type = "workload_enrolled", .workload = "skip"});
        bus_.publish(events::Event{.type = "workload_removed", .workload = "web"});
    });
    v1::StreamEventsResponse item;
    ASSERT_TRUE(reader->Read(&item));
    publisher.join();
    ASSERT_TRUE(item.has_event());
    EXPECT_EQ(item.event().type(), "workload_removed");
    EXPECT_EQ(item.event().sequence(), 4u);
    ctx->TryCancel();
    while (reader->Read(&item)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(GrpcServerTest, StreamCapIsResourceExhaustedAndBadFiltersInvalid) {
    v1::StreamEventsRequest follow;
    follow.set_follow(true);
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::vector<std::unique_ptr<grpc::ClientReader<v1::StreamEventsResponse>>> open;
    for (int i = 0; i < 2; ++i) {
        contexts.push_back(context());
        open.push_back(stub_->StreamEvents(contexts.back().get(), follow));
        // Wait until the server counts it: a first published event arrives on each.
    }
    bus_.publish(events::Event{.type = "tick"});
    v1::StreamEventsResponse item;
    for (auto& reader : open) ASSERT_TRUE(reader->Read(&item));
    auto extra_context = context();
    auto extra = stub_->StreamEvents(extra_context.get(), follow);
    EXPECT_FALSE(extra->Read(&item));
    EXPECT_EQ(extra->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    v1::StreamEventsRequest bad;
    bad.add_types("Not A Type");
    auto bad_context = context();
    auto rejected = stub_->StreamEvents(bad_context.get(), bad);
    EXPECT_FALSE(rejected->Read(&item));
    EXPECT_EQ(rejected->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    for (auto& c : contexts) c->TryCancel();
    for (auto& reader : open) {
        while (reader->Read(&item)) {
        }
        (void)reader->Finish();
    }
}

TEST(GrpcProto, LostEventsBecomeTheOneofNotice) {
    v1::StreamEventsResponse out;
    to_proto(events::StreamItem{events::LostEvents{5, 7}}, out);
    ASSERT_TRUE(out.has_lost_events());
    EXPECT_EQ(out.lost_events().count(), 5u);
}

}  // namespace
}  // namespace meshlane::grpc_api
