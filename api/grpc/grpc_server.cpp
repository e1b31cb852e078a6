#include "api/grpc/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>

#include "agent/common/unix_socket_path.h"
#include "agent/diagnose/diagnose_service.h"
#include "agent/events/event_bus.h"
#include "agent/model/readiness.h"
#include "agent/observe/observation_source.h"
#include "api/grpc/diagnose_convert.h"
#include "api/grpc/proto_convert.h"
#include "api/grpc/tcp_auth.h"
#include "api/grpc/tls_convert.h"
#include "api/meshlane.grpc.pb.h"

namespace meshlane::grpc_api {

namespace {

constexpr std::size_t kStreamBatch = 256;
// How often an idle stream checks for cancellation and shutdown.
constexpr std::chrono::milliseconds kStreamPoll{200};

class AgentService final : public v1::Agent::Service {
  public:
    AgentService(WorkloadRegistry& registry, events::EventBus* events, std::size_t max_streams,
                 const ObservationSource* observations = nullptr)
        : registry_(registry),
          events_(events),
          max_streams_(max_streams),
          observations_(observations) {}

    void stop() { stopping_ = true; }
    std::size_t active_streams() const { return streams_; }

    grpc::Status Health(grpc::ServerContext*, const v1::HealthRequest*,
                        v1::HealthResponse* response) override {
        response->set_status("ok");
        return grpc::Status::OK;
    }

    grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*,
                        v1::StatusResponse* response) override {
        to_proto(registry_.status(), *response);
        if (events_ != nullptr) {
            const auto stats = events_->stats();
            auto& out = *response->mutable_events();
            out.set_published(stats.published);
            out.set_lost(stats.dropped);
            out.set_subscribers(static_cast<std::uint32_t>(stats.subscribers));
        }
        // The same content as REST /v1/status "observer" and "bpf_maps".
        if (observations_ != nullptr) {
            to_proto(observations_->health(), *response->mutable_observer());
            to_proto(observations_->map_fill(), *response->mutable_bpf_maps());
            for (const auto& p : observations_->programs()) {
                auto& node = *response->mutable_programs()->add_node();
                node.set_object(p.object);
                node.set_program(p.program);
                node.set_attach_to(p.attach_to);
                node.set_link_id(p.link_id);
                node.set_prog_id(p.prog_id);
            }
        }
        auto& per_workload = *response->mutable_programs()->mutable_workloads();
        for (const auto& workload : registry_.list())
            for (const auto& program : workload.programs) ++per_workload[program.program];
        return grpc::Status::OK;
    }

    grpc::Status ListWorkloads(grpc::ServerContext*, const v1::ListWorkloadsRequest*,
                               v1::ListWorkloadsResponse* response) override {
        for (const auto& status : registry_.list()) to_proto(status, *response->add_workloads());
        return grpc::Status::OK;
    }

    grpc::Status GetWorkload(grpc::ServerContext*, const v1::GetWorkloadRequest* request,
                             v1::Workload* response) override {
        if (auto valid = validate_name(request->name()); !valid)
            return to_grpc_status(valid.error());
        auto status = registry_.get(request->name());
        if (!status) return to_grpc_status(status.error());
        to_proto(*status, *response);
        return grpc::Status::OK;
    }

    grpc::Status Enroll(grpc::ServerContext*, const v1::EnrollRequest* request,
                        v1::EnrollResponse* response) override {
        auto spec = spec_from_proto(request->spec());
        if (!spec) return to_grpc_status(spec.error());
        auto result = registry_.enroll(*spec);
        if (!result) return to_grpc_status(result.error());
        response->set_created(result->outcome == EnrollOutcome::kCreated);
        to_proto(result->status, *response->mutable_workload());
        return grpc::Status::OK;
    }

    grpc::Status Unenroll(grpc::ServerContext*, const v1::UnenrollRequest* request,
                          v1::UnenrollResponse* response) override {
        if (auto valid = validate_name(request->name()); !valid)
            return to_grpc_status(valid.error());
        auto removed = registry_.unenroll(request->name());
        if (!removed) return to_grpc_status(removed.error());
        response->set_name(request->name());
        response->set_removed(*removed);
        return grpc::Status::OK;
    }

