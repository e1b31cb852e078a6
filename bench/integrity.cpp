// meshlane_integrity: byte-integrity load generator for the sk_msg fast path (docs/fastpath.md),
// used by features/fastpath/tests/test_fastpath_integrity.py. Every connection carries a
// deterministic pseudo-random stream, checked byte by byte at the far end, so a lost,
// duplicated or reordered byte is reported with its offset; both directions end in a half-close
// that must arrive after the last byte.
//
//   meshlane_integrity server --listen IP:PORT [--reader epoll|fionread]
//   meshlane_integrity client --connect IP:PORT [--conns N] [--concurrency C] [--seed S]
//        [--min-bytes B] [--max-bytes B] [--max-msg B] [--reply-bytes B|--reply-random]
//        [--reader epoll|fionread] [--timeout-ms MS]
//   both: [--burst B --quiet-ms MS] [--read-pause-every B --read-pause-ms MS]
//
// Per connection the client sends a 24-byte header (magic, stream length, seed), then the stream
// in writes of random size (1..max-msg), then shutdown(SHUT_WR). The server checks the stream
// and that EOF follows it exactly, then answers a 16-byte verdict (status, server-side max gap)
// and its own stream (length from the header's seed), then closes. The client checks that too.
//
// Reader kinds (client side, reading from its proxy over the outbound hop; server side, reading
// from its proxy over the inbound hop; both accelerated in the tests):
//   epoll     non-blocking reads of up to 64 KiB when epoll reports EPOLLIN
//   fionread  on EPOLLIN, ioctl(FIONREAD) sizes the read exactly (as some proxies do); FIONREAD
//             counting fewer bytes than a MSG_PEEK just saw (race-free: bytes can arrive
//             between two calls, never leave), or more than a read returns, is an error.
//             "FIONREAD 0, then data" is counted as fionread_raced (benign: the peer wrote in
//             between) -- the naive check that failed on it once was the FIONREAD "bug".
//
// Flow-control cycles (the fast path's spill to TCP and return, docs/fastpath.md): --burst makes
// every writer stop for --quiet-ms after each B bytes of its stream and before its half-close
// (HAProxy 2.6 can lose a stream's tail when both ends half-close while data still flows both
// ways, with iptables as well: docs/fastpath.md, "Flow control"), --read-pause-every makes
// every reader stop reading for --read-pause-ms after each B bytes read. A reader's own pause is
// not counted as a stall (its gap clock restarts when it resumes); a writer's quiet time is.
//
// The client prints one JSON object: connections ok/failed, bytes each way, the first errors,
// and the longest interval any established connection waited without progress (max_stall_ms).
// Bounded in time: --timeout-ms for the whole run.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kMagic = 0x6d6c2d696e746567ull;  // "ml-integ"
constexpr std::size_t kHeader = 24;
constexpr std::size_t kVerdict = 16;

double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::uint64_t splitmix(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// The stream `seed` is a sequence of 64-bit words; byte `offset` is a byte of word offset / 8.
struct StreamCursor {
    std::uint64_t seed;
    std::uint64_t word_index = ~0ull;
    std::uint64_t word = 0;
    std::uint8_t at(std::uint64_t offset) {
        if ((offset >> 3) != word_index) {
            word_index = offset >> 3;
            word = splitmix(seed ^ word_index * 0x100000001b3ull);
        }
        return static_cast<std::uint8_t>(word >> ((offset & 7) * 8));
    }
};

void fill(std::uint64_t seed, std::uint64_t offset, std::uint8_t* out, std::size_t len) {
    StreamCursor cursor{seed};
    for (std::size_t i = 0; i < len; ++i) out[i] = cursor.at(offset + i);
}

// Returns the index of the first mismatching byte, or len.
std::size_t check(std::uint64_t seed, std::uint64_t offset, const std::uint8_t* in,
                  std::size_t len) {
    StreamCursor cursor{seed};
    for (std::size_t i = 0; i < len; ++i)
        if (in[i] != cursor.at(offset + i)) return i;
    return len;
}

void put64(std::uint8_t* p, std::uint64_t v) { std::memcpy(p, &v, 8); }
std::uint64_t get64(const std::uint8_t* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

bool parse_addr(const std::string& text, sockaddr_in& addr) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) return false;
    addr = {};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(std::atoi(text.c_str() + colon + 1)));
    return inet_pton(AF_INET, text.substr(0, colon).c_str(), &addr.sin_addr) == 1;
}

