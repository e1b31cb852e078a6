#include "features/fastpath/fastpath_selftest_readers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "agent/common/unique_fd.h"

namespace meshlane {

namespace {

constexpr std::size_t kSmall = 1000;
constexpr std::size_t kBurst = 8u << 20;
constexpr int kPollMs = 5000;  // a pattern that waits longer than this has failed

constexpr const char* kNames[] = {"own_fin_ack",      "signal",      "half_close",
                                  "burst_half_close", "full_duplex", "event_loop"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<unsigned>(ReaderPattern::kCount));

unsigned char byte_at(std::uint64_t seed, std::size_t offset) {
    return static_cast<unsigned char>(((offset + seed) * 2654435761u) >> 13);
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Blocking send of `size` pattern bytes (EINTR retried).
bool send_all(int fd, std::uint64_t seed, std::size_t size) {
    std::vector<unsigned char> chunk(65536);
    std::size_t sent = 0;
    while (sent < size) {
        std::size_t len = std::min(chunk.size(), size - sent);
        for (std::size_t i = 0; i < len; ++i) chunk[i] = byte_at(seed, sent + i);
        ssize_t n = ::send(fd, chunk.data(), len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, kPollMs) <= 0) return false;
            continue;
        }
        if (n <= 0) return false;
        sent += static_cast<std::size_t>(n);
    }
    return true;
}

// Reads until EOF; counts EAGAIN on a blocking recv() (retried). polled: poll() before each
// recv(), as event loops do. True when exactly `size` pattern bytes arrived, then EOF.
bool read_to_eof(int fd, std::uint64_t seed, std::size_t size, bool polled,
                 std::atomic<std::uint32_t>& eagain) {
    std::vector<unsigned char> buf(65536);
    std::size_t got = 0;
    while (true) {
        if (polled) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, kPollMs) <= 0) return false;
        }
        ssize_t n = ::recv(fd, buf.data(), buf.size(), polled ? MSG_DONTWAIT : 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!polled) ++eagain;  // a blocking socket must never say this
            continue;
        }
        if (n < 0) return false;
        if (n == 0) return got == size;
        for (ssize_t i = 0; i < n; ++i)
            if (got + static_cast<std::size_t>(i) >= size ||
                buf[static_cast<std::size_t>(i)] !=
                    byte_at(seed, got + static_cast<std::size_t>(i)))
                return false;
        got += static_cast<std::size_t>(n);
    }
}

// A blocking reader of exactly `size` bytes (no EOF expected yet).
bool read_exactly(int fd, std::uint64_t seed, std::size_t size,
                  std::atomic<std::uint32_t>& eagain) {
    std::vector<unsigned char> buf(65536);
    std::size_t got = 0;
    while (got < size) {
        ssize_t n = ::recv(fd, buf.data(), std::min(buf.size(), size - got), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ++eagain;
            continue;
        }
        if (n <= 0) return false;
        for (ssize_t i = 0; i < n; ++i)
            if (buf[static_cast<std::size_t>(i)] !=
                byte_at(seed, got + static_cast<std::size_t>(i)))
                return false;
        got += static_cast<std::size_t>(n);
    }
    return true;
}

struct Pair {
    UniqueFd client, server;
};

