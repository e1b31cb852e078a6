#include "agent/daemon/agent.h"

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>
#include <tuple>

#include "agent/common/unique_fd.h"
#include "agent/daemon/config.h"
#include "agent/daemon/degraded_registry.h"
#include "agent/daemon/memory_trim.h"
#include "agent/daemon/prerequisites.h"
#include "agent/daemon/sd_notify.h"
#include "agent/events/event_bus.h"
#include "agent/loader/libbpf_log.h"
#include "agent/loader/mounts.h"
#include "agent/loader/redirect_datapath.h"
#include "agent/observe/observer.h"
#include "agent/workload/discovery.h"
#include "agent/workload/workload_manager.h"
#include "api/grpc/grpc_server.h"
#include "api/rest/rest_server.h"
#include "api/rest/scrape_server.h"
#include "api/tls/tls_config.h"
#include "features/fastpath/fastpath_datapath.h"
#include "features/fastpath/fastpath_selftest.h"

namespace meshlane {

namespace {

// The state directory holds what the agent re-adopts at restart: only the agent may write it.
// An existing one is checked, never changed (a chmod could open or close someone else's
// directory); one the agent creates is 0755.
Status prepare_state_dir(const std::string& state_dir) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(state_dir).parent_path(), ec);
    if (ec) return Error::from_errno(ec.value(), "create the parents of state_dir " + state_dir);
    if (::mkdir(state_dir.c_str(), 0755) == 0) {
        if (::chmod(state_dir.c_str(), 0755) != 0)  // the umask may have narrowed it
            return Error::last_errno("chmod 0755 state_dir " + state_dir);
    } else if (errno != EEXIST) {
        return Error::last_errno("create state_dir " + state_dir);
    }
    struct stat st {};
    if (::lstat(state_dir.c_str(), &st) != 0) return Error::last_errno("state_dir " + state_dir);
    if (!S_ISDIR(st.st_mode))
        return Error{ENOTDIR, "state_dir " + state_dir +
                                  " is not a directory (a symlink or a file): refusing to use it"};
    if (st.st_uid != ::geteuid())
        return Error{EPERM, "state_dir " + state_dir + " is owned by uid " +
                                std::to_string(st.st_uid) + ", not by the agent (uid " +
                                std::to_string(::geteuid()) + "): refusing to use it"};
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
        return Error{EPERM, "state_dir " + state_dir + " is writable by group or others (mode " +
                                mode + "): give the agent a directory only it can write"};
    }
    return Ok{};
}

// One agent per state directory: a second one would fight over pins and the socket.
Result<UniqueFd> lock_state_dir(const std::string& state_dir) {
    if (auto prepared = prepare_state_dir(state_dir); !prepared) return prepared.error();
    const std::string path = state_dir + "/agent.lock";
    // O_NOFOLLOW: a symlink planted here must not make root create or open a file elsewhere.
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) return Error::last_errno("open " + path);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return Error{EBUSY, "another meshlane agent is running with state_dir " + state_dir};
        return Error::last_errno("lock " + path);
    }
    return fd;
}

// One agent per pin_dir too: two agents with their own state_dir but the same pins would each
// remove the other's pins as "orphaned". The lock is an flock on the pin directory itself
// (bpffs holds no regular files); it ends with the process, so a restart after a crash works.
Result<UniqueFd> lock_pin_root(const std::string& pin_root) {
    std::error_code ec;
    std::filesystem::create_directories(pin_root, ec);
    if (ec) return Error::from_errno(ec.value(), "create pin directory " + pin_root);
    UniqueFd fd(::open(pin_root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) return Error::last_errno("open pin directory " + pin_root);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return Error{EBUSY, "another meshlane agent is running with the pin directory " +
                                    pin_root + " (bpffs + pin_dir); give each agent its own"};
        return Error::last_errno("lock pin directory " + pin_root);
    }
    return fd;
}

void schedule_reconcile(boost::asio::steady_timer& timer, WorkloadManager& manager,
                        std::chrono::milliseconds interval) {
    timer.expires_after(interval);
    timer.async_wait([&timer, &manager, interval](const boost::system::error_code& ec) {
        if (ec) return;
        manager.reconcile();
        schedule_reconcile(timer, manager, interval);
    });
}

void schedule_discovery(boost::asio::steady_timer& timer, PodDiscovery& discovery,
                        WorkloadRegistry& registry, std::chrono::milliseconds interval) {
    timer.expires_after(interval);
    timer.async_wait(
        [&timer, &discovery, &registry, interval](const boost::system::error_code& ec) {
            if (ec) return;
            (void)discovery.run(registry);
            schedule_discovery(timer, discovery, registry, interval);
        });
}

