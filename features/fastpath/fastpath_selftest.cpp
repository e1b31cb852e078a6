#include "features/fastpath/fastpath_selftest.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "agent/common/unique_fd.h"
#include "agent/loader/bpf_skeleton.h"
#include "fastpath_sockmap.skel.h"
#include "features/fastpath/fastpath_abi.h"
#include "features/fastpath/fastpath_selftest_readers.h"

namespace meshlane {

namespace {

constexpr std::uint16_t kPort = 15001;
constexpr std::size_t kSmall = 1000;
constexpr std::size_t kReply = 777;
constexpr std::size_t kBulk = 4u << 20;

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

unsigned char pattern(std::size_t offset) {
    return static_cast<unsigned char>((offset * 131u + (offset >> 8) * 7u) & 0xff);
}

// Waits for EPOLLIN on fd within bound_ms; "" when readable.
std::string wait_readable(int fd, int bound_ms, const char* what) {
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep.valid()) return errno_text("epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return errno_text("epoll_ctl");
    epoll_event out{};
    int n = ::epoll_wait(ep.get(), &out, 1, bound_ms);
    if (n < 0) return errno_text("epoll_wait");
    if (n == 0)
        return std::string("epoll did not wake the reader within ") + std::to_string(bound_ms) +
               " ms (" + what + ")";
    return "";
}

// One message: the writer sends `size` bytes, the reader is woken by epoll, FIONREAD must report
// exactly those bytes, and they must read back intact.
std::string message_check(int writer, int reader, std::size_t size, int bound_ms,
                          const char* what) {
    std::vector<unsigned char> out(size), in(size);
    for (std::size_t i = 0; i < size; ++i) out[i] = pattern(i + size);
    if (::send(writer, out.data(), size, 0) != static_cast<ssize_t>(size))
        return errno_text("send");
    if (auto woke = wait_readable(reader, bound_ms, what); !woke.empty()) return woke;
    int pending = -1;
    if (::ioctl(reader, FIONREAD, &pending) != 0) return errno_text("ioctl(FIONREAD)");
    if (pending != static_cast<int>(size))
        return std::string("FIONREAD reported ") + std::to_string(pending) + " of " +
               std::to_string(size) + " pending bytes (" + what + ")";
    std::size_t got = 0;
    while (got < size) {
        ssize_t n = ::recv(reader, in.data() + got, size - got, MSG_DONTWAIT);
        if (n <= 0) return std::string("short read (") + what + ")";
        got += static_cast<std::size_t>(n);
    }
    if (in != out) return std::string("bytes changed on the way (") + what + ")";
    return "";
}

// Bulk transfer with a non-blocking writer and an epoll-driven reader, then a half-close that
// must reach the reader after the last byte.
std::string bulk_check(int writer, int reader, int bound_ms) {
    if (::fcntl(writer, F_SETFL, O_NONBLOCK) != 0) return errno_text("fcntl");
    std::vector<unsigned char> chunk(65536), in(65536);
    std::size_t sent = 0, received = 0;
    bool shut = false;
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = reader;
    if (!ep.valid() || ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, reader, &ev) != 0)
        return errno_text("epoll");
    while (true) {
        while (sent < kBulk) {
            std::size_t len = std::min(chunk.size(), kBulk - sent);
            for (std::size_t i = 0; i < len; ++i) chunk[i] = pattern(sent + i);
            ssize_t n = ::send(writer, chunk.data(), len, MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (n < 0) return errno_text("bulk send");
            sent += static_cast<std::size_t>(n);
        }
        if (sent == kBulk && !shut) {
            if (::shutdown(writer, SHUT_WR) != 0) return errno_text("shutdown");
            shut = true;
        }
        epoll_event out{};
        int ready = ::epoll_wait(ep.get(), &out, 1, bound_ms);
        if (ready < 0) return errno_text("epoll_wait");
        if (ready == 0)
            return "epoll did not wake the reader within " + std::to_string(bound_ms) +
                   " ms after " + std::to_string(received) + " of " + std::to_string(kBulk) +
                   " bytes (bulk)";
        ssize_t n = ::recv(reader, in.data(), in.size(), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (n < 0) return errno_text("bulk recv");
        if (n == 0) {
            if (received != kBulk)
                return "end of stream after " + std::to_string(received) + " of " +
                       std::to_string(kBulk) + " bytes (half-close overtook data)";
            return "";
        }
        for (ssize_t i = 0; i < n; ++i)
            if (in[static_cast<std::size_t>(i)] != pattern(received + static_cast<std::size_t>(i)))
                return "byte " + std::to_string(received + static_cast<std::size_t>(i)) +
                       " differs (bulk: lost, duplicated or reordered data)";
        received += static_cast<std::size_t>(n);
    }
}

std::string bring_loopback_up() {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s.valid()) return errno_text("socket");
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return errno_text("SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP;
    if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return errno_text("SIOCSIFFLAGS lo");
    return "";
}

sockaddr_in outbound_addr() {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(kPort);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

// A listener on the outbound port. Its accepted sockets belong to the cgroup of the process
// that creates the listener.
std::string listen_outbound(UniqueFd& listener) {
    sockaddr_in addr = outbound_addr();
    listener.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener.valid()) return errno_text("socket");
    int one = 1;
    ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
        return errno_text("bind");
    if (::listen(listener.get(), 4) != 0) return errno_text("listen");
    return "";
}

// A connection that is not accelerated although the app's socket entered the SOCKHASH: the
// accepting socket is outside the self-test cgroup (created before the child joined it), so it
// never joins and the app's first write decides TCP_ONLY. The reply then arrives on TCP; FIONREAD
// must count it. On kernels where FIONREAD counts only the psock queue this holds only because
// the app's socket leaves the SOCKHASH (and loses its psock) in that first write.
std::string tcp_only_check(int foreign_listener, int bound_ms) {
    sockaddr_in addr = outbound_addr();
    UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!client.valid()) return errno_text("socket");
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
        return errno_text("connect");
    UniqueFd server(::accept4(foreign_listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!server.valid()) return errno_text("accept");
    if (auto r = message_check(client.get(), server.get(), 100, bound_ms, "not accelerated, app");
        !r.empty())
        return r;
    return message_check(server.get(), client.get(), 456, bound_ms,
                         "not accelerated, reply to an app that wrote first");
}

// Enters a private netns with lo up and joins the self-test cgroup. The foreign listener is
// created before joining (its accepted sockets stay outside the cgroup).
std::string enter_sandbox(const std::string& cgroup_dir, UniqueFd* foreign) {
    if (::unshare(CLONE_NEWNET) != 0) return errno_text("unshare(CLONE_NEWNET)");
    if (auto up = bring_loopback_up(); !up.empty()) return up;
    if (foreign != nullptr)
        if (auto r = listen_outbound(*foreign); !r.empty()) return r;
    UniqueFd procs(::open((cgroup_dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
    if (!procs.valid() || ::write(procs.get(), "0", 1) != 1)
        return errno_text("join the self-test cgroup");
    return "";
}

// "e0 e1 ...": the EAGAIN count of each reader pattern, for the parent.
std::string encode(const ReaderPatternResults& results) {
    std::string out;
    for (auto n : results.eagain) out += std::to_string(n) + " ";
    return out;
}

ReaderPatternResults decode(const std::string& text) {
    ReaderPatternResults results;
    std::size_t pos = 0;
    for (auto& n : results.eagain) {
        std::size_t end = text.find(' ', pos);
        if (end == std::string::npos) break;
        n = static_cast<std::uint32_t>(
            std::strtoul(text.substr(pos, end - pos).c_str(), nullptr, 10));
        pos = end + 1;
    }
    return results;
}

// Any socket may join: the basic checks. "" on success.
std::string child_exchange(const std::string& cgroup_dir, int bound_ms, std::string&) {
    UniqueFd foreign;
    if (auto r = enter_sandbox(cgroup_dir, &foreign); !r.empty()) return r;
    if (auto r = tcp_only_check(foreign.get(), bound_ms); !r.empty()) return r;
    foreign.reset();
    UniqueFd listener;
    if (auto r = listen_outbound(listener); !r.empty()) return r;
    sockaddr_in addr = outbound_addr();
    UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!client.valid()) return errno_text("socket");
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
        return errno_text("connect");
    UniqueFd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!server.valid()) return errno_text("accept");
    if (auto r = message_check(client.get(), server.get(), kSmall, bound_ms, "app to proxy");
        !r.empty())
        return r;
    if (auto r = message_check(server.get(), client.get(), kReply, bound_ms, "proxy to app");
        !r.empty())
        return r;
    return bulk_check(client.get(), server.get(), bound_ms);
}

// The blocking-reader patterns; their EAGAIN counts are the payload. Run once with any socket
// accelerated (the hazard probe) and, where the kernel has the hazard, once more under
// MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY, where they must see none.
std::string child_readers(const std::string& cgroup_dir, int, std::string& payload) {
    if (auto r = enter_sandbox(cgroup_dir, nullptr); !r.empty()) return r;
    UniqueFd listener;
    if (auto r = listen_outbound(listener); !r.empty()) return r;
    ReaderPatternResults results;
    if (auto r = run_reader_patterns(listener.get(), kPort, results); !r.empty()) return r;
    payload = encode(results);
    return "";
}

using ChildFn = std::string (*)(const std::string&, int, std::string&);

// Runs `child` in a forked child placed in cgroup_dir; returns its verdict ("" = passed) and
// its payload.
std::string run_child(ChildFn child, const std::string& cgroup_dir, int bound_ms,
                      std::string& payload) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return errno_text("pipe");
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    pid_t pid = ::fork();
    if (pid < 0) return errno_text("fork");
    if (pid == 0) {
        read_end.reset();
        std::string out;
        std::string verdict = child(cgroup_dir, bound_ms, out);
        if (verdict.empty()) verdict = "ok\n" + out;
        (void)!::write(write_end.get(), verdict.data(), verdict.size());
        ::_exit(0);
    }
    write_end.reset();
    std::string verdict;
    pollfd pfd{read_end.get(), POLLIN, 0};
    const int deadline_ms = 20 * bound_ms + 15000;
    bool timed_out = false;
    while (true) {
        int n = ::poll(&pfd, 1, deadline_ms);
        if (n == 0) {
            timed_out = true;
            break;
        }
        if (n < 0 && errno == EINTR) continue;
        char buf[512];
        ssize_t got = ::read(read_end.get(), buf, sizeof(buf));
        if (got <= 0) break;
        verdict.append(buf, static_cast<std::size_t>(got));
    }
    if (timed_out) ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out) return "the self-test exchange hung for " + std::to_string(deadline_ms) + " ms";
    if (verdict.empty()) return "the self-test child died without a verdict";
    if (verdict.rfind("ok\n", 0) != 0) return verdict;
    payload = verdict.substr(3);
    return "";
}

constexpr const char* kCgroupPrefix = "meshlane-fastpath-selftest-";

// A self-test cgroup left by an agent killed mid-test (empty once its child died): removed when
// its agent pid is gone.
void remove_stale_cgroups(const std::string& cgroup2_mount) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(cgroup2_mount, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.rfind(kCgroupPrefix, 0) != 0) continue;
        const std::string pid = name.substr(std::strlen(kCgroupPrefix));
        if (pid.empty() || ::access(("/proc/" + pid).c_str(), F_OK) == 0) continue;
        ::rmdir(entry.path().c_str());
    }
}

