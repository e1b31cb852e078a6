// meshlane_crr: connect / request / response / close load generator and its server, like
// netperf TCP_CRR. Every transaction opens a new TCP connection, so it measures what a sidecar
// capture costs per connection (connect4 redirect, SO_ORIGINAL_DST, proxy accept + connect,
// iptables NAT + conntrack) rather than per byte.
//
//   meshlane_crr server --listen ADDR:PORT [--threads N] [--response BYTES] [--exchanges E]
//   meshlane_crr client --connect ADDR:PORT [--threads N] [--seconds S] [--request BYTES]
//                       [--response BYTES] [--exchanges E] [--timeout-ms MS]
//
// --exchanges E (default 1, give both sides the same): E request/response round trips per
// connection instead of one, to see how a per-connection cost (the fast path's psock setup and
// teardown, docs/fastpath-measurements.md) weighs against a per-message saving.
//
// The client prints one JSON object: transactions, errors by kind (first errno text kept),
// latency percentiles of whole transactions. Bounded in time: every socket call has a timeout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
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
    int threads = 4;
    double seconds = 3.0;
    size_t request = 64;
    size_t response = 64;
    int exchanges = 1;
    int timeout_ms = 2000;
};

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "meshlane_crr: %s\nusage: meshlane_crr server --listen IP:PORT [--threads N] "
                 "[--response B] [--exchanges E]\n       meshlane_crr client --connect IP:PORT "
                 "[--threads N] [--seconds S] [--request B] [--response B] [--exchanges E] "
                 "[--timeout-ms MS]\n",
                 why);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    if (argc < 2) usage("missing mode");
    Options o;
    o.mode = argv[1];
    for (int i = 2; i < argc; ++i) {
        std::string flag = argv[i];
        if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
        const char* value = argv[++i];
        if (flag == "--listen" || flag == "--connect")
            o.address = value;
        else if (flag == "--threads")
            o.threads = std::max(1, std::atoi(value));
        else if (flag == "--seconds")
            o.seconds = std::atof(value);
        else if (flag == "--request")
            o.request = std::max<size_t>(1, std::strtoul(value, nullptr, 10));
        else if (flag == "--response")
            o.response = std::max<size_t>(1, std::strtoul(value, nullptr, 10));
        else if (flag == "--exchanges") {
            char* end = nullptr;
            long n = std::strtol(value, &end, 10);
            if (end == value || *end != '\0' || n < 1 || n > 1000000)
                usage("--exchanges must be a whole number from 1 to 1000000");
            o.exchanges = static_cast<int>(n);
        } else if (flag == "--timeout-ms")
            o.timeout_ms = std::max(1, std::atoi(value));
        else
            usage(("unknown flag " + flag).c_str());
    }
    if (o.mode != "server" && o.mode != "client") usage("mode must be server or client");
    if (o.address.empty()) usage("missing --listen / --connect");
    return o;
}

sockaddr_in parse_address(const std::string& text) {
    const auto sin = meshlane_bench::parse_ipv4_endpoint(text);
    if (!sin) usage("address must be IPv4:PORT");
    return *sin;
}

void set_timeouts(int fd, int timeout_ms) {
    meshlane_bench::set_socket_timeouts(fd, timeout_ms, true);
}

using meshlane_bench::read_exact;
using meshlane_bench::write_all;

// ---------------------------------------------------------------------------------------------
// server: N threads block in accept() on one socket; each connection: read the request, write
// the response and close first, like an HTTP/1.0 server. Closing first puts every TIME_WAIT on
// the accepting side of each hop (server, inbound and outbound listeners), so no side runs out
// of ephemeral ports at thousands of connections per second: HAProxy's `source 127.0.0.6`
// binds before connecting, where tcp_tw_reuse does not help.