// A client (blocking unless nonblocking) connected to the listener, and its accepted socket.
bool connect_pair(int listener, std::uint16_t port, bool nonblocking, Pair& pair) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    pair.client.reset(
        ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0));
    if (!pair.client.valid()) return false;
    if (::connect(pair.client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        if (errno != EINPROGRESS) return false;
        pollfd p{pair.client.get(), POLLOUT, 0};
        if (::poll(&p, 1, kPollMs) <= 0) return false;
    }
    pair.server.reset(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    return pair.server.valid();
}

pid_t thread_id() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

void ignore_signal(int) {}

// Waits until thread `tid` of this process sleeps in the kernel's wait_woken (tcp_bpf_recvmsg
// and tcp_recvmsg both sleep there): a wake-up sent earlier would find no sleeper, and a
// missed hazard would switch app sockets on where they are not safe. Falls back to "sleeping
// for 100 ms" where wchan is not readable. False after 3 s.
bool wait_blocked(pid_t tid) {
    const std::string task = "/proc/self/task/" + std::to_string(tid);
    int sleeping_ms = 0;
    for (int waited = 0; waited < 3000; ++waited) {
        char buf[64] = {};
        if (UniqueFd f(::open((task + "/wchan").c_str(), O_RDONLY | O_CLOEXEC)); f.valid()) {
            ssize_t n = ::read(f.get(), buf, sizeof(buf) - 1);
            if (n > 0 && std::string(buf, static_cast<std::size_t>(n)) == "wait_woken") return true;
            if (n > 1 && buf[0] != '0') {  // readable, sleeping elsewhere (not in recv yet)
                sleep_ms(1);
                continue;
            }
        }
        char stat[512] = {};
        if (UniqueFd f(::open((task + "/stat").c_str(), O_RDONLY | O_CLOEXEC)); f.valid()) {
            ssize_t n = ::read(f.get(), stat, sizeof(stat) - 1);
            const char* close = n > 0 ? std::strrchr(stat, ')') : nullptr;
            sleeping_ms =
                close != nullptr && close[1] == ' ' && close[2] == 'S' ? sleeping_ms + 1 : 0;
            if (sleeping_ms >= 100) return true;
        }
        sleep_ms(1);
    }
    return false;
}

// A reader blocked in recv() while something that is not data wakes it (wake()); the server
// then replies kSmall bytes and closes.
std::string blocked_reader_woken(int listener, std::uint16_t port, const auto& wake,
                                 std::atomic<std::uint32_t>& eagain, const char* what) {
    Pair p;
    if (!connect_pair(listener, port, false, p)) return std::string("connect (") + what + ")";
    std::atomic<pid_t> tid{0};
    bool ok = false;
    std::thread reader([&] {
        tid = thread_id();
        ok = read_to_eof(p.client.get(), 2, kSmall, false, eagain);
    });
    while (tid == 0) sleep_ms(1);
    if (!wait_blocked(tid.load())) {
        wake(p.client.get(), tid.load());
        (void)send_all(p.server.get(), 2, kSmall);
        p.server.reset();
        reader.join();
        return std::string("the reader never blocked in recv() (") + what + ")";
    }
    wake(p.client.get(), tid.load());
    sleep_ms(50);
    bool sent = send_all(p.server.get(), 2, kSmall);
    p.server.reset();
    reader.join();
    if (!sent || !ok) return std::string("bytes lost or changed (") + what + ")";
    return "";
}

std::string half_close(int listener, std::uint16_t port, std::atomic<std::uint32_t>& eagain) {
    Pair p;
    if (!connect_pair(listener, port, false, p)) return "connect (half_close)";
    std::atomic<std::uint32_t> server_side{0};
    bool request_ok = false, reply_sent = false;
    std::thread server([&] {
        request_ok = read_to_eof(p.server.get(), 3, kSmall, true, server_side);
        sleep_ms(20);
        reply_sent = send_all(p.server.get(), 4, kSmall);
        p.server.reset();
    });
    bool ok = send_all(p.client.get(), 3, kSmall) && ::shutdown(p.client.get(), SHUT_WR) == 0 &&
              read_to_eof(p.client.get(), 4, kSmall, false, eagain);
    server.join();
    if (!ok || !request_ok || !reply_sent) return "bytes lost or changed (half_close)";
    return "";
}

std::string burst_half_close(int listener, std::uint16_t port, std::atomic<std::uint32_t>& eagain) {
    Pair p;
    if (!connect_pair(listener, port, false, p)) return "connect (burst_half_close)";
    std::atomic<std::uint32_t> server_side{0};
    bool request_ok = false, reply_sent = false;
    std::thread server([&] {
        sleep_ms(200);  // the writer runs 4 MiB ahead: the direction spills to TCP
        request_ok = read_to_eof(p.server.get(), 5, kBurst, true, server_side);
        reply_sent = send_all(p.server.get(), 6, kSmall);
        p.server.reset();
    });
    bool ok = send_all(p.client.get(), 5, kBurst) && ::shutdown(p.client.get(), SHUT_WR) == 0 &&
              read_to_eof(p.client.get(), 6, kSmall, false, eagain);
    server.join();
    if (!ok || !request_ok || !reply_sent) return "bytes lost or changed (burst_half_close)";
    return "";
}

// Both ends write kBurst and read kBurst at once; each half-closes only after it has read the
// other direction completely (never while data still flows both ways: HAProxy 2.6 truncates
// that pattern with or without meshlane, docs/fastpath.md).
std::string full_duplex(int listener, std::uint16_t port, std::atomic<std::uint32_t>& eagain) {
    Pair p;
    if (!connect_pair(listener, port, false, p)) return "connect (full_duplex)";
    std::atomic<std::uint32_t> server_side{0};
    bool server_ok = false;
    std::thread server([&] {
        std::thread writer([&] { (void)send_all(p.server.get(), 8, kBurst); });
        bool in = read_to_eof(p.server.get(), 7, kBurst, true, server_side);
        writer.join();
        server_ok = in;
        p.server.reset();
    });
    bool sent = false;
    std::thread writer([&] { sent = send_all(p.client.get(), 7, kBurst); });
    bool in = read_exactly(p.client.get(), 8, kBurst, eagain);
    writer.join();
    bool closed = ::shutdown(p.client.get(), SHUT_WR) == 0;
    std::vector<unsigned char> tail(16);
    ssize_t eof = -1;
    while (true) {  // EOF after the server closed
        eof = ::recv(p.client.get(), tail.data(), tail.size(), 0);
        if (eof < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ++eagain;
            continue;
        }
        if (!(eof < 0 && errno == EINTR)) break;
    }
    server.join();
    if (!sent || !in || !closed || eof != 0 || !server_ok)
        return "bytes lost or changed (full_duplex)";
    return "";
}

std::string event_loop(int listener, std::uint16_t port, std::atomic<std::uint32_t>& eagain) {
    Pair p;
    if (!connect_pair(listener, port, true, p)) return "connect (event_loop)";
    std::atomic<std::uint32_t> server_side{0};
    bool request_ok = false, reply_sent = false;
    std::thread server([&] {
        request_ok = read_to_eof(p.server.get(), 9, kSmall, true, server_side);
        reply_sent = send_all(p.server.get(), 10, kSmall);
        p.server.reset();
    });
    bool ok = send_all(p.client.get(), 9, kSmall) && ::shutdown(p.client.get(), SHUT_WR) == 0 &&
              read_to_eof(p.client.get(), 10, kSmall, true, eagain);
    server.join();
    if (!ok || !request_ok || !reply_sent) return "bytes lost or changed (event_loop)";
    return "";
}

}  // namespace