// One private, unpinned instance of fastpath_sockmap with this reader policy, attached to a
// temporary cgroup in which `child` runs. Counters: the instance's, summed over CPUs.
struct InstanceRun {
    std::string verdict;  // "" = the child passed
    std::string payload;
    std::array<std::uint64_t, MESHLANE_FP_COUNTER_MAX> counters{};
};

InstanceRun run_instance(const FastpathSelftestOptions& options, std::uint32_t policy,
                         ChildFn child) {
    InstanceRun run;
    LIBBPF_OPTS(bpf_object_open_opts, open_opts);
    auto skel = BpfSkeleton<fastpath_sockmap_bpf>::open(&open_opts, "fastpath_sockmap (self-test)");
    if (!skel) {
        run.verdict = skel.error().message;
        return run;
    }
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, (*skel)->obj) {
        if (bpf_map__set_pin_path(map, nullptr) != 0) {
            run.verdict = "unpin the self-test maps";
            return run;
        }
    }
    (*skel)->rodata->selftest_kinds = MESHLANE_FASTPATH_APP_PROXY;
    (*skel)->rodata->selftest_outbound_port = kPort;
    // The child's sockets are root's: under the policy they count as the proxy's, so only the
    // O_NONBLOCK check of the connecting end keeps the blocking clients out.
    (*skel)->rodata->selftest_proxy_uid = 0;
    (*skel)->rodata->reader_policy = policy;
    bpf_map__set_max_entries((*skel)->maps.workload_by_netns, 1);
    bpf_map__set_max_entries((*skel)->maps.fastpath_workload_kinds, 1);
    bpf_map__set_max_entries((*skel)->maps.fastpath_counters, MESHLANE_FASTPATH_COUNTER_STRIDE);
    if (auto loaded = skel->load("fastpath_sockmap (self-test)"); !loaded) {
        run.verdict = loaded.error().message;
        return run;
    }
    auto* s = skel->get();
    // Not a link: the attachment dies with the self-test's map.
    if (bpf_prog_attach(bpf_program__fd(s->progs.fastpath_msg), bpf_map__fd(s->maps.fastpath_peers),
                        BPF_SK_MSG_VERDICT, 0) != 0) {
        run.verdict = errno_text("attach fastpath_msg to the self-test SOCKHASH");
        return run;
    }
    remove_stale_cgroups(options.cgroup2_mount);
    const std::string cgroup_dir =
        options.cgroup2_mount + "/" + kCgroupPrefix + std::to_string(::getpid());
    if (::mkdir(cgroup_dir.c_str(), 0700) != 0 && errno != EEXIST) {
        run.verdict = errno_text(("create cgroup " + cgroup_dir).c_str());
        return run;
    }
    {
        UniqueFd cgroup(::open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        UniqueFd link;
        if (!cgroup.valid())
            run.verdict = errno_text(("open cgroup " + cgroup_dir).c_str());
        else
            link.reset(bpf_link_create(bpf_program__fd(s->progs.fastpath_sockops), cgroup.get(),
                                       BPF_CGROUP_SOCK_OPS, nullptr));
        if (run.verdict.empty() && !link.valid())
            run.verdict = errno_text("attach fastpath_sockops to the self-test cgroup");
        if (run.verdict.empty())
            run.verdict =
                run_child(child, cgroup_dir, static_cast<int>(options.epoll_bound_ms), run.payload);
    }
    ::rmdir(cgroup_dir.c_str());
    std::vector<std::uint64_t> per_cpu(
        static_cast<std::size_t>(std::max(1, libbpf_num_possible_cpus())));
    for (std::uint32_t c = 0; c < MESHLANE_FP_COUNTER_MAX; ++c)
        if (bpf_map_lookup_elem(bpf_map__fd(s->maps.fastpath_counters), &c, per_cpu.data()) == 0)
            for (auto v : per_cpu) run.counters[c] += v;
    return run;
}

