#include "agent/diagnose/collector.h"

#include <bpf/bpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "agent/common/tcp_listeners.h"
#include "agent/common/unique_fd.h"

extern char** environ;

namespace meshlane::diagnose {

namespace {

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    if (!in) return {};
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

std::int64_t boot_time_unix_ms() {
    std::istringstream in(read_text("/proc/stat"));
    for (std::string line; std::getline(in, line);)
        if (line.rfind("btime ", 0) == 0) return std::stoll(line.substr(6)) * 1000;
    return 0;
}

std::int64_t now_unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Runs argv (PATH lookup) in the caller's namespaces; stdout collected, stderr appended.
struct CommandOutput {
    int exit_code = -1;
    std::string out;
};
Result<CommandOutput> run_command(const std::vector<std::string>& args,
                                  std::chrono::milliseconds timeout) {
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Error::last_errno("pipe");
    UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
    posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = 0;
    const int rc = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    write_end.reset();
    if (rc != 0) return Error::from_errno(rc, "run " + args[0]);
    CommandOutput output;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buffer[4096];
    bool timed_out = false;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd p{read_end.get(), POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
        const auto n = ::read(read_end.get(), buffer, sizeof buffer);
        if (n <= 0) break;
        output.out.append(buffer, static_cast<std::size_t>(n));
    }
    if (timed_out) ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (timed_out) return Error{ETIMEDOUT, args[0] + " did not finish in time"};
    output.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return output;
}

std::uint32_t status_field(const std::string& text, const char* key) {
    auto pos = text.find(key);
    if (pos == std::string::npos) return 0;
    std::istringstream in(text.substr(pos + std::strlen(key)));
    std::uint32_t real = 0, effective = 0;
    in >> real >> effective;
    return effective;
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

const char* attach_type_name(bpf_attach_type type) {
    return type == BPF_CGROUP_INET4_CONNECT ? "connect4" : "connect6";
}

}  // namespace

std::string cgroup_relative(const std::string& cgroup_resolved, const std::string& cgroup2_mount) {
    std::string mount = cgroup2_mount;
    while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
    if (cgroup_resolved.rfind(mount, 0) == 0) {
        auto rel = cgroup_resolved.substr(mount.size());
        return rel.empty() ? "/" : rel;
    }
    return cgroup_resolved;
}

std::vector<ProcessInfo> scan_processes(std::uint64_t netns_inode, const std::string& pod_rel) {
    std::vector<ProcessInfo> processes;
    const auto boot_ms = boot_time_unix_ms();
    const long ticks = ::sysconf(_SC_CLK_TCK);
    DIR* dir = ::opendir("/proc");
    if (dir == nullptr) return processes;
    while (auto* entry = ::readdir(dir)) {
        const std::string name = entry->d_name;
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const std::string base = "/proc/" + name;
        ProcessInfo p;
        p.pid = static_cast<pid_t>(std::stol(name));
        struct stat st {};
        p.in_netns = ::stat((base + "/ns/net").c_str(), &st) == 0 && st.st_ino == netns_inode;
        std::istringstream cg(read_text(base + "/cgroup"));
        for (std::string line; std::getline(cg, line);)
            if (line.rfind("0::", 0) == 0) p.cgroup = line.substr(3);
        p.in_pod_cgroup =
            !p.cgroup.empty() && (p.cgroup == pod_rel || p.cgroup.rfind(pod_rel + "/", 0) == 0);
        if (!p.in_netns && !p.in_pod_cgroup) continue;
        const auto status = read_text(base + "/status");
        if (status.empty()) continue;  // gone
        p.uid = status_field(status, "Uid:");
        p.gid = status_field(status, "Gid:");
        p.comm = trim(read_text(base + "/comm"));
        const auto stat_text = read_text(base + "/stat");
        const auto close_paren = stat_text.rfind(')');
        if (close_paren != std::string::npos && ticks > 0) {
            std::istringstream fields(stat_text.substr(close_paren + 2));
            std::string field;
            // Fields after comm start at 3 (state); starttime is field 22.
            for (int i = 3; i <= 22 && fields >> field; ++i)
                if (i == 22) p.started_unix_ms = boot_ms + std::stoll(field) * 1000 / ticks;
        }
        processes.push_back(std::move(p));
    }
    ::closedir(dir);
    return processes;
}

std::map<std::uint64_t, std::vector<pid_t>> socket_holders(
    const std::vector<ProcessInfo>& processes) {
    std::map<std::uint64_t, std::vector<pid_t>> holders;
    for (const auto& p : processes) {
        if (!p.in_netns) continue;
        const std::string fd_dir = "/proc/" + std::to_string(p.pid) + "/fd";
        DIR* dir = ::opendir(fd_dir.c_str());
        if (dir == nullptr) continue;
        std::set<std::uint64_t> seen;
        while (auto* entry = ::readdir(dir)) {
            char target[64]{};
            const std::string link = fd_dir + "/" + entry->d_name;
            const auto n = ::readlink(link.c_str(), target, sizeof target - 1);
            if (n <= 0) continue;
            std::string_view t(target, static_cast<std::size_t>(n));
            if (t.rfind("socket:[", 0) != 0) continue;
            const auto inode = std::stoull(std::string(t.substr(8, t.size() - 9)));
            if (seen.insert(inode).second) holders[inode].push_back(p.pid);
        }
        ::closedir(dir);
    }
    return holders;
}

Result<std::vector<ListenSocket>> read_listeners_here() {
    auto listeners = list_tcp_listeners();
    if (!listeners) return listeners.error();
    std::vector<ListenSocket> all;
    all.reserve(listeners->size());
    for (auto& l : *listeners)
        all.push_back(ListenSocket{.local = std::move(l.local),
                                   .port = l.port,
                                   .ipv6 = l.ipv6,
                                   .uid = l.uid,
                                   .inode = l.inode,
                                   .pids = {},
                                   .accept_queue = l.accept_queue,
                                   .backlog = l.backlog});
    return all;
}

DiagnosisInput collect(const WorkloadStatus& status, const std::string& cgroup2_mount) {
    DiagnosisInput input;
    input.workload = status.spec.name;
    input.spec = status.spec;
    input.counters = status.counters;
    input.inbound_listener_registered = status.inbound_listener_v4 || status.inbound_listener_v6;
    input.collected_at_unix_ms = now_unix_ms();

    const auto pod_rel = cgroup_relative(status.cgroup_resolved, cgroup2_mount);
    input.processes = scan_processes(status.netns_inode, pod_rel);

    // Inside the netns: LISTEN sockets and the nat tables.
    Result<std::vector<ListenSocket>> listeners = Error{EIO, "not read"};
    std::vector<std::string> errors;
    auto joined = in_netns(status.spec.netns_path, [&] {
        listeners = read_listeners_here();
        // /proc/sys/net follows the opening thread's netns (setns above).
        input.local_port_range = trim(read_text("/proc/sys/net/ipv4/ip_local_port_range"));
        input.time_wait = parse_time_wait(read_text("/proc/thread-self/net/sockstat"));
        if (auto ct = parse_conntrack_stat(read_text("/proc/thread-self/net/stat/nf_conntrack"))) {
            const auto number = [](const std::string& text) -> std::uint64_t {
                return text.empty() ? 0 : std::strtoull(text.c_str(), nullptr, 10);
            };
            ct->count = number(read_text("/proc/sys/net/netfilter/nf_conntrack_count"));
            ct->max = number(read_text("/proc/sys/net/netfilter/nf_conntrack_max"));
            input.conntrack = ct;
        }
        // thread-self: /proc/self/net is the netns of the process's main thread, not this one.
        input.listen_counters = parse_listen_counters(read_text("/proc/thread-self/net/netstat"));
        if (!input.listen_counters)
            errors.push_back("TcpExt counters: /proc/net/netstat unreadable");
        const std::pair<const char*, std::optional<std::string>*> tools[] = {
            {"iptables-save", &input.nat_v4}, {"ip6tables-save", &input.nat_v6}};
        for (const auto& [tool, out] : tools) {
            auto ran = run_command({tool, "-t", "nat"}, std::chrono::seconds(5));
            if (!ran) {
                errors.push_back(std::string(tool) + " in the pod netns: " + ran.error().message);
                continue;
            }
            // A missing nat table is "no rules"; any output is searched for ISTIO_ chains.
            *out = ran->out;
        }
    });
    if (!joined) {
        input.collection_errors.push_back(joined.error().message);
    } else if (!listeners) {
        input.collection_errors.push_back("listening sockets: " + listeners.error().message);
    } else {
        const auto holders = socket_holders(input.processes);
        for (auto& s : *listeners) {
            if (auto it = holders.find(s.inode); it != holders.end()) s.pids = it->second;
        }
        input.listeners = std::move(*listeners);
    }
    for (auto& e : errors) input.collection_errors.push_back(std::move(e));

    // Cgroup connect programs in effect (this cgroup and its ancestors, execution order).
    std::set<std::uint32_t> ours;
    for (const auto& p : status.programs) ours.insert(p.prog_id);
    UniqueFd cgroup(::open(status.cgroup_resolved.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!cgroup.valid()) {
        input.collection_errors.push_back("open cgroup " + status.cgroup_resolved + ": " +
                                          std::strerror(errno));
        return input;
    }
    std::vector<ConnectProgram> programs;
    for (auto type : {BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT}) {
        std::uint32_t ids[64]{};
        std::uint32_t count = 64, flags = 0;
        if (::bpf_prog_query(cgroup.get(), type, BPF_F_QUERY_EFFECTIVE, &flags, ids, &count) != 0) {
            input.collection_errors.push_back(std::string("query ") + attach_type_name(type) +
                                              " programs of " + status.cgroup_resolved + ": " +
                                              std::strerror(errno));
            return input;
        }
        for (std::uint32_t i = 0; i < count; ++i) {
            ConnectProgram p;
            p.attach_type = attach_type_name(type);
            p.prog_id = ids[i];
            p.position = i;
            p.ours = ours.count(ids[i]) != 0;
            UniqueFd prog(::bpf_prog_get_fd_by_id(ids[i]));
            if (prog.valid()) {
                bpf_prog_info info{};
                std::uint32_t len = sizeof info;
                if (::bpf_obj_get_info_by_fd(prog.get(), &info, &len) == 0) p.name = info.name;
            }
            // Where it is attached directly: walk up from the pod cgroup.
            std::filesystem::path dir = status.cgroup_resolved;
            for (int depth = 0; depth < 32 && p.attached_at.empty(); ++depth) {
                UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
                if (fd.valid()) {
                    std::uint32_t direct[64]{};
                    std::uint32_t n = 64, f = 0;
                    if (::bpf_prog_query(fd.get(), type, 0, &f, direct, &n) == 0)
                        for (std::uint32_t k = 0; k < n; ++k)
                            if (direct[k] == ids[i]) p.attached_at = dir.string();
                }
                if (dir.string().size() <= cgroup2_mount.size() || !dir.has_parent_path()) break;
                dir = dir.parent_path();
            }
            programs.push_back(std::move(p));
        }
    }
    input.connect_programs = std::move(programs);
    return input;
}

}  // namespace meshlane::diagnose
