// meshlane_connrate: load generators for the observation overhead benchmark (bench/overhead.sh)
// and the drop-flood test (tests/integration/test_observe_drop_flood.py).
//
//   meshlane_connrate server --listen IP:PORT [--threads N] [--original-dst]
//       A trivial "proxy": accept, optionally getsockopt(SO_ORIGINAL_DST) (so the redirect's
//       getsockopt hook runs as under a real sidecar), read the request, write the response,
//       close (server closes first, so TIME_WAIT stays on the server side and the client never
//       runs out of ports). SO_REUSEPORT listener per thread. Runs until killed.
//   meshlane_connrate client --connect IP:PORT [--threads N] [--seconds S] [--rate R]
//                            [--request B] [--response B] [--timeout-ms MS]
//       New connections as fast as possible, or paced to R per second in all: connect, send B,
//       read the response until EOF, close.
//   meshlane_connrate udp-flood --connect IP:PORT [--threads N] [--seconds S] [--rate R]
//       UDP datagrams (32 B) with sendmmsg in batches of 64 from N threads, paced to R per
//       second in all (0: as fast as possible).
//
// Clients print one JSON object: {"mode", "count", "errors", "first_error", "seconds", "rate"}.
// Bounded in time: every socket call has a timeout and the loop ends after S seconds.
#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench_socket.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    std::string mode;
    std::string address;
    int threads = 2;
    double seconds = 5.0;
    double rate = 0;  // per second in all; 0 = unpaced
    std::size_t request = 64;
    std::size_t response = 64;
    int timeout_ms = 2000;
    bool original_dst = false;
};

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "meshlane_connrate: %s\nusage: meshlane_connrate server --listen IP:PORT "
                 "[--threads N] [--original-dst]\n"
                 "       meshlane_connrate client --connect IP:PORT [--threads N] [--seconds S] "
                 "[--rate R] [--request B] [--response B] [--timeout-ms MS]\n"
                 "       meshlane_connrate udp-flood --connect IP:PORT [--threads N] "
                 "[--seconds S] [--rate R]\n",
                 why);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    if (argc < 2) usage("missing mode");
    Options o;
    o.mode = argv[1];
    for (int i = 2; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--original-dst") {
            o.original_dst = true;
            continue;
        }
        if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
        const char* value = argv[++i];
        if (flag == "--listen" || flag == "--connect")
            o.address = value;
        else if (flag == "--threads")
            o.threads = std::clamp(std::atoi(value), 1, 256);
        else if (flag == "--seconds")
            o.seconds = std::atof(value);
        else if (flag == "--rate")
            o.rate = std::max(0.0, std::atof(value));
        else if (flag == "--request")
            o.request = std::strtoul(value, nullptr, 10);
        else if (flag == "--response")
            o.response = std::strtoul(value, nullptr, 10);
        else if (flag == "--timeout-ms")
            o.timeout_ms = std::max(1, std::atoi(value));
        else
            usage(("unknown flag " + flag).c_str());
    }
    if (o.mode != "server" && o.mode != "client" && o.mode != "udp-flood")
        usage("mode must be server, client or udp-flood");
    if (o.address.empty()) usage("missing --listen / --connect");
    if (o.seconds <= 0 || o.seconds > 600) usage("--seconds must be within (0, 600]");
    if (o.request > 65536 || o.response > 65536) usage("--request/--response at most 65536");
    return o;
}

sockaddr_in parse_address(const std::string& text) {
    const auto sin = meshlane_bench::parse_ipv4_endpoint(text);
    if (!sin) usage("address must be IPv4:PORT");
    return *sin;
}

// Reads until n bytes arrived, or until EOF when until_eof; returns 0 or an errno.
int read_bytes(int fd, char* buf, std::size_t cap, std::size_t n, bool until_eof) {
    if (!until_eof) return meshlane_bench::read_exact(fd, buf, std::min(n, cap));
    std::size_t got = 0;
    for (;;) {
        const ssize_t r = recv(fd, buf, cap, 0);
        if (r > 0)
            got += static_cast<std::size_t>(r);
        else if (r == 0)
            return got >= n ? 0 : EPIPE;
        else if (errno != EINTR)
            return errno;
    }
}

using meshlane_bench::write_all;

// Paces one thread to `per_thread` operations per second: sleeps until operation `done` is due.
class Pacer {
  public:
    explicit Pacer(double per_thread) : per_thread_(per_thread), start_(Clock::now()) {}
    void wait(std::uint64_t done) const {
        if (per_thread_ <= 0) return;
        const auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(done / per_thread_));
        if (due > Clock::now()) std::this_thread::sleep_until(due);
    }

  private:
    double per_thread_;
    Clock::time_point start_;
};

