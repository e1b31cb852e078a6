#include "agent/diagnose/verify.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "agent/common/unique_fd.h"
#include "agent/diagnose/collector.h"

namespace meshlane::diagnose {

namespace json = boost::json;

namespace {

const char* attach_type_text(std::uint32_t type) {
    switch (type) {
        case BPF_CGROUP_INET4_CONNECT:
            return "connect4";
        case BPF_CGROUP_INET6_CONNECT:
            return "connect6";
        case BPF_CGROUP_SOCK_OPS:
            return "sock_ops";
        case BPF_CGROUP_GETSOCKOPT:
            return "getsockopt";
        case BPF_CGROUP_INET4_GETPEERNAME:
            return "getpeername4";
        case BPF_CGROUP_INET6_GETPEERNAME:
            return "getpeername6";
        case BPF_CGROUP_INET4_GETSOCKNAME:
            return "getsockname4";
        case BPF_CGROUP_INET6_GETSOCKNAME:
            return "getsockname6";
        case BPF_SK_LOOKUP:
            return "sk_lookup";
        default:
            return "other";
    }
}

bool in_effective(int target_fd, std::uint32_t type, std::uint32_t prog_id, std::uint32_t flags) {
    std::uint32_t ids[64]{};
    std::uint32_t count = 64, attach_flags = 0;
    if (::bpf_prog_query(target_fd, static_cast<bpf_attach_type>(type), flags, &attach_flags, ids,
                         &count) != 0)
        return false;
    for (std::uint32_t i = 0; i < count; ++i)
        if (ids[i] == prog_id) return true;
    return false;
}

VerifyCheck check_programs(const WorkloadStatus& status, const VerifyOptions& options) {
    VerifyCheck check{
        "programs", "datapath programs attached (read back from the kernel)", true, {}};
    const std::string dir = options.pin_root + "/workloads/" + status.spec.name;
    std::set<std::string> found;
    UniqueFd cgroup(::open(status.cgroup_resolved.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    UniqueFd netns(::open(status.spec.netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    std::error_code ec;
    std::vector<std::string> pins;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
        pins.push_back(entry.path().filename().string());
    std::sort(pins.begin(), pins.end());
    if (ec) {
        check.passed = false;
        check.evidence.push_back("cannot list " + dir + ": " + ec.message());
    }
    for (const auto& pin : pins) {
        const std::string path = dir + "/" + pin;
        UniqueFd link(::bpf_obj_get(path.c_str()));
        bpf_link_info info{};
        std::uint32_t len = sizeof info;
        if (!link.valid() || ::bpf_obj_get_info_by_fd(link.get(), &info, &len) != 0) {
            check.passed = false;
            check.evidence.push_back(pin + ": FAIL pin " + path + " is not a live bpf link");
            continue;
        }
        std::string line =
            pin + ": link " + std::to_string(info.id) + " prog " + std::to_string(info.prog_id);
        bool ok = false;
        if (info.type == BPF_LINK_TYPE_CGROUP) {
            const bool same = info.cgroup.cgroup_id == status.cgroup_id;
            const bool effective =
                cgroup.valid() && in_effective(cgroup.get(), info.cgroup.attach_type, info.prog_id,
                                               BPF_F_QUERY_EFFECTIVE);
            ok = same && effective;
            line += std::string(" ") + attach_type_text(info.cgroup.attach_type) +
                    " on cgroup id " + std::to_string(info.cgroup.cgroup_id) +
                    (same ? " (the pod cgroup)"
                          : " (NOT the pod cgroup " + std::to_string(status.cgroup_id) + ")") +
                    (effective ? ", in effect for " : ", NOT in the effective list of ") +
                    status.cgroup_resolved;
            found.insert(attach_type_text(info.cgroup.attach_type));
        } else if (info.type == BPF_LINK_TYPE_NETNS) {
            const bool same = info.netns.netns_ino == status.netns_inode;
            const bool attached =
                netns.valid() && in_effective(netns.get(), BPF_SK_LOOKUP, info.prog_id, 0);
            ok = same && attached;
            line += std::string(" sk_lookup on netns inode ") +
                    std::to_string(info.netns.netns_ino) +
                    (same ? " (the pod netns)" : " (NOT the pod netns)") +
                    (attached ? ", attached" : ", NOT in the netns's program list");
            found.insert("sk_lookup");
        } else {
            line += " unexpected link type " + std::to_string(info.type);
        }
        check.evidence.push_back((ok ? "ok   " : "FAIL ") + line);
        check.passed = check.passed && ok;
    }
    for (const char* required : {"connect4", "connect6", "sk_lookup"}) {
        if (found.count(required) == 0) {
            check.passed = false;
            check.evidence.push_back(std::string("FAIL no ") + required + " link for the workload");
        }
    }
    return check;
}

struct ProbeResult {
    int stage = 0;  // 1 cgroup, 2 setns, 3 setuid, 4 socket, 5 connect, 6 done
    int error = 0;
    int cgroup_index = -1;
    std::uint16_t local_port = 0;  // host order
};

struct TcpEntry {
    std::string local, remote;
    std::uint16_t local_port = 0, remote_port = 0;
    std::string state;
    std::uint32_t uid = 0;
    std::uint64_t inode = 0;
};

std::string hex_addr_text(const std::string& hex, std::uint16_t* port) {
    const auto colon = hex.find(':');
    *port = static_cast<std::uint16_t>(std::stoul(hex.substr(colon + 1), nullptr, 16));
    std::uint32_t word = static_cast<std::uint32_t>(std::stoul(hex.substr(0, colon), nullptr, 16));
    char buffer[INET_ADDRSTRLEN]{};
    ::inet_ntop(AF_INET, &word, buffer, sizeof buffer);
    return std::string(buffer) + ":" + std::to_string(*port);
}

std::vector<TcpEntry> read_tcp4(pid_t pid) {
    std::vector<TcpEntry> entries;
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/tcp");
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string sl, local, remote, state, q, t, r, uid, timeout, inode;
        if (!(f >> sl >> local >> remote >> state >> q >> t >> r >> uid >> timeout >> inode))
            continue;
        TcpEntry e;
        e.local = hex_addr_text(local, &e.local_port);
        e.remote = hex_addr_text(remote, &e.remote_port);
        e.state = state;
        e.uid = static_cast<std::uint32_t>(std::stoul(uid));
        e.inode = std::stoull(inode);
        entries.push_back(std::move(e));
    }
    return entries;
}

void reap(pid_t pid) {
    for (int i = 0; i < 100; ++i) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
}

void append_decimal(char* buffer, long value) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value > 0);
    int i = 0;
    while (n > 0) buffer[i++] = digits[--n];
    buffer[i] = '\0';
}

// The outbound probe and, when it connects, the SO_ORIGINAL_DST check.
std::vector<VerifyCheck> probe_outbound(const WorkloadStatus& status,
                                        const VerifyOptions& options) {
    VerifyCheck outbound{"outbound",
                         "probe connect " + options.probe_address + ":" +
                             std::to_string(options.probe_port) +
                             " is redirected to the proxy's outbound listener",
                         false,
                         {}};
    VerifyCheck orig{
        "orig_dst", "the proxy's SO_ORIGINAL_DST for the probe is answered", false, {}};
    const std::uint16_t out_port = status.spec.outbound_port;

    // Never probe without a listener: under the passthrough policy the probe would go direct.
    Result<std::vector<ListenSocket>> listeners = Error{EIO, "not read"};
    auto joined = in_netns(status.spec.netns_path, [&] { listeners = read_listeners_here(); });
    if (!joined || !listeners) {
        outbound.evidence.push_back("cannot read the pod's sockets: " +
                                    (!joined ? joined.error().message : listeners.error().message));
        orig.evidence.push_back("not checked: no probe");
        return {outbound, orig};
    }
    bool v4_listener = false;
    for (const auto& s : *listeners)
        if (s.port == out_port && !s.ipv6)
            v4_listener = true;
        else if (s.port == out_port && s.local.rfind("[::]", 0) == 0)
            v4_listener = true;
    if (!v4_listener) {
        outbound.evidence.push_back("proxy not listening: no IPv4 LISTEN socket on port " +
                                    std::to_string(out_port) +
                                    " in the pod netns; probe not sent (it would be refused, or "
                                    "leave the pod under the passthrough policy)");
        orig.evidence.push_back("not checked: proxy not listening");
        return {outbound, orig};
    }

    // Everything the child needs, prepared before fork (the child only makes system calls).
    UniqueFd netns(::open(status.spec.netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!netns.valid()) {
        outbound.evidence.push_back("open " + status.spec.netns_path + ": " + std::strerror(errno));
        return {outbound, orig};
    }
    std::vector<std::string> cgroup_dirs{status.cgroup_resolved};
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(status.cgroup_resolved, ec))
        if (entry.is_directory() && cgroup_dirs.size() < 8)
            cgroup_dirs.push_back(entry.path().string());
    std::vector<UniqueFd> procs;
    for (const auto& d : cgroup_dirs)
        procs.emplace_back(::open((d + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
    std::vector<int> proc_fds;
    for (const auto& p : procs) proc_fds.push_back(p.get());
    const std::uint32_t probe_uid = status.spec.proxy_uid == 65534 ? 65533 : 65534;
    const std::uint32_t probe_gid = status.spec.proxy_gid == 65534 ? 65533 : 65534;
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(options.probe_port);
    if (::inet_pton(AF_INET, options.probe_address.c_str(), &dst.sin_addr) != 1) {
        outbound.evidence.push_back("bad probe address " + options.probe_address);
        return {outbound, orig};
    }
    int result_pipe[2], go_pipe[2];
    if (::pipe2(result_pipe, O_CLOEXEC) != 0) return {outbound, orig};
    if (::pipe2(go_pipe, O_CLOEXEC) != 0) {
        ::close(result_pipe[0]);
        ::close(result_pipe[1]);
        return {outbound, orig};
    }
    UniqueFd result_read(result_pipe[0]), result_write(result_pipe[1]);
    UniqueFd go_read(go_pipe[0]), go_write(go_pipe[1]);
    const auto before =
        options.read_counters ? options.read_counters() : std::map<std::string, std::uint64_t>{};
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) {
        outbound.evidence.push_back(std::string("fork: ") + std::strerror(errno));
        return {outbound, orig};
    }
    if (child == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(1);
        ProbeResult r;
        char pid_text[24];
        append_decimal(pid_text, ::getpid());
        r.stage = 1;
        for (std::size_t i = 0; i < proc_fds.size() && r.cgroup_index < 0; ++i)
            if (proc_fds[i] >= 0 && ::write(proc_fds[i], pid_text, std::strlen(pid_text)) > 0)
                r.cgroup_index = static_cast<int>(i);
        int s = -1;
        if (r.cgroup_index < 0) {
            r.error = errno;
        } else if (r.stage = 2; ::setns(netns.get(), CLONE_NEWNET) != 0) {
            r.error = errno;
        } else if (r.stage = 3; ::setgroups(0, nullptr) != 0 ||
                                ::setresgid(probe_gid, probe_gid, probe_gid) != 0 ||
                                ::setresuid(probe_uid, probe_uid, probe_uid) != 0) {
            r.error = errno;
        } else if (r.stage = 4; (s = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)) < 0) {
            r.error = errno;
        } else {
            r.stage = 5;
            int rc = ::connect(s, reinterpret_cast<const sockaddr*>(&dst), sizeof dst);
            if (rc != 0 && errno == EINPROGRESS) {
                pollfd p{s, POLLOUT, 0};
                if (::poll(&p, 1, 1000) == 1) {
                    int err = 0;
                    socklen_t len = sizeof err;
                    ::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
                    r.error = err;
                } else {
                    r.error = ETIMEDOUT;
                }
            } else if (rc != 0) {
                r.error = errno;
            }
            sockaddr_in local{};
            socklen_t len = sizeof local;
            if (::getsockname(s, reinterpret_cast<sockaddr*>(&local), &len) == 0)
                r.local_port = ntohs(local.sin_port);
            if (r.error == 0) r.stage = 6;
        }
        (void)!::write(result_pipe[1], &r, sizeof r);
        char byte;
        (void)!::read(go_pipe[0], &byte, 1);  // parent closes go_write when done looking
        if (s >= 0) {
            linger l{1, 0};  // RST: nothing lingers in the proxy
            ::setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
            ::close(s);
        }
        ::_exit(0);
    }
    result_write.reset();
    go_read.reset();
    ProbeResult r;
    pollfd p{result_read.get(), POLLIN, 0};
    if (::poll(&p, 1, 3000) != 1 || ::read(result_read.get(), &r, sizeof r) != sizeof r) {
        outbound.evidence.push_back("probe process gave no answer within 3 s");
        go_write.reset();
        reap(child);
        return {outbound, orig};
    }
    if (r.cgroup_index >= 0)
        outbound.evidence.push_back("probe pid " + std::to_string(child) + " uid " +
                                    std::to_string(probe_uid) + " in cgroup " +
                                    cgroup_dirs[static_cast<std::size_t>(r.cgroup_index)]);
    if (r.stage < 5) {
        static const char* stages[] = {"", "join the pod cgroup", "join the pod netns",
                                       "drop privileges", "create a socket"};
        outbound.evidence.push_back(std::string("probe could not ") + stages[r.stage] + ": " +
                                    std::strerror(r.error));
    } else if (r.stage == 5) {
        outbound.evidence.push_back(
            std::string("probe connect failed: ") + std::strerror(r.error) +
            (r.error == ECONNREFUSED ? " (proxy not listening on the outbound port?)" : "") +
            (r.error == ETIMEDOUT ? " (no answer in 1 s: not redirected, or the proxy is stuck)"
                                  : ""));
    } else {
        // The kernel's view of the probe socket: where it really connected.
        const TcpEntry* conn = nullptr;
        const auto table = read_tcp4(child);
        for (const auto& e : table)
            // ESTABLISHED, or CLOSE_WAIT when the proxy already closed its side (its upstream
            // to the TEST-NET address failed): either way the kernel shows where it went.
            if (e.local_port == r.local_port && e.state != "0A" && e.remote_port != 0 &&
                e.local.rfind("0.0.0.0", 0) != 0 && e.remote_port != r.local_port) {
                conn = &e;
                break;
            }
        if (conn == nullptr) {
            outbound.evidence.push_back("probe socket (local port " + std::to_string(r.local_port) +
                                        ") not found in the pod's TCP table");
        } else {
            outbound.evidence.push_back("probe socket " + conn->local + " -> " + conn->remote +
                                        " (kernel view; the app sees " + options.probe_address +
                                        ":" + std::to_string(options.probe_port) + ")");
            const bool to_listener =
                conn->remote_port == out_port && conn->remote.rfind("127.", 0) == 0;
            if (!to_listener)
                outbound.evidence.push_back("NOT redirected to the outbound listener 127.0.0.1:" +
                                            std::to_string(out_port));
            // Who owns the listener it reached.
            const TcpEntry* listener = nullptr;
            for (const auto& e : table)
                if (e.state == "0A" && e.local_port == conn->remote_port) listener = &e;
            bool proxy_owned = false;
            if (listener != nullptr) {
                proxy_owned = listener->uid == status.spec.proxy_uid;
                std::string holders;
                const auto processes = scan_processes(status.netns_inode, "/nonexistent-cgroup");
                const auto held = socket_holders(processes);
                if (auto it = held.find(listener->inode); it != held.end()) {
                    for (auto pid : it->second) {
                        for (const auto& proc : processes) {
                            if (proc.pid != pid) continue;
                            holders += " pid " + std::to_string(pid) + " (" + proc.comm + ") uid " +
                                       std::to_string(proc.uid) + " gid " +
                                       std::to_string(proc.gid);
                            proxy_owned = proxy_owned || proc.uid == status.spec.proxy_uid ||
                                          proc.gid == status.spec.proxy_gid;
                        }
                    }
                }
                outbound.evidence.push_back(
                    "listener " + listener->local + " socket uid " + std::to_string(listener->uid) +
                    ", held by" + (holders.empty() ? " unknown" : holders) +
                    (proxy_owned
                         ? " (the proxy)"
                         : " (NOT the proxy uid " + std::to_string(status.spec.proxy_uid) + ")"));
            } else {
                outbound.evidence.push_back("no LISTEN socket on port " +
                                            std::to_string(conn->remote_port) + " any more");
            }
            outbound.passed = to_listener && proxy_owned;
            if (outbound.passed)
                outbound.evidence.push_back("the probe connection stayed on the pod's loopback");
        }
        // SO_ORIGINAL_DST: the proxy asks on accept; give it up to 2 s.
        if (options.read_counters) {
            const auto answered = [](const std::map<std::string, std::uint64_t>& c, const char* k) {
                auto it = c.find(k);
                return it == c.end() ? std::uint64_t{0} : it->second;
            };
            const auto was = answered(before, "orig_dst_answered");
            const auto miss_was = answered(before, "orig_dst_miss");
            std::map<std::string, std::uint64_t> now;
            for (int i = 0; i < 40; ++i) {
                now = options.read_counters();
                if (answered(now, "orig_dst_answered") > was) break;
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            orig.passed = answered(now, "orig_dst_answered") > was;
            orig.evidence.push_back("orig_dst_answered " + std::to_string(was) + " -> " +
                                    std::to_string(answered(now, "orig_dst_answered")) +
                                    ", orig_dst_miss " + std::to_string(miss_was) + " -> " +
                                    std::to_string(answered(now, "orig_dst_miss")));
            if (!orig.passed)
                orig.evidence.push_back(
                    "the proxy did not get an SO_ORIGINAL_DST answer within "
                    "2 s (it may not ask, e.g. a proxy that reads getsockname)");
        }
    }
    if (r.stage < 6) orig.evidence.push_back("not checked: the probe did not connect");
    go_write.reset();
    reap(child);
    return {outbound, orig};
}

VerifyCheck check_inbound(const WorkloadStatus& status) {
    VerifyCheck check{"inbound",
                      "the proxy's inbound listener (port " +
                          std::to_string(status.spec.inbound_port) +
                          ") is registered for sk_lookup steering",
                      status.inbound_listener_v4 || status.inbound_listener_v6,
                      {}};
    check.evidence.push_back(std::string("IPv4 slot: ") +
                             (status.inbound_listener_v4 ? "registered" : "empty"));
    check.evidence.push_back(std::string("IPv6 slot: ") +
                             (status.inbound_listener_v6 ? "registered" : "empty"));
    if (!check.passed)
        check.evidence.push_back(
            "proxy not listening (or not as the proxy uid): inbound "
            "connections are " +
            std::string(status.spec.startup_policy == StartupPolicy::kRefuse
                            ? "refused"
                            : "passed to the app unmeshed"));
    return check;
}

}  // namespace

VerifyReport verify(const WorkloadStatus& status, const VerifyOptions& options) {
    VerifyReport report;
    report.workload = status.spec.name;
    report.checks.push_back(check_programs(status, options));
    for (auto& c : probe_outbound(status, options)) report.checks.push_back(std::move(c));
    report.checks.push_back(check_inbound(status));
    report.passed = true;
    for (const auto& c : report.checks) report.passed = report.passed && c.passed;
    return report;
}

json::object to_json(const VerifyReport& report) {
    json::array checks;
    for (const auto& c : report.checks) {
        json::array evidence;
        for (const auto& e : c.evidence) evidence.emplace_back(e);
        checks.emplace_back(json::object{{"hop", c.hop},
                                         {"name", c.name},
                                         {"passed", c.passed},
                                         {"evidence", std::move(evidence)}});
    }
    return json::object{
        {"workload", report.workload}, {"passed", report.passed}, {"checks", std::move(checks)}};
}

}  // namespace meshlane::diagnose