    grpc::Status StreamEvents(grpc::ServerContext* context, const v1::StreamEventsRequest* request,
                              grpc::ServerWriter<v1::StreamEventsResponse>* writer) override {
        if (events_ == nullptr)
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the agent runs without events");
        auto filter = filter_from_proto(*request);
        if (!filter) return to_grpc_status(filter.error());
        StreamSlot slot(streams_, max_streams_);
        if (!slot.acquired())
            return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "too many open event streams (limit " +
                                    std::to_string(max_streams_) + "); retry later");
        std::vector<events::Event> history;
        std::unique_ptr<events::Subscription> subscription;
        if (request->follow())
            subscription = events_->subscribe(*filter, &history);
        else
            history = events_->history(*filter);
        for (auto& event : history)
            if (!write(writer, events::StreamItem{std::move(event)})) return cancelled();
        if (!subscription) return grpc::Status::OK;
        while (!context->IsCancelled() && !stopping_) {
            auto items = subscription->wait(kStreamBatch, kStreamPoll);
            if (items.empty() && subscription->closed()) break;
            for (const auto& item : items)
                if (!write(writer, item)) return cancelled();
        }
        return grpc::Status::OK;
    }

    // One implementation with the REST routes (agent/diagnose/diagnose_service.h).
    grpc::Status Diagnose(grpc::ServerContext*, const v1::DiagnoseRequest* request,
                          v1::DiagnoseResponse* response) override {
        const auto window = request->window_seconds() == 0
                                ? diagnose::kDefaultWindow
                                : std::chrono::seconds(request->window_seconds());
        auto report = diagnose::diagnose_workload(diagnose_environment(), request->name(), window);
        if (!report) return to_grpc_status(report.error());
        to_proto(*report, *response);
        return grpc::Status::OK;
    }

    grpc::Status Verify(grpc::ServerContext*, const v1::VerifyRequest* request,
                        v1::VerifyResponse* response) override {
        auto report = diagnose::verify_workload(diagnose_environment(), request->name());
        if (!report) return to_grpc_status(report.error());
        to_proto(*report, *response);
        return grpc::Status::OK;
    }

    // The same view as GET /v1/tls (api/rest/observe_routes.cpp).
    grpc::Status Tls(grpc::ServerContext*, const v1::TlsRequest* request,
                     v1::TlsResponse* response) override {
        if (observations_ == nullptr)
            return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "TLS observation is not running in this agent");
        std::vector<WorkloadStatus> workloads;
        if (request->workload().empty()) {
            workloads = registry_.list();
        } else {
            if (auto valid = validate_name(request->workload()); !valid)
                return to_grpc_status(valid.error());
            auto status = registry_.get(request->workload());
            if (!status) return to_grpc_status(status.error());
            workloads.push_back(std::move(*status));
        }
        for (const auto& status : workloads)
            to_proto(observations_->tls(status.workload_id, status.netns_cookie), status.spec.name,
                     *response->add_workloads());
        return grpc::Status::OK;
    }

  private:
    diagnose::DiagnoseEnvironment diagnose_environment() const {
        return {&registry_, observations_, diagnose::tls_stats_reader(observations_)};
    }

    // Counts an open stream for the cap; released on every exit path.
    class StreamSlot {
      public:
        StreamSlot(std::atomic<std::size_t>& streams, std::size_t max) : streams_(streams) {
            acquired_ = ++streams_ <= max;
        }
        ~StreamSlot() { --streams_; }
        StreamSlot(const StreamSlot&) = delete;
        StreamSlot& operator=(const StreamSlot&) = delete;
        bool acquired() const { return acquired_; }

      private:
        std::atomic<std::size_t>& streams_;
        bool acquired_ = false;
    };

    static bool write(grpc::ServerWriter<v1::StreamEventsResponse>* writer,
                      const events::StreamItem& item) {
        v1::StreamEventsResponse response;
        to_proto(item, response);
        return writer->Write(response);
    }
    static grpc::Status cancelled() {
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }

    WorkloadRegistry& registry_;
    events::EventBus* events_;
    const std::size_t max_streams_;
    const ObservationSource* observations_;
    std::atomic<std::size_t> streams_{0};
    std::atomic<bool> stopping_{false};
};

}  // namespace