int run_server(const Options& o) {
    sockaddr_in sin = parse_address(o.address);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0 || listen(lfd, 4096) != 0) {
        std::fprintf(stderr, "meshlane_crr server: bind/listen %s: %s\n", o.address.c_str(),
                     std::strerror(errno));
        return 1;
    }
    std::vector<std::thread> workers;
    for (int t = 0; t < std::max(o.threads, 1); ++t) {
        workers.emplace_back([&] {
            std::vector<char> request(o.request), response(o.response, 'r');
            for (;;) {
                int fd = accept(lfd, nullptr, nullptr);
                if (fd < 0) continue;
                set_timeouts(fd, o.timeout_ms);
                for (int e = 0; e < o.exchanges; ++e)
                    if (read_exact(fd, request.data(), request.size()) != 0 ||
                        write_all(fd, response.data(), response.size()) != 0)
                        break;
                close(fd);
            }
        });
    }
    for (auto& w : workers) w.join();
    return 0;
}

// ---------------------------------------------------------------------------------------------
// client

struct Tally {
    uint64_t transactions = 0;
    std::map<std::string, uint64_t> errors;  // "connect: Connection refused" -> count
    std::vector<uint32_t> latency_us;
};

void run_client_thread(const Options& o, const sockaddr_in& dst, Clock::time_point deadline,
                       Tally& tally) {
    std::vector<char> request(o.request, 'q'), response(o.response);
    tally.latency_us.reserve(1 << 16);
    while (Clock::now() < deadline) {
        auto start = Clock::now();
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            ++tally.errors[std::string("socket: ") + std::strerror(errno)];
            continue;
        }
        set_timeouts(fd, o.timeout_ms);
        const char* stage = "connect";
        int err =
            connect(fd, reinterpret_cast<const sockaddr*>(&dst), sizeof(dst)) == 0 ? 0 : errno;
        for (int e = 0; !err && e < o.exchanges; ++e) {
            stage = "send";
            err = write_all(fd, request.data(), request.size());
            if (!err) {
                stage = "recv";
                err = read_exact(fd, response.data(), response.size());
            }
        }
        close(fd);
        if (err) {
            ++tally.errors[std::string(stage) + ": " + std::strerror(err)];
            // Back off a little so a broken datapath does not spin a core.
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            continue;
        }
        ++tally.transactions;
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
        tally.latency_us.push_back(
            static_cast<uint32_t>(std::min<int64_t>(us.count(), UINT32_MAX)));
    }
}

double percentile(std::vector<uint32_t>& v, double p) {
    if (v.empty()) return 0.0;
    size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<long>(idx), v.end());
    return v[idx];
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out;
}

int run_client(const Options& o) {
    sockaddr_in dst = parse_address(o.address);
    auto begin = Clock::now();
    auto deadline = begin + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(o.seconds));
    std::vector<Tally> tallies(static_cast<size_t>(o.threads));
    std::vector<std::thread> threads;
    for (auto& tally : tallies)
        threads.emplace_back(run_client_thread, std::cref(o), std::cref(dst), deadline,
                             std::ref(tally));
    for (auto& t : threads) t.join();
    double elapsed = std::chrono::duration<double>(Clock::now() - begin).count();

    Tally total;
    for (auto& t : tallies) {
        total.transactions += t.transactions;
        for (auto& [k, v] : t.errors) total.errors[k] += v;
        total.latency_us.insert(total.latency_us.end(), t.latency_us.begin(), t.latency_us.end());
    }
    uint64_t error_count = 0;
    std::string errors = "{";
    for (auto& [k, v] : total.errors) {
        errors += (errors.size() > 1 ? "," : "") + std::string("\"") + json_escape(k) +
                  "\":" + std::to_string(v);
        error_count += v;
    }
    errors += "}";
    double p50 = percentile(total.latency_us, 50), p99 = percentile(total.latency_us, 99);
    std::printf(
        "{\"transactions\":%llu,\"errors\":%llu,\"error_kinds\":%s,\"seconds\":%.4f,"
        "\"rate\":%.1f,\"p50_us\":%.0f,\"p99_us\":%.0f,\"threads\":%d,\"exchanges\":%d}\n",
        static_cast<unsigned long long>(total.transactions),
        static_cast<unsigned long long>(error_count), errors.c_str(), elapsed,
        static_cast<double>(total.transactions) / elapsed, p50, p99, o.threads, o.exchanges);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    Options o = parse(argc, argv);
    return o.mode == "server" ? run_server(o) : run_client(o);
}
