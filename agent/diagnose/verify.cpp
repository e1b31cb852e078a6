#include "agent/diagnose/verify.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/bpf.h>
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
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "agent/common/in_netns.h"
#include "agent/common/tcp_listeners.h"
#include "agent/common/unique_fd.h"
#include "agent/diagnose/collector.h"
#include "agent/workload/listener_adoption.h"
#include "features/fastpath/fastpath_abi.h"
#include "features/fastpath/fastpath_conn_state.h"
#include "meshlane/redirect_abi.h"

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
        case BPF_CGROUP_UDP4_SENDMSG:
            return "sendmsg4";
        case BPF_CGROUP_UDP6_SENDMSG:
            return "sendmsg6";
        case BPF_CGROUP_UDP4_RECVMSG:
            return "recvmsg4";
        case BPF_CGROUP_UDP6_RECVMSG:
            return "recvmsg6";
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

// "[::ffff:127.0.0.1]:15001" -> "127.0.0.1:15001": a dual-stack socket's IPv4 peers read like
// those of an AF_INET socket, so the address checks below hold for both.
std::string unmapped(const std::string& text) {
    constexpr std::string_view kMapped = "[::ffff:";
    if (text.rfind(kMapped, 0) != 0 || text.find('.') == std::string::npos) return text;
    const auto close = text.find(']');
    if (close == std::string::npos) return text;
    return text.substr(kMapped.size(), close - kMapped.size()) + text.substr(close + 1);
}