void raise_fd_limit() {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, 65536);
        setrlimit(RLIMIT_NOFILE, &lim);
    }
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) < 0x20) continue;
        out += c;
    }
    return out;
}

// ---- one side of a connection -------------------------------------------------------------

struct Conn {
    int fd = -1;
    bool server = false;
    bool established = false;
    // outgoing
    std::vector<std::uint8_t> prefix;  // header (client) or verdict (server), sent first
    std::size_t prefix_sent = 0;
    std::uint64_t out_seed = 0, out_len = 0, out_sent = 0;
    bool out_started = false, out_shut = false;
    // incoming
    std::uint8_t in_prefix[kHeader] = {};
    std::size_t in_prefix_len = 0, in_prefix_want = 0;
    std::uint64_t in_seed = 0, in_len = 0, in_got = 0;
    bool in_eof = false;
    // bookkeeping: the gap between two reads of the same stream (after its first byte) is what a
    // lost wake-up stretches; waiting for the first byte includes the far end's queueing.
    Clock::time_point last_read;
    bool any_read = false;
    double max_gap_ms = 0;
    // fionread reader: FIONREAD said 0 and the bytes arrived right after (benign, counted)
    std::uint64_t fionread_raced = 0;
    std::uint64_t rng = 0;
    std::string error;
    bool done = false;
    // --burst / --read-pause-every: the next offsets at which to pause, and until when
    std::uint64_t next_quiet = 0, next_read_pause = 0;
    Clock::time_point write_resume{}, read_resume{};
    bool read_paused = false, quiet_before_close = false;
};

struct Options {
    std::string mode, address, reader = "epoll";
    int conns = 1, concurrency = 1000, timeout_ms = 60000;
    std::uint64_t seed = 1, min_bytes = 1, max_bytes = 65536, max_msg = 65536;
    std::uint64_t reply_bytes = 0;
    bool reply_random = false;
    std::uint64_t burst = 0, read_pause_every = 0;
    int quiet_ms = 0, read_pause_ms = 0;
};

// A connection waiting out its writer's quiet time or its reader's pause: pump it again then.
bool paused(const Conn& c) {
    const auto now = Clock::now();
    return (c.out_started && !c.out_shut && now < c.write_resume) ||
           (c.read_paused && now < c.read_resume);
}

void read_progress(Conn& c) {
    if (c.any_read) c.max_gap_ms = std::max(c.max_gap_ms, ms_since(c.last_read));
    c.any_read = true;
    c.last_read = Clock::now();
}

// Writes what it can; false on error (c.error set).
bool pump_out(Conn& c, std::uint64_t max_msg, const Options& o) {
    std::uint8_t buf[65536];
    while (c.prefix_sent < c.prefix.size()) {
        ssize_t n = send(c.fd, c.prefix.data() + c.prefix_sent, c.prefix.size() - c.prefix_sent,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN) return true;
            c.error = std::string("send: ") + std::strerror(errno);
            return false;
        }
        c.prefix_sent += static_cast<std::size_t>(n);
    }
    if (!c.out_started) return true;
    if (Clock::now() < c.write_resume) return true;
    while (c.out_sent < c.out_len) {
        if (o.burst && c.out_sent >= c.next_quiet) {
            if (c.next_quiet > 0) {
                c.next_quiet += o.burst;
                c.write_resume = Clock::now() + std::chrono::milliseconds(o.quiet_ms);
                return true;
            }
            c.next_quiet = o.burst;
        }
        c.rng = splitmix(c.rng);
        std::size_t len = 1 + c.rng % std::min<std::uint64_t>(max_msg, sizeof(buf));
        len = std::min<std::uint64_t>(len, c.out_len - c.out_sent);
        if (o.burst) len = std::min<std::uint64_t>(len, c.next_quiet - c.out_sent);
        fill(c.out_seed, c.out_sent, buf, len);
        ssize_t n = send(c.fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN) return true;
            c.error = std::string("send: ") + std::strerror(errno) + " at byte " +
                      std::to_string(c.out_sent);
            return false;
        }
        c.out_sent += static_cast<std::uint64_t>(n);
    }
    if (o.burst && !c.out_shut && !c.quiet_before_close) {
        // The last burst gets its quiet time too, before the half-close: see --burst.
        c.quiet_before_close = true;
        c.write_resume = Clock::now() + std::chrono::milliseconds(o.quiet_ms);
        return true;
    }
    if (!c.out_shut) {
        if (shutdown(c.fd, SHUT_WR) != 0) {
            c.error = std::string("shutdown: ") + std::strerror(errno);
            return false;
        }
        c.out_shut = true;
    }
    return true;
}