const char* reader_pattern_name(ReaderPattern pattern) {
    auto i = static_cast<unsigned>(pattern);
    return i < static_cast<unsigned>(ReaderPattern::kCount) ? kNames[i] : "unknown";
}

std::uint32_t ReaderPatternResults::total_eagain() const {
    std::uint32_t sum = 0;
    for (auto n : eagain) sum += n;
    return sum;
}

std::string ReaderPatternResults::text() const {
    std::string out;
    for (unsigned i = 0; i < static_cast<unsigned>(ReaderPattern::kCount); ++i) {
        if (eagain[i] == 0) continue;
        if (!out.empty()) out += ", ";
        out += std::string(kNames[i]) + " " + std::to_string(eagain[i]);
    }
    return out.empty() ? "none" : out;
}

std::string run_reader_patterns(int listener, std::uint16_t port, ReaderPatternResults& results) {
    struct sigaction sa {};
    sa.sa_handler = ignore_signal;
    sa.sa_flags = SA_RESTART;  // plain TCP restarts a blocked recv(); EAGAIN would be a bug
    if (::sigaction(SIGUSR1, &sa, nullptr) != 0) return "sigaction";
    std::atomic<std::uint32_t> counts[static_cast<unsigned>(ReaderPattern::kCount)] = {};
    auto slot = [&](ReaderPattern pattern) -> std::atomic<std::uint32_t>& {
        return counts[static_cast<unsigned>(pattern)];
    };
    auto fin = [](int fd, pid_t) { ::shutdown(fd, SHUT_WR); };
    auto signal = [](int, pid_t tid) { ::syscall(SYS_tgkill, ::getpid(), tid, SIGUSR1); };
    std::string failed =
        blocked_reader_woken(listener, port, fin, slot(ReaderPattern::kOwnFinAck), "own_fin_ack");
    if (failed.empty())
        failed =
            blocked_reader_woken(listener, port, signal, slot(ReaderPattern::kSignal), "signal");
    if (failed.empty()) failed = half_close(listener, port, slot(ReaderPattern::kHalfClose));
    if (failed.empty())
        failed = burst_half_close(listener, port, slot(ReaderPattern::kBurstHalfClose));
    if (failed.empty()) failed = full_duplex(listener, port, slot(ReaderPattern::kFullDuplex));
    if (failed.empty()) failed = event_loop(listener, port, slot(ReaderPattern::kEventLoop));
    for (unsigned i = 0; i < static_cast<unsigned>(ReaderPattern::kCount); ++i)
        results.eagain[i] = counts[i].load();
    return failed;
}

}  // namespace meshlane