// The unix socket and the TCP listener are two servers with a service each: their own handler
// threads, memory quota and stream cap, so no TCP client can use up what root's unix socket
// needs (docs/api.md "Budgets").
struct GrpcServer::Impl {
    Impl(WorkloadRegistry& registry_ref, events::EventBus* events, GrpcServerOptions opts)
        : registry(registry_ref),
          options(std::move(opts)),
          service(registry, events, options.max_streams, options.observations),
          tcp_service(registry, events, options.max_tcp_streams, options.observations) {}
    WorkloadRegistry& registry;
    GrpcServerOptions options;
    AgentService service;
    AgentService tcp_service;
    std::unique_ptr<grpc::Server> server;
    std::unique_ptr<grpc::Server> tcp_server;
    std::optional<std::pair<dev_t, ino_t>> socket_identity;
    int tcp_port = 0;
};

namespace {

// TLS with the configured key pair; client certificates requested and verified against the CA
// bundle when one is configured (required with tls_require_client_cert).
std::shared_ptr<grpc::ServerCredentials> tcp_credentials(
    const std::shared_ptr<const tls::TlsMaterial>& material) {
    const auto request = !material->verifies_clients() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                         : material->require_client_cert
                             ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                             : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
    grpc::SslServerCredentialsOptions options(request);
    options.pem_root_certs = material->client_ca_pem;
    options.pem_key_cert_pairs.push_back({material->private_key_pem, material->cert_chain_pem});
    auto credentials = grpc::SslServerCredentials(options);
    credentials->SetAuthMetadataProcessor(std::make_shared<TcpAuthProcessor>(material));
    return credentials;
}

// Bounds for the TCP server, where anyone who can reach the port is a client: HTTP/2 streams
// per connection, the age and idleness of a connection, and (through the resource quota) the
// memory and threads all its connections may use together.
void bound_tcp_server(grpc::ServerBuilder& builder, const GrpcServerOptions& options,
                      grpc::ResourceQuota& quota) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               static_cast<int>(options.max_tcp_concurrent_streams));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(options.tcp_max_connection_age.count()));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, 10'000);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               static_cast<int>(options.tcp_max_connection_idle.count()));
    builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
    quota.Resize(options.tcp_memory_bytes);
    quota.SetMaxThreads(options.max_tcp_threads);
    builder.SetResourceQuota(quota);
}

Status start_tcp_server(GrpcServer::Impl& impl);

}  // namespace

GrpcServer::GrpcServer(WorkloadRegistry& registry, events::EventBus* events,
                       GrpcServerOptions options)
    : impl_(std::make_unique<Impl>(registry, events, std::move(options))) {}

GrpcServer::~GrpcServer() { stop(); }