// Consumes `len` received bytes; false on error.
bool consume(Conn& c, const std::uint8_t* data, std::size_t len, const Options& o) {
    while (len > 0 && c.in_prefix_len < c.in_prefix_want) {
        std::size_t take = std::min(len, c.in_prefix_want - c.in_prefix_len);
        std::memcpy(c.in_prefix + c.in_prefix_len, data, take);
        c.in_prefix_len += take;
        data += take;
        len -= take;
        if (c.in_prefix_len < c.in_prefix_want) return true;
        if (c.server) {
            if (get64(c.in_prefix) != kMagic) {
                c.error = "bad header";
                return false;
            }
            c.in_len = get64(c.in_prefix + 8);
            c.in_seed = get64(c.in_prefix + 16);
        } else {
            std::uint64_t status = get64(c.in_prefix);
            if (status != 0) {
                c.error = "server reported: stream broken at byte " + std::to_string(status - 1) +
                          " (lost, duplicated or reordered)";
                return false;
            }
        }
    }
    if (len == 0) return true;
    if (c.in_got + len > c.in_len) {
        c.error = "received " + std::to_string(c.in_got + len - c.in_len) +
                  " bytes more than the stream's " + std::to_string(c.in_len) + " (duplicated)";
        return false;
    }
    std::size_t bad = check(c.in_seed, c.in_got, data, len);
    if (bad != len) {
        c.error = "byte " + std::to_string(c.in_got + bad) + " of " + std::to_string(c.in_len) +
                  " differs (lost, duplicated or reordered)";
        if (c.server) {
            // Tell the client where, then stop.
            c.prefix.assign(kVerdict, 0);
            put64(c.prefix.data(), c.in_got + bad + 1);
        }
        return false;
    }
    c.in_got += len;
    (void)o;
    return true;
}