// The basic checks' counters: the accelerated exchange took the redirect, and the
// not-accelerated connection left the SOCKHASH at its first write. "" when they did.
std::string check_redirected(const InstanceRun& run, std::uint64_t& redirected) {
    redirected = run.counters[MESHLANE_FP_CNT_REDIRECTED_BYTES];
    const std::uint64_t expected = kSmall + kReply + kBulk;
    if (run.counters[MESHLANE_FP_CNT_CONNS_ACCELERATED] < 1 || redirected < expected)
        return "the exchange did not take the sk_msg redirect (" + std::to_string(redirected) +
               " of " + std::to_string(expected) + " bytes redirected)";
    // The not-accelerated connection: its first write, and only that one, went through sk_msg.
    if (const auto passed = run.counters[MESHLANE_FP_CNT_PASSED_MSGS]; passed != 1)
        return "the not-accelerated connection sent " + std::to_string(passed) +
               " messages through sk_msg, expected 1 (it must leave the SOCKHASH)";
    return "";
}

// Phase 2: under the policy the blocking clients must stay off the fast path and see no
// EAGAIN; the event-loop client must still be accelerated.
std::string check_guarded(const InstanceRun& run) {
    if (!run.verdict.empty()) return run.verdict;
    ReaderPatternResults results = decode(run.payload);
    if (results.total_eagain() != 0)
        return "blocking readers still got EAGAIN with only proxy sockets accelerated (" +
               results.text() + ")";
    const std::uint64_t kept_out = run.counters[MESHLANE_FP_CNT_NOT_ELIGIBLE_BLOCKING_READER];
    if (kept_out < 5)
        return "only " + std::to_string(kept_out) + " of 5 blocking clients kept off the fast path";
    if (run.counters[MESHLANE_FP_CNT_CONNS_ACCELERATED] < 1)
        return "the event-loop client was not accelerated with only proxy sockets";
    return "";
}

}  // namespace

