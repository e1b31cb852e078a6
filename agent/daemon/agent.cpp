#include "agent/daemon/agent.h"

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "agent/common/unique_fd.h"
#include "agent/daemon/config.h"
#include "agent/daemon/prerequisites.h"
#include "agent/events/event_bus.h"
#include "agent/loader/libbpf_log.h"
#include "agent/loader/mounts.h"
#include "agent/loader/redirect_datapath.h"
#include "agent/observe/observer.h"
#include "agent/workload/workload_manager.h"
#include "api/grpc/grpc_server.h"
#include "api/rest/rest_server.h"

namespace meshlane {

namespace {

// One agent per state directory: a second one would fight over pins and the socket.
Result<UniqueFd> lock_state_dir(const std::string& state_dir) {
    std::error_code ec;
    std::filesystem::create_directories(state_dir, ec);
    if (ec) return Error::from_errno(ec.value(), "create state_dir " + state_dir);
    ::chmod(state_dir.c_str(), 0755);
    const std::string path = state_dir + "/agent.lock";
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd.valid()) return Error::last_errno("open " + path);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return Error{EBUSY, "another meshlane agent is running with state_dir " + state_dir};
        return Error::last_errno("lock " + path);
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

std::string privilege_hint(const Error& error) {
    if (error.code == EPERM || error.code == EACCES)
        return " (meshlane agent needs root, or CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and "
               "CAP_PERFMON)";
    return "";
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

    auto lock = lock_state_dir(config->state_dir);
    if (!lock) {
        spdlog::error("{}{}", lock.error().message, privilege_hint(lock.error()));
        return 1;
    }
    // Probe everything first: one report naming each missing feature beats the first verifier
    // error of the first program that needs it.
    const PrerequisiteReport prerequisites =
        probe_prerequisites(kernel_probe_environment(config->bpffs));
    if (!prerequisites.all_available()) {
        spdlog::error(
            "kernel prerequisites missing; nothing was loaded or changed:\n{}"
            "meshlane needs every capability above to intercept a workload",
            prerequisites.describe());
        return 1;
    }
    spdlog::info("kernel prerequisites: all {} probed features present",
                 prerequisites.probes.size());
    auto cgroup2 = cgroup2_mount();
    if (!cgroup2) {
        spdlog::error("{}", cgroup2.error().message);
        return 1;
    }
    auto bpffs = ensure_bpffs(config->bpffs);
    if (!bpffs) {
        spdlog::error("{}{}", bpffs.error().message, privilege_hint(bpffs.error()));
        return 1;
    }
    const std::string pin_root = *bpffs + "/" + config->pin_dir;
    auto datapath = RedirectDatapath::load({pin_root, config->max_workloads});
    if (!datapath) {
        spdlog::error("load the redirect datapath: {}{}", datapath.error().message,
                      privilege_hint(datapath.error()));
        return 1;
    }
    ManagerOptions manager_options{config->state_dir, *cgroup2, prerequisites.features()};
    // Declared before everything that publishes or subscribes, so it outlives them all.
    events::EventBus event_bus;
    manager_options.events = &event_bus;
    WorkloadManager manager(**datapath, manager_options);
    if (auto restored = manager.restore(); !restored) {
        spdlog::error("restore workloads from {}: {}", config->state_dir, restored.error().message);
        return 1;
    }

    boost::asio::io_context io;
    // Connection and drop observation is an add-on: without it the datapath still serves.
    auto observer = Observer::start({.pin_root = pin_root, .max_workloads = config->max_workloads});
    if (!observer)
        spdlog::warn("observe: connection and drop observation disabled: {}",
                     observer.error().message);
    rest::RestServerOptions rest_options;
    rest_options.unix_socket_path = config->api_socket;
    if (observer) rest_options.observations = observer->get();
    rest_options.events = &event_bus;
    rest::RestServer server(io, manager, rest_options);
    if (auto started = server.start(); !started) {
        spdlog::error("API: {}", started.error().message);
        return 1;
    }
    grpc_api::GrpcServer grpc_server(manager, &event_bus,
                                     {.unix_socket_path = config->grpc_socket});
    if (auto started = grpc_server.start(); !started) {
        spdlog::error("{}", started.error().message);
        return 1;
    }
    boost::asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code&, int signal) {
        spdlog::info("signal {}: stopping; the datapath stays pinned and keeps intercepting",
                     signal);
        // Closing the bus ends every event stream first, so neither server waits on one.
        event_bus.close();
        server.stop();
        grpc_server.stop();
        io.stop();
    });
    boost::asio::steady_timer reconcile_timer(io);
    schedule_reconcile(reconcile_timer, manager,
                       std::chrono::milliseconds(config->reconcile_interval_ms));

    spdlog::info(
        "meshlane agent {} ready: API on {} (REST) and {} (gRPC), pins under {}, "
        "cgroup2 at {}",
        MESHLANE_VERSION, config->api_socket, config->grpc_socket, pin_root, *cgroup2);
    io.run();
    return 0;
}

}  // namespace meshlane