// Reads what is there; false on error. Sets in_eof at end of stream.
bool pump_in(Conn& c, const Options& o) {
    std::uint8_t buf[65536];
    if (c.read_paused) {
        if (Clock::now() < c.read_resume) return true;
        c.read_paused = false;
        c.last_read = Clock::now();  // the pause was ours, not a stall
    }
    while (!c.in_eof) {
        if (o.read_pause_every && c.in_got >= c.next_read_pause) {
            if (c.next_read_pause > 0) {
                c.next_read_pause += o.read_pause_every;
                c.read_paused = true;
                c.read_resume = Clock::now() + std::chrono::milliseconds(o.read_pause_ms);
                return true;
            }
            c.next_read_pause = o.read_pause_every;
        }
        std::size_t want = sizeof(buf);
        if (o.reader == "fionread") {
            int pending = 0;
            if (ioctl(c.fd, FIONREAD, &pending) != 0) {
                c.error = std::string("FIONREAD: ") + std::strerror(errno);
                return false;
            }
            if (pending == 0) {
                // Nothing pending per FIONREAD. The peer may write between the ioctl and any
                // later look at the queue (on another CPU, or from the sender's own sendmsg on
                // the fast path), so "FIONREAD said 0, then recv returned data" proves nothing.
                // Race-free: peek; bytes seen by a peek stay queued (we are the only reader),
                // so a second FIONREAD must count at least those. Only that is a kernel error.
                ssize_t n = recv(c.fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
                if (n == 0) {
                    n = recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);  // consume the EOF
                    if (n != 0) {
                        c.error = "a peek saw EOF but recv returned " + std::to_string(n);
                        return false;
                    }
                    read_progress(c);
                    c.in_eof = true;
                    break;
                }
                if (n < 0 && errno == EAGAIN) return true;
                if (n < 0) {
                    c.error = std::string("recv(MSG_PEEK): ") + std::strerror(errno);
                    return false;
                }
                int again = 0;
                if (ioctl(c.fd, FIONREAD, &again) != 0) {
                    c.error = std::string("FIONREAD: ") + std::strerror(errno);
                    return false;
                }
                if (again < n) {
                    c.error = "FIONREAD reported " + std::to_string(again) + " while " +
                              std::to_string(n) + " bytes were queued (seen by MSG_PEEK first)";
                    return false;
                }
                ++c.fionread_raced;  // the bytes arrived after the first ioctl: not an error
                pending = again;
            }
            want = std::min<std::size_t>(static_cast<std::size_t>(pending), sizeof(buf));
            ssize_t n = recv(c.fd, buf, want, MSG_DONTWAIT);
            if (n < 0) {
                c.error = "FIONREAD reported " + std::to_string(pending) +
                          " but recv: " + std::strerror(errno);
                return false;
            }
            if (static_cast<std::size_t>(n) != want) {
                c.error = "FIONREAD reported " + std::to_string(pending) + " but recv returned " +
                          std::to_string(n);
                return false;
            }
            read_progress(c);
            if (!consume(c, buf, static_cast<std::size_t>(n), o)) return false;
            continue;
        }
        ssize_t n = recv(c.fd, buf, want, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN) return true;
            c.error = std::string("recv: ") + std::strerror(errno) + " after " +
                      std::to_string(c.in_got) + " bytes";
            return false;
        }
        read_progress(c);
        if (n == 0) {
            c.in_eof = true;
            break;
        }
        if (!consume(c, buf, static_cast<std::size_t>(n), o)) return false;
    }
    if (c.in_prefix_len < c.in_prefix_want || c.in_got != c.in_len) {
        c.error = "end of stream after " + std::to_string(c.in_got) + " of " +
                  std::to_string(c.in_len) + " bytes (lost, or the half-close overtook data)";
        return false;
    }
    return true;
}

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "meshlane_integrity: %s\nusage: meshlane_integrity server --listen IP:PORT "
                 "[--reader epoll|fionread]\n"
                 "       meshlane_integrity client --connect IP:PORT [--conns N] "
                 "[--concurrency C] [--seed S] [--min-bytes B] [--max-bytes B] [--max-msg B] "
                 "[--reply-bytes B | --reply-random] [--reader epoll|fionread] "
                 "[--timeout-ms MS]\n"
                 "       both: [--burst B --quiet-ms MS] [--read-pause-every B "
                 "--read-pause-ms MS]\n",
                 why);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    if (argc < 2) usage("missing mode");
    Options o;
    o.mode = argv[1];
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "--listen" || a == "--connect")
            o.address = next();
        else if (a == "--conns")
            o.conns = std::atoi(next().c_str());
        else if (a == "--concurrency")
            o.concurrency = std::atoi(next().c_str());
        else if (a == "--seed")
            o.seed = std::strtoull(next().c_str(), nullptr, 0);
        else if (a == "--min-bytes")
            o.min_bytes = std::strtoull(next().c_str(), nullptr, 0);
        else if (a == "--max-bytes")
            o.max_bytes = std::strtoull(next().c_str(), nullptr, 0);
        else if (a == "--max-msg")
            o.max_msg = std::max<std::uint64_t>(1, std::strtoull(next().c_str(), nullptr, 0));
        else if (a == "--reply-bytes")
            o.reply_bytes = std::strtoull(next().c_str(), nullptr, 0);
        else if (a == "--reply-random")
            o.reply_random = true;
        else if (a == "--reader")
            o.reader = next();
        else if (a == "--timeout-ms")
            o.timeout_ms = std::atoi(next().c_str());
        else if (a == "--burst")
            o.burst = std::strtoull(next().c_str(), nullptr, 0);
        else if (a == "--quiet-ms")
            o.quiet_ms = std::atoi(next().c_str());
        else if (a == "--read-pause-every")
            o.read_pause_every = std::strtoull(next().c_str(), nullptr, 0);
        else if (a == "--read-pause-ms")
            o.read_pause_ms = std::atoi(next().c_str());
        else
            usage(("unknown option " + a).c_str());
    }
    if (o.address.empty()) usage("missing address");
    if (o.reader != "epoll" && o.reader != "fionread") usage("--reader: epoll or fionread");
    if (o.min_bytes > o.max_bytes) usage("--min-bytes > --max-bytes");
    if ((o.burst == 0) != (o.quiet_ms == 0)) usage("--burst and --quiet-ms go together");
    if ((o.read_pause_every == 0) != (o.read_pause_ms == 0))
        usage("--read-pause-every and --read-pause-ms go together");
    return o;
}

