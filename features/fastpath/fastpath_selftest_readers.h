// The blocking-reader part of the fast path's kernel self-test (fastpath_selftest.cpp,
// docs/fastpath.md "Blocking readers"). A socket with a psock is read by tcp_bpf_recvmsg, which
// (6.18, and every tree checked up to 7.0) returns -EAGAIN to a *blocking* recv() that a wake-up
// finds with both of its queues empty. These patterns make such wake-ups on accelerated
// loopback connections, with blocking readers, and count the EAGAINs they get:
//   own_fin_ack     a reader blocked in recv() while its own half-close (FIN) is acknowledged
//   signal          a reader blocked in recv() gets a signal (SA_RESTART: TCP restarts it)
//   half_close      sendall(1000 B); shutdown(SHUT_WR); recv(): the 20/20 case
//   burst_half_close 8 MiB into a reader that starts 200 ms late, SHUT_WR, then recv()
//   full_duplex     8 MiB each way at once, blocking writer and reader threads on both ends
//   event_loop      O_NONBLOCK client, poll() before each recv(), half-close before the reply
// Each pattern checks its bytes; a reader that gets EAGAIN retries (as a tolerant app would),
// so a pattern finishes and reports how often it happened.
//
// Runs inside the self-test's forked child (its own netns and cgroup), after the basic checks.
#pragma once

#include <cstdint>
#include <string>

namespace meshlane {

enum class ReaderPattern : unsigned {
    kOwnFinAck = 0,
    kSignal,
    kHalfClose,
    kBurstHalfClose,
    kFullDuplex,
    kEventLoop,
    kCount
};
const char* reader_pattern_name(ReaderPattern pattern);

struct ReaderPatternResults {
    std::uint32_t eagain[static_cast<unsigned>(ReaderPattern::kCount)] = {};
    std::uint32_t total_eagain() const;
    // "own_fin_ack 1, signal 1, ..." (only the patterns that saw EAGAIN; "none" otherwise)
    std::string text() const;
};

// Runs every pattern against a listener on 127.0.0.1:port (bound in the caller's netns, its
// accepted sockets in the self-test cgroup). "" on success (bytes intact everywhere), else why.
std::string run_reader_patterns(int listener, std::uint16_t port, ReaderPatternResults& results);

}  // namespace meshlane