struct Totals {
    std::atomic<std::uint64_t> count{0};
    std::atomic<std::uint64_t> errors{0};
    std::mutex mutex;
    std::string first_error;
    void error(const char* what, int err) {
        errors.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard lock(mutex);
        if (first_error.empty()) first_error = std::string(what) + ": " + std::strerror(err);
    }
};

int run_server(const Options& o) {
    const sockaddr_in addr = parse_address(o.address);
    std::vector<int> listeners;
    for (int i = 0; i < o.threads; ++i) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        const int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
            listen(fd, 4096) != 0) {
            std::perror("meshlane_connrate server: listen");
            return 1;
        }
        listeners.push_back(fd);
    }
    std::vector<std::thread> workers;
    for (int fd : listeners)
        workers.emplace_back([fd, &o] {
            std::vector<char> buf(std::max<std::size_t>(o.request, o.response) + 1, 'r');
            for (;;) {
                const int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
                if (c < 0) continue;
                meshlane_bench::set_socket_timeouts(c, o.timeout_ms, false);
                if (o.original_dst) {
                    sockaddr_in orig{};
                    socklen_t len = sizeof(orig);
                    getsockopt(c, SOL_IP, SO_ORIGINAL_DST, &orig, &len);
                }
                if (read_bytes(c, buf.data(), buf.size(), o.request, false) == 0)
                    write_all(c, buf.data(), o.response);
                close(c);
            }
        });
    for (auto& w : workers) w.join();
    return 0;
}

void client_thread(const Options& o, const sockaddr_in& to, Clock::time_point end, Totals& t) {
    const Pacer pacer(o.rate / o.threads);
    std::vector<char> buf(std::max<std::size_t>(o.request, o.response) + 1, 'q');
    for (std::uint64_t done = 0; Clock::now() < end; ++done) {
        pacer.wait(done);
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            t.error("socket", errno);
            continue;
        }
        meshlane_bench::set_socket_timeouts(fd, o.timeout_ms, false);
        int err = 0;
        const char* what = "connect";
        if (connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0) err = errno;
        if (!err && (what = "send", err = write_all(fd, buf.data(), o.request)) == 0)
            what = "recv", err = read_bytes(fd, buf.data(), buf.size(), o.response, true);
        close(fd);
        if (err)
            t.error(what, err);
        else
            t.count.fetch_add(1, std::memory_order_relaxed);
    }
}

void flood_thread(const Options& o, const sockaddr_in& to, Clock::time_point end, Totals& t) {
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0) {
        t.error("udp socket", errno);
        return;
    }
    constexpr int kBatch = 64;
    char payload[32] = "meshlane drop flood";
    iovec iov{payload, sizeof(payload)};
    mmsghdr msgs[kBatch]{};
    for (auto& m : msgs) {
        m.msg_hdr.msg_iov = &iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    const Pacer pacer(o.rate / o.threads);
    std::uint64_t sent = 0;
    while (Clock::now() < end) {
        pacer.wait(sent);
        const int n = sendmmsg(fd, msgs, kBatch, 0);
        if (n > 0)
            sent += static_cast<std::uint64_t>(n);
        else if (errno != EINTR && errno != ENOBUFS && errno != EAGAIN)
            t.error("sendmmsg", errno);
    }
    t.count.fetch_add(sent, std::memory_order_relaxed);
    close(fd);
}

int run_client(const Options& o) {
    const sockaddr_in to = parse_address(o.address);
    Totals totals;
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(o.seconds));
    std::vector<std::thread> threads;
    for (int i = 0; i < o.threads; ++i)
        threads.emplace_back([&] {
            if (o.mode == "client")
                client_thread(o, to, end, totals);
            else
                flood_thread(o, to, end, totals);
        });
    for (auto& t : threads) t.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::string first_error;
    for (char c : totals.first_error) first_error += (c == '"' || c == '\\') ? '\'' : c;
    std::printf(
        "{\"mode\": \"%s\", \"count\": %llu, \"errors\": %llu, \"first_error\": \"%s\", "
        "\"seconds\": %.3f, \"rate\": %.1f, \"threads\": %d, \"target_rate\": %.0f}\n",
        o.mode.c_str(), static_cast<unsigned long long>(totals.count.load()),
        static_cast<unsigned long long>(totals.errors.load()), first_error.c_str(), seconds,
        totals.count.load() / seconds, o.threads, o.rate);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    return o.mode == "server" ? run_server(o) : run_client(o);
}