std::string privilege_hint(const Error& error) {
    if (error.code == EPERM || error.code == EACCES)
        return " (meshlane agent needs root, or CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and "
               "CAP_PERFMON)";
    return "";
}

// The observer's tunables from the config; its events go on the bus under the workloads' names.
ObserverOptions observer_options(const AgentConfig& config, const std::string& pin_root,
                                 WorkloadRegistry& manager, events::EventBus& bus) {
    ObserverOptions options;
    options.pin_root = pin_root;
    options.max_workloads = config.max_workloads;
    options.slow_connect_threshold = std::chrono::milliseconds(config.slow_connect_threshold_ms);
    options.tls_slow_handshake_threshold =
        std::chrono::milliseconds(config.tls_slow_handshake_threshold_ms);
    options.drop_events_per_second = config.event_rate_limit_per_sec;
    options.drop_events_burst = std::max<std::uint32_t>(1, config.event_rate_limit_per_sec / 5);
    options.events_per_workload = config.recent_events_per_workload;
    options.drop_count_only_reasons = config.drop_count_only_reasons;
    options.tls_destinations_per_workload = config.tls_destinations_per_workload;
    options.tls_destinations_total = config.tls_destinations_total;
    options.events = &bus;
    options.workload_names = [&manager] {
        std::map<std::uint64_t, std::string> names;
        for (const auto& workload : manager.list())
            names[workload.netns_cookie] = workload.spec.name;
        return names;
    };
    // TLS wire observation attaches to each enrolled pod's cgroup.
    options.workload_cgroups = [&manager] {
        std::vector<ObservedCgroup> cgroups;
        for (const auto& workload : manager.list())
            cgroups.push_back({workload.netns_cookie, workload.cgroup_resolved});
        return cgroups;
    };
    return options;
}

// The parsed TCP endpoints and the TLS material they share; all empty when TCP is off.
struct ApiTcpListeners {
    std::optional<tls::TcpEndpoint> rest;
    std::optional<tls::TcpEndpoint> grpc;
    std::shared_ptr<const tls::TlsMaterial> tls;
};

Result<ApiTcpListeners> api_tcp_listeners(const AgentConfig& config) {
    ApiTcpListeners listeners;
    if (!config.tcp_enabled()) return listeners;
    // parse_agent_config validated the addresses already; parse again for the values.
    if (!config.rest_tcp_listen.empty())
        listeners.rest = *tls::parse_tcp_endpoint(config.rest_tcp_listen);
    if (!config.grpc_tcp_listen.empty())
        listeners.grpc = *tls::parse_tcp_endpoint(config.grpc_tcp_listen);
    auto material = tls::load_tls_material({config.tls_cert_file, config.tls_key_file,
                                            config.tls_client_ca_file,
                                            config.tls_require_client_cert, config.api_token_file});
    if (!material) return material.error().with_context("API over TCP");
    if (!material->accepts_mutations())
        spdlog::warn(
            "API over TCP is read-only: no api_token_file and no tls_client_ca_file, so "
            "mutating calls are refused there (401/UNAUTHENTICATED)");
    listeners.tls = std::make_shared<const tls::TlsMaterial>(std::move(*material));
    return listeners;
}

// Readiness for systemd (Type=notify); a failure is logged, never fatal: the agent serves anyway.
void notify_systemd(const std::string& state) {
    if (auto sent = sd_notify(state); !sent)
        spdlog::warn("systemd notification: {}", sent.error().message);
}

metrics::MetricsOptions metrics_options(const AgentConfig& config) {
    metrics::MetricsOptions options;
    options.workload_histograms = config.metrics_workload_histograms;
    options.drop_reasons = config.metrics_drop_reasons;
    return options;
}

// The scrape listener when metrics_address is set (validated by the config parser).
Result<std::unique_ptr<rest::ScrapeServer>> start_scrape_server(
    boost::asio::io_context& io, const AgentConfig& config, WorkloadRegistry& registry,
    const ObservationSource* observations, events::EventBus& bus) {
    if (config.metrics_address.empty()) return std::unique_ptr<rest::ScrapeServer>();
    rest::ScrapeServerOptions options;
    options.endpoint = *tls::parse_tcp_endpoint(config.metrics_address);
    options.metrics = metrics_options(config);
    options.observations = observations;
    options.events = &bus;
    auto server = std::make_unique<rest::ScrapeServer>(io, registry, std::move(options));
    if (auto started = server->start(); !started) return started.error();
    return server;
}