bool fastpath_selftest_forced_to_fail() {
    const char* knob = std::getenv("MESHLANE_FASTPATH_SELFTEST");
    return knob != nullptr && std::string(knob) == "fail";
}

bool fastpath_reader_policy_forced_any() {
    const char* knob = std::getenv("MESHLANE_FASTPATH_READER_POLICY");
    return knob != nullptr && std::string(knob) == "any-socket";
}

FastpathSelftestResult run_fastpath_selftest(const FastpathSelftestOptions& options) {
    FastpathSelftestResult result;
    if (options.force_fail) {
        result.reason = "forced by MESHLANE_FASTPATH_SELFTEST=fail";
        return result;
    }
    InstanceRun open = run_instance(options, MESHLANE_FASTPATH_POLICY_ANY_SOCKET, child_exchange);
    if (!open.verdict.empty()) {
        result.reason = open.verdict;
        return result;
    }
    if (auto r = check_redirected(open, result.redirected_bytes); !r.empty()) {
        result.reason = r;
        return result;
    }
    InstanceRun probe = run_instance(options, MESHLANE_FASTPATH_POLICY_ANY_SOCKET, child_readers);
    if (!probe.verdict.empty()) {
        result.reason = "blocking-reader patterns: " + probe.verdict;
        return result;
    }
    if (probe.counters[MESHLANE_FP_CNT_CONNS_ACCELERATED] < 6) {
        result.reason = "the blocking-reader patterns were not accelerated (" +
                        std::to_string(probe.counters[MESHLANE_FP_CNT_CONNS_ACCELERATED]) +
                        " of 6 connections)";
        return result;
    }
    result.probe = decode(probe.payload);
    result.blocking_reader_hazard = result.probe.total_eagain() != 0;
    std::string passed = "passed: " + std::to_string(result.redirected_bytes) +
                         " bytes redirected intact; FIONREAD exact (accelerated, and app wrote "
                         "first); epoll woke within " +
                         std::to_string(options.epoll_bound_ms) + " ms; half-close in order";
    if (!result.blocking_reader_hazard) {
        result.passed = true;
        result.reader_policy = MESHLANE_FASTPATH_POLICY_ANY_SOCKET;
        result.reason = passed + "; blocking readers never got EAGAIN";
        return result;
    }
    if (auto r = check_guarded(
            run_instance(options, MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY, child_readers));
        !r.empty()) {
        result.reason = r;
        return result;
    }
    result.passed = true;
    result.reader_policy = MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY;
    result.reason = passed + "; blocking recv() got EAGAIN on accelerated sockets (" +
                    result.probe.text() +
                    "): only proxy sockets are accelerated, and with that 0 EAGAIN";
    return result;
}

}  // namespace meshlane
