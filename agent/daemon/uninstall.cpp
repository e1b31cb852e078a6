#include "agent/daemon/uninstall.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>

#include "agent/common/unique_fd.h"
#include "agent/daemon/config.h"
#include "agent/loader/mounts.h"

namespace meshlane {

namespace fs = std::filesystem;

namespace {

// Takes the agent's lock and keeps it for the whole uninstall, so no agent can start (and
// re-create pins) half-way through. An invalid fd: no agent ever ran with this state_dir.
Result<UniqueFd> lock_out_agent(const std::string& state_dir) {
    const std::string path = state_dir + "/agent.lock";
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) return UniqueFd();
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0)
        return Error{EBUSY, "a meshlane agent is running with state_dir " + state_dir +
                                "; stop it first (the datapath stays pinned until uninstall)"};
    return fd;
}

Status detach_links_in(const fs::path& dir, UninstallReport& report) {
    std::error_code ec;
    for (const auto& pin : fs::directory_iterator(dir, ec)) {
        UniqueFd link(bpf_obj_get(pin.path().c_str()));
        if (!link.valid()) return Error::last_errno("open pinned link " + pin.path().string());
        if (bpf_link_detach(link.get()) != 0 && errno != ENOLINK && errno != EINVAL)
            return Error::last_errno("detach link " + pin.path().string());
        ++report.links_detached;
    }
    return Ok{};
}

// Links first (detaching them is what stops interception), then everything else. The fast
// path's per-workload sockops link sits in the workload directories; its sk_msg link (on the
// SOCKHASH) in <pin_root>/fastpath.
Status detach_links(const fs::path& root, UninstallReport& report) {
    std::error_code ec;
    for (const auto& workload : fs::directory_iterator(root / "workloads", ec))
        if (auto detached = detach_links_in(workload.path(), report); !detached) return detached;
    return detach_links_in(root / "fastpath", report);
}

// Only a socket nobody accepts on is the stopped agent's: a regular file, a symlink or a live
// socket at the configured path is someone else's and stays.
void remove_own_socket(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return;
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (!probe.valid() || path.size() >= sizeof address.sun_path) return;
    path.copy(address.sun_path, sizeof address.sun_path - 1);
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0 ||
        errno != ECONNREFUSED)
        return;
    ::unlink(path.c_str());
}

// A bpffs the agent mounted at a configured path of its own (not the system's /sys/fs/bpf) is
// unmounted once nothing is pinned in it any more.
void unmount_own_bpffs(const std::string& configured) {
    if (configured.empty() || configured == "/sys/fs/bpf" || !is_bpffs(configured)) return;
    std::error_code ec;
    if (!fs::is_empty(configured, ec) || ec) return;
    ::umount2(configured.c_str(), UMOUNT_NOFOLLOW);
}

}  // namespace

Result<UninstallReport> uninstall(const std::string& config_path) {
    auto config = load_agent_config(config_path);
    if (!config) return config.error();
    auto lock = lock_out_agent(config->state_dir);
    if (!lock) return lock.error();
    auto bpffs =
        config->bpffs.empty() ? find_mount_point("bpf") : Result<std::string>(config->bpffs);
    UninstallReport report;
    if (bpffs) {
        report.pin_root = *bpffs + "/" + config->pin_dir;
        const fs::path root(report.pin_root);
        std::error_code ec;
        if (fs::exists(root, ec)) {
            if (auto detached = detach_links(root, report); !detached) return detached.error();
            for (const auto& map : fs::directory_iterator(root / "maps", ec)) {
                (void)map;
                ++report.maps_unpinned;
            }
            fs::remove_all(root, ec);
            if (ec) return Error::from_errno(ec.value(), "remove " + report.pin_root);
        }
    }
    std::error_code ec;
    fs::remove(fs::path(config->state_dir) / "workloads.json", ec);
    fs::remove(fs::path(config->state_dir) / "agent.lock", ec);
    remove_own_socket(config->api_socket);
    remove_own_socket(config->grpc_socket);
    if (bpffs) unmount_own_bpffs(config->bpffs);
    return report;
}

}  // namespace meshlane