Status GrpcServer::start() {
    const std::string& path = impl_->options.unix_socket_path;
    if (impl_->server) return Error{EALREADY, "gRPC server already started on " + path};
    if (auto prepared = prepare_unix_socket_path(path); !prepared)
        return prepared.error().with_context("gRPC");
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    int bound = 0;
    builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials(), &bound);
    const auto& tcp = impl_->options.tcp;
    if (tcp && !tcp->tls) return Error::invalid("gRPC TCP listener without TLS material: refused");
    builder.RegisterService(&impl_->service);
    builder.SetMaxReceiveMessageSize(impl_->options.max_receive_message_bytes);
    grpc::ResourceQuota quota("meshlane-grpc");
    quota.SetMaxThreads(impl_->options.max_threads);
    builder.SetResourceQuota(quota);
    impl_->server = builder.BuildAndStart();
    if (!impl_->server) return Error{EADDRNOTAVAIL, "gRPC: cannot listen on unix:" + path};
    if (auto started = start_tcp_server(*impl_); !started) {
        stop(std::chrono::milliseconds(0));
        return started;
    }
    // gRPC binds with the process umask; a socket needs write permission to connect, so until
    // this chmod only root could connect anyway (0755 at most under the usual umask).
    if (::chmod(path.c_str(), 0600) != 0) {
        auto error = Error::last_errno("chmod 0600 " + path);
        stop(std::chrono::milliseconds(0));
        return error;
    }
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) impl_->socket_identity = {st.st_dev, st.st_ino};
    refresh_health();
    spdlog::info("grpc: listening on unix:{}", path);
    if (tcp) {
        if (!tcp->endpoint.loopback)
            spdlog::warn("grpc: listens on non-loopback {}: reachable from other hosts",
                         tcp->endpoint.text());
        // gRPC before 1.59 has no defence against HTTP/2 rapid reset (CVE-2023-44487); the
        // bounds above and the agent's heap trimming keep what remains after a burst small,
        // not the peak during it (docs/api.md "Budgets").
        spdlog::warn(
            "grpc: the TCP listener runs on gRPC {}, which has no defence against "
            "HTTP/2 rapid reset (CVE-2023-44487): any client that reaches {} can make "
            "the agent allocate memory while it sends; keep it on loopback or off",
            grpc::Version(), tcp->endpoint.text());
        spdlog::info("grpc: listening on {}:{} (TLS{})",
                     tcp->endpoint.v6 ? "[" + tcp->endpoint.address + "]" : tcp->endpoint.address,
                     impl_->tcp_port,
                     tcp->tls->require_client_cert ? ", client certificate required" : "");
    }
    return Ok{};
}

void GrpcServer::stop(std::chrono::milliseconds grace) {
    if (!impl_->server) return;
    impl_->service.stop();
    impl_->tcp_service.stop();
    if (impl_->tcp_server) {
        impl_->tcp_server->Shutdown(std::chrono::system_clock::now() + grace);
        impl_->tcp_server->Wait();
        impl_->tcp_server.reset();
    }
    impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
    impl_->server->Wait();
    impl_->server.reset();
    const std::string& path = impl_->options.unix_socket_path;
    struct stat st {};
    if (impl_->socket_identity && ::lstat(path.c_str(), &st) == 0 &&
        std::pair{st.st_dev, st.st_ino} == *impl_->socket_identity) {
        ::unlink(path.c_str());
    }
    impl_->socket_identity.reset();
}

bool GrpcServer::refresh_health() {
    if (!impl_->server) return false;
    const auto status = impl_->registry.status();
    const bool serving = evaluate_readiness(status).serving() && datapath_reachable(status);
    // grpc.health.v1: "" is the server as a whole; a service name answers NOT_FOUND until set.
    // Both transports (unix socket, and the TCP server when configured) answer the same.
    for (grpc::Server* server : {impl_->server.get(), impl_->tcp_server.get()}) {
        if (server == nullptr) continue;
        auto* health = server->GetHealthCheckService();
        if (health == nullptr) continue;
        for (const char* name : {"", kAgentServiceName}) health->SetServingStatus(name, serving);
    }
    return serving;
}

std::size_t GrpcServer::active_streams() const {
    return impl_->service.active_streams() + impl_->tcp_service.active_streams();
}

int GrpcServer::tcp_port() const { return impl_->tcp_server ? impl_->tcp_port : 0; }

namespace {

Status start_tcp_server(GrpcServer::Impl& impl) {
    const auto& tcp = impl.options.tcp;
    if (!tcp) return Ok{};
    grpc::ServerBuilder builder;
    builder.AddListeningPort(tcp->endpoint.text(), tcp_credentials(tcp->tls), &impl.tcp_port);
    builder.RegisterService(&impl.tcp_service);
    grpc::ResourceQuota quota("meshlane-grpc-tcp");
    bound_tcp_server(builder, impl.options, quota);
    impl.tcp_server = builder.BuildAndStart();
    if (!impl.tcp_server)
        return Error{EADDRNOTAVAIL, "gRPC: cannot listen on " + tcp->endpoint.text()};
    return Ok{};
}

}  // namespace

}  // namespace meshlane::grpc_api