// gRPC health follows readiness (the pinned datapath can disappear under a running agent).
void schedule_health_refresh(boost::asio::steady_timer& timer, grpc_api::GrpcServer& server) {
    timer.expires_after(std::chrono::seconds(5));
    timer.async_wait([&timer, &server](const boost::system::error_code& ec) {
        if (ec) return;
        server.refresh_health();
        schedule_health_refresh(timer, server);
    });
}

}  // namespace

int run_agent(const std::string& config_path) {
    auto config = load_agent_config(config_path);
    if (!config) {
        spdlog::error("{}", config.error().message);
        return 1;
    }
    spdlog::set_level(spdlog::level::from_str(config->log_level));
    install_libbpf_logger();
    // The API's TCP listeners: certificate, key, CA and token read and checked before anything
    // is loaded, so a bad file fails the start cleanly.
    auto api_tcp = api_tcp_listeners(*config);
    if (!api_tcp) {
        spdlog::error("{}", api_tcp.error().message);
        return 1;
    }

    auto lock = lock_state_dir(config->state_dir);
    if (!lock) {
        spdlog::error("{}{}", lock.error().message, privilege_hint(lock.error()));
        return 1;
    }
    // Freed heap back to the kernel (bounded RSS after bursts of API abuse; memory_trim.h).
    MemoryTrimmer memory_trimmer;
    // Probe everything first: one report naming each missing feature beats the first verifier
    // error of the first program that needs it. Then each part starts when its features are
    // there; the others keep working without it (degraded start, docs/deploy.md).
    const PrerequisiteReport prerequisites =
        probe_prerequisites(kernel_probe_environment(config->bpffs));
    if (prerequisites.all_available())
        spdlog::info("kernel prerequisites: all {} probed features present",
                     prerequisites.probes.size());
    else
        spdlog::warn("kernel prerequisites missing:\n{}", prerequisites.describe());
    std::vector<std::string> unknown_forced;
    std::map<std::string, FeatureState> features =
        evaluate_features(prerequisites, features_forced_off(&unknown_forced));
    for (const auto& name : unknown_forced)
        spdlog::warn("MESHLANE_TEST_DISABLE_FEATURE: no feature named '{}'", name);
    auto disable = [&features](const char* name, const std::string& reason,
                               bool by_config = false) {
        if (!features[name].enabled) return;
        features[name].enabled = false;
        features[name].reason = reason;
        features[name].by_config = by_config;
    };
    if (!config->observe)
        for (const char* name : {kFeatureObserveConnect, kFeatureObserveDrops})
            disable(name, "observe = false in the agent config", true);
    auto cgroup2 = cgroup2_mount();
    if (!cgroup2) disable(kFeatureRedirect, cgroup2.error().message);
    auto bpffs = ensure_bpffs(config->bpffs);
    if (!bpffs) disable(kFeatureRedirect, bpffs.error().message + privilege_hint(bpffs.error()));
    const std::string cgroup2_path = cgroup2 ? *cgroup2 : "";
    const std::string pin_root = bpffs ? *bpffs + "/" + config->pin_dir : "";
    Result<UniqueFd> pin_lock = UniqueFd{};
    if (bpffs) {
        pin_lock = lock_pin_root(pin_root);
        if (!pin_lock) {
            spdlog::error("{}{}", pin_lock.error().message, privilege_hint(pin_lock.error()));
            return 1;
        }
    }
    std::unique_ptr<RedirectDatapath> datapath;
    if (features[kFeatureRedirect].enabled) {
        auto loaded = RedirectDatapath::load({pin_root, config->max_workloads});
        if (loaded)
            datapath = std::move(*loaded);
        else
            disable(kFeatureRedirect, "load the redirect datapath: " + loaded.error().message +
                                          privilege_hint(loaded.error()));
    }
    // DNS capture is an add-on of the redirect datapath: its programs load with it, and without
    // them (or the kernel features) enrolments asking for it are refused with the reason.
    if (!datapath) disable(kFeatureDnsCapture, "the redirect datapath is disabled");
    if (datapath && !datapath->dns_capture_available())
        disable(kFeatureDnsCapture, datapath->dns_capture_available().error().message);
    if (datapath && !features[kFeatureDnsCapture].enabled)
        datapath->disable_dns_capture(features[kFeatureDnsCapture].reason);
    ManagerOptions manager_options{config->state_dir, cgroup2_path, prerequisites.features()};
    // Set once the observer runs: enrol/unenrol then wait for its per-pod attachments.
    std::atomic<Observer*> attachments_owner{nullptr};
    manager_options.after_change = [&attachments_owner] {
        if (Observer* observer = attachments_owner.load())
            if (!observer->sync_attachments(std::chrono::seconds(2)))
                spdlog::warn("observe: per-pod attachments not in line with the workloads yet");
    };
    // The sk_msg fast path is an add-on: without it (or on a kernel failing the self-test) the
    // redirect datapath still serves every workload. Before any thread starts: the self-test
    // forks.
    std::unique_ptr<FastpathDatapath> fastpath;
    if (!datapath || !features[kFeatureFastPath].enabled) {
        manager_options.fast_path_reason =
            datapath ? features[kFeatureFastPath].reason : "the redirect datapath is disabled";
    } else {
        // The self-test first: it decides which sockets the datapath may accelerate
        // (reader_policy is a load-time constant of the object).
        auto selftest = run_fastpath_selftest(
            {.cgroup2_mount = *cgroup2, .force_fail = fastpath_selftest_forced_to_fail()});
        manager_options.fast_path_blocking_reader_hazard = selftest.blocking_reader_hazard;
        std::uint32_t policy = selftest.passed ? selftest.reader_policy : 0u;
        if (fastpath_reader_policy_forced_any() && policy != 0) {
            policy = MESHLANE_FASTPATH_POLICY_ANY_SOCKET;
            selftest.reason +=
                "; app sockets accelerated anyway: forced by "
                "MESHLANE_FASTPATH_READER_POLICY=any-socket";
        }
        manager_options.fast_path_reader_policy = policy;
        auto loaded = FastpathDatapath::load({pin_root, config->max_workloads, policy});
        if (loaded) {
            fastpath = std::move(*loaded);
            manager_options.fast_path_available = selftest.passed;
            manager_options.fast_path_reason =
                (selftest.passed ? "kernel self-test " : "kernel self-test failed: ") +
                selftest.reason;
        } else {
            manager_options.fast_path_reason = "not loaded: " + loaded.error().message;
        }
        if (manager_options.fast_path_available)
            spdlog::info("fast path: {}", manager_options.fast_path_reason);
        else
            spdlog::warn("fast path: acceleration off node-wide: {}",
                         manager_options.fast_path_reason);
    }
    manager_options.fastpath = fastpath.get();
    if (!manager_options.fast_path_available)
        disable(kFeatureFastPath, manager_options.fast_path_reason);
    // Declared before everything that publishes or subscribes, so it outlives them all.
    events::EventBus event_bus;
    manager_options.events = &event_bus;
    manager_options.feature_states = &features;
    // Without the redirect datapath the agent still serves status and diagnostics, and refuses
    // enrolment; whatever a previous agent pinned keeps intercepting untouched.
    std::optional<WorkloadManager> manager;
    std::optional<DegradedRegistry> degraded;
    if (datapath) {
        manager.emplace(*datapath, manager_options);
        if (auto restored = manager->restore(); !restored) {
            spdlog::error("restore workloads from {}: {}", config->state_dir,
                          restored.error().message);
            return 1;
        }
    } else {
        spdlog::error(
            "redirect datapath disabled: {}; serving status and diagnostics only, enrolment is "
            "refused",
            features[kFeatureRedirect].reason);
        degraded.emplace(DegradedRegistryOptions{config->state_dir, cgroup2_path, pin_root,
                                                 config->max_workloads, prerequisites.features(),
                                                 &features, features[kFeatureRedirect].reason});
    }
    WorkloadRegistry& registry = manager ? static_cast<WorkloadRegistry&>(*manager)
                                         : static_cast<WorkloadRegistry&>(*degraded);

    // Pods that were running before this agent (or whose records were lost): after restore, so
    // what is already enrolled is only reported.
    PodDiscovery discovery({.cni_cache_dir = config->cni_cache_dir, .cgroup2_mount = cgroup2_path});
    if (config->discover_pods && manager) (void)discovery.run(*manager);

    boost::asio::io_context io;
    // Connection and drop observation is an add-on: without it the datapath still serves.
    ObserverOptions observe = observer_options(*config, pin_root, registry, event_bus);
    observe.connect_tracking = features[kFeatureObserveConnect].enabled;
    observe.drop_tracking = features[kFeatureObserveDrops].enabled;
    auto observer = pin_root.empty() || (!observe.connect_tracking && !observe.drop_tracking)
                        ? Result<std::unique_ptr<Observer>>(
                              Error{ENOTSUP, "no bpffs, or both observers disabled"})
                        : Observer::start(observe);
    if (!observer)
        spdlog::warn("observe: connection and drop observation disabled: {}",
                     observer.error().message);
    else
        attachments_owner.store(observer->get());
    const ObserverHealth observed = observer ? (*observer)->health() : ObserverHealth{};
    for (const auto& [name, on, tag] :
         {std::tuple{kFeatureObserveConnect, observed.connect_tracking, "connect"},
          std::tuple{kFeatureObserveDrops, observed.drop_tracking, "drop"}}) {
        if (on) continue;
        std::string why;
        for (const auto& problem : observed.problems)
            if (problem.find(tag) != std::string::npos) why += (why.empty() ? "" : "; ") + problem;
        disable(name, why.empty() && !observer ? observer.error().message : why);
    }
    for (const auto& [name, state] : features)
        if (!state.enabled) spdlog::warn("feature {} disabled: {}", name, state.reason);
    spdlog::info("features:\n{}", describe_features(features));
    rest::RestServerOptions rest_options;
    rest_options.unix_socket_path = config->api_socket;
    if (observer) rest_options.observations = observer->get();
    rest_options.events = &event_bus;
    rest_options.metrics = metrics_options(*config);
    if (api_tcp->rest)
        rest_options.tcp = rest::RestServerOptions::Tcp{*api_tcp->rest, api_tcp->tls};
    rest::RestServer server(io, registry, rest_options);
    if (auto started = server.start(); !started) {
        spdlog::error("API: {}", started.error().message);
        return 1;
    }
    grpc_api::GrpcServer grpc_server(
        registry, &event_bus,
        {.unix_socket_path = config->grpc_socket,
         .observations = observer ? observer->get() : nullptr,
         .tcp = api_tcp->grpc ? std::optional<grpc_api::GrpcServerOptions::Tcp>(
                                    {*api_tcp->grpc, api_tcp->tls})
                              : std::nullopt});
    if (auto started = grpc_server.start(); !started) {
        spdlog::error("{}", started.error().message);
        return 1;
    }
    auto scrape_server =
        start_scrape_server(io, *config, registry, observer ? observer->get() : nullptr, event_bus);
    if (!scrape_server) {
        spdlog::error("{}", scrape_server.error().message);
        return 1;
    }
    boost::asio::steady_timer health_timer(io);
    schedule_health_refresh(health_timer, grpc_server);
    boost::asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code&, int signal) {
        spdlog::info("signal {}: stopping; the datapath stays pinned and keeps intercepting",
                     signal);
        notify_systemd("STOPPING=1");
        // Closing the bus ends every event stream first, so neither server waits on one.
        event_bus.close();
        server.stop();
        if (*scrape_server) (*scrape_server)->stop();
        grpc_server.stop();
        io.stop();
    });
    // Reconcile and pod discovery open namespaces, walk /proc and attach programs: they run on
    // a thread of their own, never on the io thread that answers the API.
    boost::asio::io_context housekeeping;
    auto housekeeping_work = boost::asio::make_work_guard(housekeeping);
    boost::asio::steady_timer reconcile_timer(housekeeping);
    if (manager)
        schedule_reconcile(reconcile_timer, *manager,
                           std::chrono::milliseconds(config->reconcile_interval_ms));
    boost::asio::steady_timer discovery_timer(housekeeping);
    if (config->discover_pods && manager)
        schedule_discovery(discovery_timer, discovery, *manager,
                           std::chrono::milliseconds(config->discover_interval_ms));
    std::thread housekeeper([&housekeeping] { housekeeping.run(); });

    spdlog::info(
        "meshlane agent {} ready: API on {} (REST) and {} (gRPC), pins under {}, "
        "cgroup2 at {}",
        MESHLANE_VERSION, config->api_socket, config->grpc_socket, pin_root, cgroup2_path);
    // Both API sockets listen and the datapath is loaded (or reported disabled): a Type=notify
    // unit's `systemctl start` returns now, and connections queued before io.run() are served.
    notify_systemd("READY=1\nSTATUS=API on " + config->api_socket);
    io.run();
    housekeeping.stop();
    housekeeper.join();
    return 0;
}

}  // namespace meshlane