// ---- server -------------------------------------------------------------------------------

int run_server(const Options& o) {
    sockaddr_in addr{};
    if (!parse_addr(o.address, addr)) usage("bad --listen");
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        listen(lfd, 4096) != 0) {
        std::perror("meshlane_integrity: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    std::vector<epoll_event> events(256);
    std::set<Conn*> waiting;  // paused (--burst, --read-pause-every)
    auto service = [&](Conn* c) {
        bool ok = true;
        if (!c->in_eof) {
            ok = pump_in(*c, o);
            if (ok && c->in_eof) {
                // The whole stream and its half-close arrived: answer.
                c->prefix.assign(kVerdict, 0);
                put64(c->prefix.data() + 8, static_cast<std::uint64_t>(c->max_gap_ms * 1000));
                c->out_seed = c->in_seed ^ 0xa5a5a5a5a5a5a5a5ull;
                // The reply length travels in the seed's upper 24 bits: see client.
                c->out_len = c->in_seed >> 40;
                c->out_started = true;
                c->rng = c->in_seed;
            }
        }
        if (!ok && !c->prefix.empty()) {
            c->prefix_sent = 0;
            c->out_started = false;
            (void)pump_out(*c, o.max_msg, o);
            shutdown(c->fd, SHUT_WR);
            c->done = true;
        } else if (ok && c->out_started) {
            ok = pump_out(*c, o.max_msg, o);
            if (ok && c->out_shut) c->done = true;
        }
        if (!ok || c->done) {
            if (!ok) std::fprintf(stderr, "meshlane_integrity server: %s\n", c->error.c_str());
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr);
            close(c->fd);
            waiting.erase(c);
            delete c;
        } else if (paused(*c)) {
            waiting.insert(c);
        }
    };
    while (true) {
        int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()),
                           waiting.empty() ? -1 : 5);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; ++i) {
            if (events[static_cast<std::size_t>(i)].data.ptr == nullptr) {
                while (true) {
                    int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    auto* c = new Conn;
                    c->fd = fd;
                    c->server = true;
                    c->established = true;
                    c->in_prefix_want = kHeader;
                    epoll_event cev{};
                    cev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
                    cev.data.ptr = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            service(static_cast<Conn*>(events[static_cast<std::size_t>(i)].data.ptr));
        }
        // Connections whose quiet time or read pause is over get no epoll event: pump them.
        std::vector<Conn*> due;
        for (Conn* c : waiting)
            if (!paused(*c)) due.push_back(c);
        for (Conn* c : due) {
            waiting.erase(c);
            service(c);
        }
    }
}

// ---- client -------------------------------------------------------------------------------

