// Kernel self-test of the sk_msg fast path, run once at agent start (docs/fastpath.md). Kernels
// changed psock behaviour more than once (FIONREAD reporting only part of the queue, lost epoll
// wake-ups with 20-80 s stalls); acceleration is only switched on where this kernel passes.
//
// In a private cgroup and network namespace (a forked child, so the agent's own netns and cgroup
// are never touched) it loads a private, unpinned instance of fastpath_sockmap, makes one
// accelerated loopback connection and checks: bytes arrive intact both ways, FIONREAD (SIOCINQ)
// reports exactly the pending bytes, epoll wakes the reader within a bound, a half-close reaches
// the reader after the last byte, and the bytes really took the sk_msg redirect. A second,
// not-accelerated connection (the app writes before any proxy socket joined) must leave the
// SOCKHASH at that write: on 6.18 FIONREAD of a socket with a psock counts only the psock queue,
// so the TCP-borne reply would read as 0 pending otherwise.
// Then the blocking-reader patterns (fastpath_selftest_readers.h) run on accelerated
// connections: where a blocking recv() gets EAGAIN (the kernel's hazard, docs/fastpath.md
// "Blocking readers"), they run again under MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY and must
// see none; the agent then loads the datapath with that policy.
#pragma once

#include <cstdint>
#include <string>

#include "features/fastpath/fastpath_abi.h"
#include "features/fastpath/fastpath_selftest_readers.h"

namespace meshlane {

struct FastpathSelftestOptions {
    std::string cgroup2_mount;
    // Fail without running (tests, and operators who want acceleration off node-wide).
    bool force_fail = false;
    std::uint32_t epoll_bound_ms = 1000;
};

struct FastpathSelftestResult {
    bool passed = false;
    std::string reason;  // why it failed, or what passed
    std::uint64_t redirected_bytes = 0;
    // Blocking recv() on an accelerated socket got EAGAIN in at least one reader pattern
    // (fastpath_selftest_readers.h): then only proxy sockets may be accelerated.
    bool blocking_reader_hazard = false;
    ReaderPatternResults probe;  // EAGAIN per pattern with every socket accelerated
    // enum meshlane_fastpath_policy the datapath must be loaded with (valid when passed)
    std::uint32_t reader_policy = MESHLANE_FASTPATH_POLICY_ANY_SOCKET;
};

FastpathSelftestResult run_fastpath_selftest(const FastpathSelftestOptions& options);

// The environment knob: MESHLANE_FASTPATH_SELFTEST=fail forces a failure.
bool fastpath_selftest_forced_to_fail();
// MESHLANE_FASTPATH_READER_POLICY=any-socket: accelerate app sockets even where the self-test
// found the blocking-reader hazard (tests of the redirect itself, whose readers use epoll or
// select; never for workloads with blocking readers).
bool fastpath_reader_policy_forced_any();

}  // namespace meshlane