// The TCP sockets, IPv4 and IPv6, of the netns `pid` is in, from the kernel (sock_diag, the one
// socket reader: agent/common/tcp_listeners.h). `state` keeps /proc/net/tcp's two hex digits
// ("0A" LISTEN, "01" ESTABLISHED) for the evidence texts.
std::vector<TcpEntry> read_tcp(pid_t pid) {
    std::vector<TcpEntry> entries;
    Result<std::vector<TcpSocket>> sockets = Error{EIO, "not read"};
    const std::string netns = "/proc/" + std::to_string(pid) + "/ns/net";
    if (auto joined = in_netns(netns, [&] { sockets = list_tcp_sockets(~0U); });
        !joined || !sockets)
        return entries;
    for (const auto& socket : *sockets) {
        TcpEntry e;
        e.local = unmapped(socket.local);
        e.remote = unmapped(socket.remote);
        e.local_port = socket.local_port;
        e.remote_port = socket.remote_port;
        char state[3]{};
        std::snprintf(state, sizeof state, "%02X", socket.state);
        e.state = state;
        e.uid = socket.uid;
        e.inode = socket.inode;
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

// Who holds the proxy's outbound listener in the pod (uid/gid of the holding process, else of
// the socket): the identity whose own connects must not be captured again.
struct ListenerHolder {
    bool found = false;
    pid_t pid = 0;
    std::string comm;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
};

ListenerHolder outbound_listener_holder(const WorkloadStatus& status,
                                        const std::vector<ListenSocket>& listeners) {
    ListenerHolder holder;
    const auto processes = scan_processes(status.netns_inode, "/nonexistent-cgroup");
    const auto held = socket_holders(processes);
    for (const auto& s : listeners) {
        if (s.port != status.spec.outbound_port) continue;
        holder.found = true;
        holder.uid = holder.gid = s.uid;
        if (auto it = held.find(s.inode); it != held.end())
            for (const auto& p : processes)
                if (p.pid == it->second.front()) {
                    holder.pid = p.pid;
                    holder.comm = p.comm;
                    holder.uid = p.uid;
                    holder.gid = p.gid;
                }
        return holder;
    }
    return holder;
}

bool is_proxy(const WorkloadStatus& status, const ListenerHolder& holder) {
    return holder.uid == status.spec.proxy_uid || holder.gid == status.spec.proxy_gid;
}

std::string describe_holder(const ListenerHolder& holder) {
    return (holder.pid ? "pid " + std::to_string(holder.pid) + " (" + holder.comm + ") " : "") +
           "uid " + std::to_string(holder.uid) + " gid " + std::to_string(holder.gid);
}

// What a probe child is told to do. Everything is prepared before fork: the child only makes
// system calls.
struct ProbeSpec {
    std::uint32_t uid = 65534;
    std::uint32_t gid = 65534;
    // SO_BINDTODEVICE "lo" before dropping privileges: whatever the redirect decides, the SYN
    // can only loop back inside the pod netns, never leave it.
    bool bind_to_loopback = false;
    sockaddr_in destination{};
    int connect_wait_ms = 1000;
};

struct Probe {
    bool answered = false;  // the child reported
    std::string failure;    // why it could not run
    ProbeResult result;
    pid_t pid = -1;
    std::string cgroup;  // the cgroup it joined
};

// Forks a probe into the pod's cgroup and netns; `while_open` runs while its socket is still
// open (the kernel's tables show it), then the child closes it with RST and is reaped.
Probe run_probe(const WorkloadStatus& status, const ProbeSpec& spec,
                const std::function<void(const Probe&)>& while_open) {
    Probe probe;
    UniqueFd netns(::open(status.spec.netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!netns.valid()) {
        probe.failure = "open " + status.spec.netns_path + ": " + std::strerror(errno);
        return probe;
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
    int result_pipe[2], go_pipe[2];
    if (::pipe2(result_pipe, O_CLOEXEC) != 0) {
        probe.failure = std::string("pipe: ") + std::strerror(errno);
        return probe;
    }
    UniqueFd result_read(result_pipe[0]), result_write(result_pipe[1]);
    if (::pipe2(go_pipe, O_CLOEXEC) != 0) {
        probe.failure = std::string("pipe: ") + std::strerror(errno);
        return probe;
    }
    UniqueFd go_read(go_pipe[0]), go_write(go_pipe[1]);
    const sockaddr_in dst = spec.destination;
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) {
        probe.failure = std::string("fork: ") + std::strerror(errno);
        return probe;
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
        static const char kLoopback[] = "lo";
        if (r.cgroup_index < 0) {
            r.error = errno;
        } else if (r.stage = 2; ::setns(netns.get(), CLONE_NEWNET) != 0) {
            r.error = errno;
        } else if (r.stage = 4; (s = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)) < 0) {
            r.error = errno;
        } else if (spec.bind_to_loopback &&
                   ::setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, kLoopback, sizeof kLoopback) != 0) {
            r.error = errno;
        } else if (r.stage = 3; ::setgroups(0, nullptr) != 0 ||
                                ::setresgid(spec.gid, spec.gid, spec.gid) != 0 ||
                                ::setresuid(spec.uid, spec.uid, spec.uid) != 0) {
            r.error = errno;
        } else {
            r.stage = 5;
            int rc = ::connect(s, reinterpret_cast<const sockaddr*>(&dst), sizeof dst);
            if (rc != 0 && errno == EINPROGRESS) {
                pollfd p{s, POLLOUT, 0};
                if (::poll(&p, 1, spec.connect_wait_ms) == 1) {
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
    probe.pid = child;
    pollfd p{result_read.get(), POLLIN, 0};
    char buffer[sizeof(ProbeResult)];
    if (::poll(&p, 1, spec.connect_wait_ms + 2000) != 1 ||
        ::read(result_read.get(), buffer, sizeof buffer) != sizeof buffer) {
        probe.failure = "probe process gave no answer in time";
        go_write.reset();
        reap(child);
        return probe;
    }
    std::memcpy(&probe.result, buffer, sizeof buffer);
    probe.answered = true;
    if (probe.result.cgroup_index >= 0)
        probe.cgroup = cgroup_dirs[static_cast<std::size_t>(probe.result.cgroup_index)];
    while_open(probe);
    go_write.reset();
    reap(child);
    return probe;
}

std::string probe_failure_text(const ProbeResult& r) {
    static const char* stages[] = {"", "join the pod cgroup", "join the pod netns",
                                   "drop privileges", "create its socket (or bind it to lo)"};
    return std::string("probe could not ") + stages[r.stage] + ": " + std::strerror(r.error);
}

// The probe's own socket in the kernel's table (not LISTEN, not the unconnected 0.0.0.0 entry).
const TcpEntry* find_probe_socket(const std::vector<TcpEntry>& table, std::uint16_t local_port) {
    for (const auto& e : table)
        if (e.local_port == local_port && e.state != "0A" && e.remote_port != 0 &&
            e.local.rfind("0.0.0.0", 0) != 0 && e.remote_port != local_port)
            return &e;
    return nullptr;
}

std::uint64_t counter_of(const std::map<std::string, std::uint64_t>& counters, const char* name) {
    auto it = counters.find(name);
    return it == counters.end() ? 0 : it->second;
}

std::string fastpath_key_text(const fastpath_key& key) {
    char local[INET_ADDRSTRLEN]{}, remote[INET_ADDRSTRLEN]{};
    ::inet_ntop(AF_INET, &key.local_ip4, local, sizeof local);
    ::inet_ntop(AF_INET, &key.remote_ip4, remote, sizeof remote);
    return std::string(local) + ":" + std::to_string(key.local_port) + " -> " + remote + ":" +
           std::to_string(key.remote_port);
}

// Hop 5b: is the probe's connection in the fast path's SOCKHASH (both ends), and how was it
// decided? Read from the pinned maps of features/fastpath/fastpath_sockmap.bpf.c (absent: fast path
// not loaded).
VerifyCheck check_fast_path(const WorkloadStatus& status, const VerifyOptions& options,
                            const TcpEntry* probe_socket) {
    VerifyCheck check{"fast_path", "fast path state of the probe's sockets", true, {}};
    const std::string maps = options.pin_root + "/maps/";
    UniqueFd kinds(::bpf_obj_get((maps + "fastpath_workload_kinds").c_str()));
    UniqueFd peers(::bpf_obj_get((maps + "fastpath_peers").c_str()));
    UniqueFd conns(::bpf_obj_get((maps + "fastpath_conns").c_str()));
    if (!kinds.valid() || !peers.valid()) {
        check.evidence.push_back(
            "fast path off for this workload: the fast path is not loaded on this node (no "
            "pinned fastpath_peers map); the probe's bytes take the TCP path");
        return check;
    }
    std::uint32_t key = status.workload_id, enabled = 0;
    if (::bpf_map_lookup_elem(kinds.get(), &key, &enabled) != 0) enabled = 0;
    if ((enabled & MESHLANE_FASTPATH_APP_PROXY) == 0) {
        check.evidence.push_back("fast path off for this workload (fastpath_workload_kinds = " +
                                 std::to_string(enabled) +
                                 "): the probe's bytes take the TCP path");
        return check;
    }
    check.evidence.push_back("fast path on for app <-> proxy connections of this workload");
    if (probe_socket == nullptr) {
        check.evidence.push_back("no probe connection to look up");
        return check;
    }
    fastpath_key app{};
    app.netns_cookie = status.netns_cookie;
    std::uint16_t port = 0;
    const auto split = [&](const std::string& text, std::uint32_t* ip) {
        const auto colon = text.rfind(':');
        ::inet_pton(AF_INET, text.substr(0, colon).c_str(), ip);
        port = static_cast<std::uint16_t>(std::stoul(text.substr(colon + 1)));
    };
    split(probe_socket->local, &app.local_ip4);
    app.local_port = port;
    split(probe_socket->remote, &app.remote_ip4);
    app.remote_port = port;
    fastpath_key proxy{};
    proxy.netns_cookie = status.netns_cookie;
    proxy.local_ip4 = app.remote_ip4;
    proxy.local_port = app.remote_port;
    proxy.remote_ip4 = app.local_ip4;
    proxy.remote_port = app.local_port;
    const std::pair<const fastpath_key*, const char*> ends[] = {{&app, "probe (app) end"},
                                                                {&proxy, "proxy end"}};
    for (const auto& [k, who] : ends) {
        std::uint64_t cookie = 0;
        const bool in = ::bpf_map_lookup_elem(peers.get(), k, &cookie) == 0;
        check.evidence.push_back(
            std::string(who) + " " + fastpath_key_text(*k) +
            (in ? ": in the SOCKHASH (socket cookie " + std::to_string(cookie) + ")"
                : ": NOT in the SOCKHASH"));
    }
    fastpath_conn conn{};
    if (conns.valid() && ::bpf_map_lookup_elem(conns.get(), &app, &conn) == 0) {
        check.evidence.push_back("connection state: " + fastpath_conn_state_text(conn) +
                                 " (the probe sent no data)");
    } else {
        check.evidence.push_back("connection not tracked by the fast path");
    }
    return check;
}

// The outbound probe and, when it connects, the SO_ORIGINAL_DST and fast-path checks.
std::vector<VerifyCheck> probe_outbound(const WorkloadStatus& status,
                                        const VerifyOptions& options) {
    VerifyCheck outbound{"outbound",
                         "probe connect " + options.outbound_probe_address + ":" +
                             std::to_string(options.probe_port) +
                             " is redirected to the proxy's outbound listener",
                         false,
                         {}};
    VerifyCheck orig{
        "orig_dst", "the proxy's SO_ORIGINAL_DST for the probe is answered", false, {}};
    VerifyCheck fast{"fast_path", "fast path state of the probe's sockets", true, {}};
    const std::uint16_t out_port = status.spec.outbound_port;

    // Never probe without a listener: under the passthrough policy the probe would go direct.
    Result<std::vector<ListenSocket>> listeners = Error{EIO, "not read"};
    auto joined = in_netns(status.spec.netns_path, [&] { listeners = read_listeners_here(); });
    if (!joined || !listeners) {
        outbound.evidence.push_back("cannot read the pod's sockets: " +
                                    (!joined ? joined.error().message : listeners.error().message));
        orig.evidence.push_back("not checked: no probe");
        fast.evidence.push_back("not checked: no probe");
        return {outbound, orig, fast};
    }
    bool v4_listener = false;
    for (const auto& s : *listeners)
        if (s.port == out_port && !s.ipv6)
            v4_listener = true;
        else if (s.port == out_port && s.local.rfind("[::]", 0) == 0)
            v4_listener = true;
    if (const auto holder = outbound_listener_holder(status, *listeners);
        v4_listener && !is_proxy(status, holder)) {
        outbound.evidence.push_back(
            "the outbound listener is held by " + describe_holder(holder) + ", NOT the proxy uid " +
            std::to_string(status.spec.proxy_uid) +
            ": probe not sent (its upstream connect would be captured again and loop)");
        orig.evidence.push_back("not checked: no probe");
        fast.evidence.push_back("not checked: no probe");
        return {outbound, orig, fast};
    }
    if (!v4_listener) {
        outbound.evidence.push_back("proxy not listening: no IPv4 LISTEN socket on port " +
                                    std::to_string(out_port) +
                                    " in the pod netns; probe not sent (it would be refused, or "
                                    "leave the pod under the passthrough policy)");
        orig.evidence.push_back("not checked: proxy not listening");
        fast.evidence.push_back("not checked: proxy not listening");
        return {outbound, orig, fast};
    }

    ProbeSpec spec;
    spec.uid = status.spec.proxy_uid == 65534 ? 65533 : 65534;
    spec.gid = status.spec.proxy_gid == 65534 ? 65533 : 65534;
    spec.destination.sin_family = AF_INET;
    spec.destination.sin_port = htons(options.probe_port);
    if (::inet_pton(AF_INET, options.outbound_probe_address.c_str(), &spec.destination.sin_addr) !=
        1) {
        outbound.evidence.push_back("bad probe address " + options.outbound_probe_address);
        return {outbound, orig, fast};
    }
    const auto before =
        options.read_counters ? options.read_counters() : std::map<std::string, std::uint64_t>{};
    const auto probe = run_probe(status, spec, [&](const Probe& running) {
        const ProbeResult& r = running.result;
        if (r.stage < 6) return;
        // The kernel's view of the probe socket: where it really connected.
        const auto table = read_tcp(running.pid);
        // ESTABLISHED, or CLOSE_WAIT when the proxy already closed its side (its upstream to
        // the TEST-NET address failed): either way the kernel shows where it went.
        const TcpEntry* conn = find_probe_socket(table, r.local_port);
        fast = check_fast_path(status, options, conn);
        if (conn == nullptr) {
            outbound.evidence.push_back("probe socket (local port " + std::to_string(r.local_port) +
                                        ") not found in the pod's TCP table");
        } else {
            outbound.evidence.push_back("probe socket " + conn->local + " -> " + conn->remote +
                                        " (kernel view; the app sees " +
                                        options.outbound_probe_address + ":" +
                                        std::to_string(options.probe_port) + ")");
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
            const auto was = counter_of(before, "orig_dst_answered");
            const auto miss_was = counter_of(before, "orig_dst_miss");
            std::map<std::string, std::uint64_t> now;
            for (int i = 0; i < 40; ++i) {
                now = options.read_counters();
                if (counter_of(now, "orig_dst_answered") > was) break;
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            orig.passed = counter_of(now, "orig_dst_answered") > was;
            orig.evidence.push_back("orig_dst_answered " + std::to_string(was) + " -> " +
                                    std::to_string(counter_of(now, "orig_dst_answered")) +
                                    ", orig_dst_miss " + std::to_string(miss_was) + " -> " +
                                    std::to_string(counter_of(now, "orig_dst_miss")));
            if (!orig.passed)
                orig.evidence.push_back(
                    "the proxy did not get an SO_ORIGINAL_DST answer within "
                    "2 s (it may not ask, e.g. a proxy that reads getsockname)");
        }
    });
    if (!probe.answered) {
        outbound.evidence.push_back(probe.failure);
    } else {
        outbound.evidence.insert(outbound.evidence.begin(),
                                 "probe pid " + std::to_string(probe.pid) + " uid " +
                                     std::to_string(spec.uid) + " in cgroup " + probe.cgroup);
        const ProbeResult& r = probe.result;
        if (r.stage < 5) {
            outbound.evidence.push_back(probe_failure_text(r));
        } else if (r.stage == 5) {
            outbound.evidence.push_back(
                std::string("probe connect failed: ") + std::strerror(r.error) +
                (r.error == ECONNREFUSED ? " (proxy not listening on the outbound port?)" : "") +
                (r.error == ENETUNREACH ? " (not redirected: the kernel refused the broadcast "
                                          "destination, nothing was sent)"
                                        : "") +
                (r.error == ETIMEDOUT ? " (no answer in 1 s: not redirected, or the proxy is stuck)"
                                      : ""));
        }
    }
    if (!probe.answered || probe.result.stage < 6) {
        orig.evidence.push_back("not checked: the probe did not connect");
        fast.evidence.push_back("not checked: the probe did not connect");
    }
    return {outbound, orig, fast};
}

// Hop 5a: the proxy's own outbound connect is not captured again. A probe as the proxy's uid/gid
// connects to the TEST-NET address with its socket bound to "lo", so the SYN can only loop back
// inside the pod, whatever the redirect decides: redirected (a loop) it lands on the proxy's
// listener; passed, it stays unanswered in SYN_SENT to the TEST-NET address.
VerifyCheck check_no_loop(const WorkloadStatus& status, const VerifyOptions& options) {
    VerifyCheck check{"no_loop",
                      "a connect by the proxy's uid " + std::to_string(status.spec.proxy_uid) +
                          " is not redirected again (no loop)",
                      false,
                      {}};
    // The identity that really runs the proxy: a proxy under another uid than configured is
    // captured again by design, and probing as it would set the loop off for real.
    Result<std::vector<ListenSocket>> listeners = Error{EIO, "not read"};
    auto joined = in_netns(status.spec.netns_path, [&] { listeners = read_listeners_here(); });
    if (!joined || !listeners) {
        check.evidence.push_back("cannot read the pod's sockets: " +
                                 (!joined ? joined.error().message : listeners.error().message));
        return check;
    }
    const auto holder = outbound_listener_holder(status, *listeners);
    if (holder.found && !is_proxy(status, holder)) {
        check.evidence.push_back(
            "LOOP: the outbound listener is held by " + describe_holder(holder) +
            ", not the configured proxy uid " + std::to_string(status.spec.proxy_uid) + " / gid " +
            std::to_string(status.spec.proxy_gid) +
            ": its own upstream connects are captured and sent back to itself (probe not sent, "
            "so as not to start the loop)");
        return check;
    }
    ProbeSpec spec;
    spec.uid = status.spec.proxy_uid;
    spec.gid = status.spec.proxy_gid;
    spec.bind_to_loopback = true;
    spec.connect_wait_ms = 300;
    spec.destination.sin_family = AF_INET;
    spec.destination.sin_port = htons(options.probe_port);
    if (::inet_pton(AF_INET, options.probe_address.c_str(), &spec.destination.sin_addr) != 1) {
        check.evidence.push_back("bad probe address " + options.probe_address);
        return check;
    }
    const auto before =
        options.read_counters ? options.read_counters() : std::map<std::string, std::uint64_t>{};
    std::string seen;
    bool stayed = false;
    const auto probe = run_probe(status, spec, [&](const Probe& running) {
        const auto table = read_tcp(running.pid);
        const auto* conn = find_probe_socket(table, running.result.local_port);
        if (conn == nullptr) return;
        seen = conn->local + " -> " + conn->remote + " (state " + conn->state + ")";
        stayed = conn->remote == options.probe_address + ":" + std::to_string(options.probe_port);
    });
    if (!probe.answered) {
        check.evidence.push_back(probe.failure);
        return check;
    }
    const ProbeResult& r = probe.result;
    check.evidence.push_back(
        "probe pid " + std::to_string(probe.pid) + " uid " + std::to_string(spec.uid) + " gid " +
        std::to_string(spec.gid) + " in cgroup " + probe.cgroup + ", socket bound to lo" +
        (holder.found ? " (the outbound listener is held by " + describe_holder(holder) + ")"
                      : " (no outbound listener)"));
    if (r.stage < 5) {
        check.evidence.push_back(probe_failure_text(r));
        return check;
    }
    if (!seen.empty()) check.evidence.push_back("probe socket " + seen + " (kernel view)");
    const auto after =
        options.read_counters ? options.read_counters() : std::map<std::string, std::uint64_t>{};
    const auto owner_was = counter_of(before, "outbound_pass_proxy_owner");
    const auto owner_now = counter_of(after, "outbound_pass_proxy_owner");
    check.evidence.push_back("outbound_pass_proxy_owner " + std::to_string(owner_was) + " -> " +
                             std::to_string(owner_now));
    if (r.stage == 6 || r.error == ECONNREFUSED) {
        check.evidence.push_back(
            "LOOP: the proxy's own connect was " +
            std::string(r.stage == 6 ? "accepted by a local listener" : "refused locally") +
            ": it was redirected back into the pod (check --proxy-uid/--proxy-gid and "
            "--include-outbound-ports)");
        return check;
    }
    check.passed = stayed && owner_now > owner_was;
    if (check.passed)
        check.evidence.push_back(
            "passed as the proxy's own traffic (ISTIO_OUTPUT uid-owner RETURN), left "
            "unanswered on lo");
    else if (!stayed)
        check.evidence.push_back("the probe socket did not keep the TEST-NET destination");
    return check;
}

// The proxy's inbound listening sockets (cookie -> "pid P (comm)"), duplicated with pidfd_getfd.
std::map<std::uint64_t, std::string> inbound_listener_cookies(const WorkloadStatus& status) {
    std::map<std::uint64_t, std::string> cookies;
    auto adopted = adopt_listeners(status.netns_inode, status.spec.inbound_port,
                                   status.spec.proxy_uid, status.spec.proxy_gid);
    if (!adopted) return cookies;
    for (const auto& l : *adopted) {
        std::uint64_t cookie = 0;
        socklen_t len = sizeof cookie;
        int reuseport = 0;
        socklen_t reuseport_len = sizeof reuseport;
        ::getsockopt(l.fd.get(), SOL_SOCKET, SO_REUSEPORT, &reuseport, &reuseport_len);
        if (::getsockopt(l.fd.get(), SOL_SOCKET, SO_COOKIE, &cookie, &len) == 0)
            cookies[cookie] = "pid " + std::to_string(l.pid) + (l.ipv6 ? " (IPv6" : " (IPv4") +
                              " listener on port " + std::to_string(status.spec.inbound_port) +
                              (reuseport ? ", SO_REUSEPORT)" : ")");
    }
    return cookies;
}

// Where an inbound SYN to `port` would be steered: a listening app port that capture covers.
std::uint16_t inbound_probe_port(const WorkloadStatus& status,
                                 const std::vector<ListenSocket>& listeners) {
    const auto& spec = status.spec;
    const std::set<std::uint16_t> always(MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS);
    auto captured = [&](std::uint16_t port) {
        if (port == spec.inbound_port || port == spec.outbound_port || always.count(port) != 0)
            return false;
        if (std::find(spec.exclude_inbound_ports.begin(), spec.exclude_inbound_ports.end(), port) !=
            spec.exclude_inbound_ports.end())
            return false;
        return spec.include_all_inbound_ports ||
               std::find(spec.include_inbound_ports.begin(), spec.include_inbound_ports.end(),
                         port) != spec.include_inbound_ports.end();
    };
    for (const auto& s : listeners)
        if (captured(s.port)) return s.port;
    if (!spec.include_all_inbound_ports) {
        for (auto port : spec.include_inbound_ports)
            if (captured(port)) return port;
        return 0;
    }
    return captured(15002) ? 15002 : 0;
}

// Hop 4: an inbound SYN from outside the pod is steered to the proxy's inbound listener, and
// keeps its original local address. The pod's own attached sk_lookup program is run by the
// kernel (BPF_PROG_TEST_RUN, inside the pod netns) on a SYN from TEST-NET-1 to the pod's
// address: no packet is sent at all, so nothing can leave the pod and nothing in it changes
// (the inbound_steered counter counts the run). A real packet from outside would need an
// interface or route the pod does not have.
VerifyCheck check_inbound(const WorkloadStatus& status, const VerifyOptions& options) {
    VerifyCheck check{"inbound",
                      "an inbound connection from outside the pod reaches the proxy's inbound "
                      "listener (port " +
                          std::to_string(status.spec.inbound_port) +
                          ") with its original local address",
                      false,
                      {}};
    const bool registered = status.inbound_listener_v4 || status.inbound_listener_v6;
    check.evidence.push_back(std::string("listener slots: IPv4 ") +
                             (status.inbound_listener_v4 ? "registered" : "empty") + ", IPv6 " +
                             (status.inbound_listener_v6 ? "registered" : "empty"));
    if (!registered) {
        check.evidence.push_back(
            "proxy not listening (or not as the proxy uid): inbound connections are " +
            std::string(status.spec.startup_policy == StartupPolicy::kRefuse
                            ? "refused"
                            : "passed to the app unmeshed"));
        return check;
    }
    std::string pod_v4;
    for (const auto& a : status.pod_addresses)
        if (a.find(':') == std::string::npos && a.rfind("127.", 0) != 0) {
            pod_v4 = a;
            break;
        }
    if (pod_v4.empty()) {
        check.passed = true;
        check.evidence.push_back(
            "the pod has no IPv4 address besides loopback: steering not probed");
        return check;
    }
    std::uint32_t sk_lookup_prog = 0;
    for (const auto& p : status.programs)
        if (p.program == "redirect_sk_lookup") sk_lookup_prog = p.prog_id;
    UniqueFd prog(sk_lookup_prog ? ::bpf_prog_get_fd_by_id(sk_lookup_prog) : -1);
    if (!prog.valid()) {
        check.evidence.push_back("cannot open the pod's sk_lookup program (id " +
                                 std::to_string(sk_lookup_prog) + "): " + std::strerror(errno));
        return check;
    }
    Result<std::vector<ListenSocket>> listeners = Error{EIO, "not read"};
    bpf_sk_lookup ctx{};
    int run_error = 0;
    std::uint32_t verdict = 0;
    std::uint16_t port = 0;
    auto joined = in_netns(status.spec.netns_path, [&] {
        listeners = read_listeners_here();
        if (!listeners) return;
        port = inbound_probe_port(status, *listeners);
        if (port == 0) return;
        ctx.family = AF_INET;
        ctx.protocol = IPPROTO_TCP;
        ::inet_pton(AF_INET, options.probe_address.c_str(), &ctx.remote_ip4);
        ctx.remote_port = htons(40000);
        ::inet_pton(AF_INET, pod_v4.c_str(), &ctx.local_ip4);
        ctx.local_port = port;
        LIBBPF_OPTS(bpf_test_run_opts, run, .ctx_in = &ctx, .ctx_out = &ctx,
                    .ctx_size_in = sizeof ctx, .ctx_size_out = sizeof ctx);
        if (::bpf_prog_test_run_opts(prog.get(), &run) != 0)
            run_error = errno;
        else
            verdict = run.retval;
    });
    if (!joined || !listeners) {
        check.evidence.push_back("cannot enter the pod netns: " +
                                 (!joined ? joined.error().message : listeners.error().message));
        return check;
    }
    if (port == 0) {
        check.passed = true;
        check.evidence.push_back("no inbound port is captured by the rules: nothing to steer");
        return check;
    }
    const std::string syn = "SYN " + options.probe_address + ":40000 -> " + pod_v4 + ":" +
                            std::to_string(port) + " (from outside the pod)";
    const auto cookies = inbound_listener_cookies(status);
    if (run_error == EOPNOTSUPP) {
        // The kernel refuses to report a selected SO_REUSEPORT socket from a test run: the
        // program did steer the SYN to a reuseport listener. HAProxy and Envoy listen so.
        std::string reuseport;
        for (const auto& [cookie, who] : cookies)
            if (who.find("SO_REUSEPORT") != std::string::npos) reuseport = who;
        check.passed = !reuseport.empty();
        check.evidence.push_back("sk_lookup (prog " + std::to_string(sk_lookup_prog) +
                                 ", kernel test run in the pod netns) steers the " + syn +
                                 " to a SO_REUSEPORT listener (the test run cannot name it); " +
                                 (reuseport.empty() ? "NO proxy inbound listener is SO_REUSEPORT"
                                                    : "the proxy's listener is one: " + reuseport));
        if (check.passed)
            check.evidence.push_back(
                "no NAT: sk_lookup only picks the socket, so the proxy's accepted socket keeps " +
                pod_v4 + ":" + std::to_string(port) + " as its local address (getsockname)");
    } else if (run_error != 0) {
        check.evidence.push_back("kernel test run of sk_lookup prog " +
                                 std::to_string(sk_lookup_prog) + " for " + syn +
                                 " failed: " + std::strerror(run_error));
        return check;
    }
    const auto it = run_error != 0 ? cookies.end() : cookies.find(ctx.cookie);
    if (run_error != 0) {
        // reported above
    } else if (verdict != 1 /* SK_PASS */) {
        check.evidence.push_back("sk_lookup (prog " + std::to_string(sk_lookup_prog) +
                                 ") DROPS the " + syn + ": the client gets a reset");
    } else if (ctx.cookie == 0) {
        check.evidence.push_back("sk_lookup (prog " + std::to_string(sk_lookup_prog) +
                                 ") does not steer the " + syn +
                                 ": it goes to whatever listens on port " + std::to_string(port) +
                                 ", bypassing the proxy");
    } else if (it == cookies.end()) {
        check.evidence.push_back("sk_lookup (prog " + std::to_string(sk_lookup_prog) +
                                 ") steers the " + syn + " to socket cookie " +
                                 std::to_string(ctx.cookie) +
                                 ", which is NOT a proxy-owned listener on port " +
                                 std::to_string(status.spec.inbound_port));
    } else {
        check.passed = true;
        check.evidence.push_back("sk_lookup (prog " + std::to_string(sk_lookup_prog) +
                                 ", kernel test run in the pod netns) steers the " + syn +
                                 " to the proxy's listener: socket cookie " +
                                 std::to_string(ctx.cookie) + ", " + it->second);
        check.evidence.push_back(
            "no NAT: sk_lookup only picks the socket, so the proxy's accepted socket keeps " +
            pod_v4 + ":" + std::to_string(port) +
            " as its local address (getsockname) and forwards there");
    }
    // Real connections the proxy holds now, with their original local addresses.
    std::set<std::uint64_t> proxy_sockets;
    const auto processes = scan_processes(status.netns_inode, "/nonexistent-cgroup");
    for (const auto& [inode, pids] : socket_holders(processes))
        for (auto pid : pids)
            for (const auto& proc : processes)
                if (proc.pid == pid &&
                    (proc.uid == status.spec.proxy_uid || proc.gid == status.spec.proxy_gid))
                    proxy_sockets.insert(inode);
    std::size_t shown = 0;
    for (const auto& pid_entry : processes) {
        if (shown > 0 || !pid_entry.in_netns) continue;
        for (const auto& e : read_tcp(pid_entry.pid)) {
            if (e.state != "01" || proxy_sockets.count(e.inode) == 0 ||
                e.local_port == status.spec.inbound_port ||
                e.local_port == status.spec.outbound_port || e.local.rfind("127.", 0) == 0 ||
                e.remote.rfind("127.", 0) == 0)
                continue;
            if (shown++ < 3)
                check.evidence.push_back("held by the proxy now: " + e.local + " <- " + e.remote +
                                         " (accepted with the original local address)");
        }
    }
    return check;
}
}  // namespace

VerifyReport verify(const WorkloadStatus& status, const VerifyOptions& options) {
    VerifyReport report;
    report.workload = status.spec.name;
    report.checks.push_back(check_programs(status, options));
    auto outbound = probe_outbound(status, options);
    VerifyCheck fast = std::move(outbound.back());
    outbound.pop_back();
    for (auto& c : outbound) report.checks.push_back(std::move(c));
    report.checks.push_back(check_inbound(status, options));
    report.checks.push_back(check_no_loop(status, options));
    report.checks.push_back(std::move(fast));
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