int run_client(const Options& o) {
    sockaddr_in addr{};
    if (!parse_addr(o.address, addr)) usage("bad --connect");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    const auto start = Clock::now();
    std::uint64_t rng = splitmix(o.seed);
    int started = 0, active = 0, ok_count = 0, failed = 0;
    std::uint64_t bytes_up = 0, bytes_down = 0;
    double max_stall = 0;
    std::uint64_t server_max_gap_us = 0;
    std::uint64_t fionread_raced = 0;
    std::vector<std::string> errors;
    std::vector<std::unique_ptr<Conn>> conns;
    auto finish = [&](Conn& c) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        close(c.fd);
        c.done = true;
        --active;
        max_stall = std::max(max_stall, c.max_gap_ms);
        fionread_raced += c.fionread_raced;
        if (c.error.empty()) {
            ++ok_count;
            bytes_up += c.out_len;
            bytes_down += c.in_len;
            server_max_gap_us = std::max(server_max_gap_us, get64(c.in_prefix + 8));
        } else {
            ++failed;
            if (errors.size() < 10) errors.push_back(c.error);
        }
    };
    auto open_one = [&]() {
        auto c = std::make_unique<Conn>();
        rng = splitmix(rng);
        std::uint64_t span = o.max_bytes - o.min_bytes + 1;
        c->out_len = o.min_bytes + rng % span;
        rng = splitmix(rng);
        std::uint64_t reply = o.reply_random ? rng % (o.max_bytes + 1) : o.reply_bytes;
        reply = std::min<std::uint64_t>(reply, (1ull << 24) - 1);
        // Seed: the low 40 bits random, the upper 24 the reply length the server must send.
        c->out_seed = (rng & ((1ull << 40) - 1)) | (reply << 40);
        c->in_seed = c->out_seed ^ 0xa5a5a5a5a5a5a5a5ull;
        c->in_len = reply;
        c->in_prefix_want = kVerdict;
        c->rng = c->out_seed;
        c->prefix.assign(kHeader, 0);
        put64(c->prefix.data(), kMagic);
        put64(c->prefix.data() + 8, c->out_len);
        put64(c->prefix.data() + 16, c->out_seed);
        c->out_started = true;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ++started;
        ++active;
        if (c->fd < 0 || (connect(c->fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
                          errno != EINPROGRESS)) {
            c->error = std::string("connect: ") + std::strerror(errno);
            if (c->fd >= 0) close(c->fd);
            --active;
            ++failed;
            if (errors.size() < 10) errors.push_back(c->error);
            return;
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.ptr = c.get();
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        conns.push_back(std::move(c));
    };
    std::vector<epoll_event> events(1024);
    bool timed_out = false;
    while (started < o.conns || active > 0) {
        while (started < o.conns && active < o.concurrency) open_one();
        if (ms_since(start) > o.timeout_ms) {
            timed_out = true;
            break;
        }
        int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()),
                           o.burst || o.read_pause_every ? 5 : 100);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; ++i) {
            auto& ev = events[static_cast<std::size_t>(i)];
            auto* c = static_cast<Conn*>(ev.data.ptr);
            if (c->done) continue;
            if (!c->established) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    c->error = std::string("connect: ") + std::strerror(err);
                    finish(*c);
                    continue;
                }
                c->established = true;
            }
            bool ok = pump_out(*c, o.max_msg, o);
            if (ok) ok = pump_in(*c, o);
            if (!ok || c->in_eof) finish(*c);
        }
        // Connections whose quiet time or read pause is over get no epoll event: pump them.
        if (o.burst || o.read_pause_every)
            for (auto& c : conns)
                if (!c->done && c->established && !paused(*c)) {
                    bool ok = pump_out(*c, o.max_msg, o);
                    if (ok) ok = pump_in(*c, o);
                    if (!ok || c->in_eof) finish(*c);
                }
        // A stream that stopped mid-way counts as stalled now, not only when it moves again.
        for (auto& c : conns)
            if (!c->done && c->any_read) max_stall = std::max(max_stall, ms_since(c->last_read));
    }
    if (timed_out) {
        for (auto& c : conns)
            if (!c->done) {
                c->error = "timed out after " + std::to_string(c->out_sent) + " bytes sent, " +
                           std::to_string(c->in_got) + " received";
                finish(*c);
            }
    }
    std::printf(
        "{\"connections\": %d, \"ok\": %d, \"failed\": %d, \"bytes_up\": %llu, "
        "\"bytes_down\": %llu, \"max_stall_ms\": %.1f, \"server_max_gap_ms\": %.1f, "
        "\"seconds\": %.2f, \"reader\": \"%s\", \"fionread_raced\": %llu, \"errors\": [",
        started, ok_count, failed, static_cast<unsigned long long>(bytes_up),
        static_cast<unsigned long long>(bytes_down), max_stall,
        static_cast<double>(server_max_gap_us) / 1000.0, ms_since(start) / 1000.0, o.reader.c_str(),
        static_cast<unsigned long long>(fionread_raced));
    for (std::size_t i = 0; i < errors.size(); ++i)
        std::printf("%s\"%s\"", i ? ", " : "", json_escape(errors[i]).c_str());
    std::printf("]}\n");
    return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    Options o = parse(argc, argv);
    raise_fd_limit();
    if (o.mode == "server") return run_server(o);
    if (o.mode == "client") return run_client(o);
    usage("mode must be server or client");
}
