// The fast path's spill/return transition (features/fastpath/fastpath_state.h), BPF build
// against host build and against the rules of fastpath_sockmap.bpf.c ("Flow control"), for
// every combination of facts, and one direction walked through spill and return.
// Needs root (BPF_PROG_RUN of a syscall program); skipped otherwise.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "fastpath_sockmap.skel.h"
#include "fastpath_state.skel.h"
#include "fastpath_state_test_abi.h"

namespace {

// The rules, written out independently of fastpath_msg_decide: {redirect, flag change}.
fastpath_msg_step rule(const fastpath_msg_facts& f) {
    auto step = [](bool redirect, fastpath_flag_change change) {
        fastpath_msg_step s{};
        s.redirect = redirect;
        s.flag_change = change;
        return s;
    };
    if (f.state != MESHLANE_FASTPATH_ACCELERATED) return step(false, FASTPATH_FLAG_KEEP);
    if (!f.spilled && !f.peer_over_limit) return step(true, FASTPATH_FLAG_KEEP);
    if (!f.spilled) return step(false, FASTPATH_FLAG_SPILL);
    if (!f.tcp_bytes_all_read) return step(false, FASTPATH_FLAG_KEEP);
    return step(true, FASTPATH_FLAG_RETURN);
}

// Every state the map can hold (3: the retired SPILLED) times every 0/1 fact.
std::vector<fastpath_msg_facts> every_combination() {
    std::vector<fastpath_msg_facts> all;
    for (__u32 state :
         std::initializer_list<__u32>{MESHLANE_FASTPATH_UNDECIDED, MESHLANE_FASTPATH_ACCELERATED,
                                      MESHLANE_FASTPATH_TCP_ONLY, 3u})
        for (unsigned bits = 0; bits < 8; ++bits) {
            fastpath_msg_facts f{};
            f.state = state;
            f.spilled = bits & 1u;
            f.peer_over_limit = (bits >> 1) & 1u;
            f.tcp_bytes_all_read = (bits >> 2) & 1u;
            all.push_back(f);
        }
    return all;
}

std::string describe(const fastpath_msg_facts& f) {
    return "state " + std::to_string(f.state) + " spilled " + std::to_string(f.spilled) + " over " +
           std::to_string(f.peer_over_limit) + " all_read " + std::to_string(f.tcp_bytes_all_read);
}

class BpfFastpathState : public ::testing::Test {
  protected:
    void SetUp() override {
        if (::geteuid() != 0) GTEST_SKIP() << "BPF_PROG_RUN needs root";
        skel_ = fastpath_state_bpf__open_and_load();
        ASSERT_NE(skel_, nullptr) << "load tests/bpf/fastpath_state.bpf.c: "
                                  << std::strerror(errno);
    }
    void TearDown() override { fastpath_state_bpf__destroy(skel_); }

    fastpath_state_case run(const fastpath_msg_facts& facts) {
        fastpath_state_case c{};
        c.facts = facts;
        c.step.redirect = 0xff;  // proves the kernel wrote the answer
        c.step.flag_change = 0xff;
        LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &c, .ctx_size_in = sizeof c);
        const int rc =
            bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.run_fastpath_msg_decide), &opts);
        EXPECT_EQ(rc, 0) << std::strerror(-rc);
        return c;
    }

    fastpath_state_bpf* skel_ = nullptr;
};

TEST_F(BpfFastpathState, MatchesHostBuildAndRulesForEveryCombination) {
    unsigned cases = 0;
    for (const auto& facts : every_combination()) {
        const auto kernel = run(facts);
        const auto host = fastpath_msg_decide(&facts);
        const auto want = rule(facts);
        ASSERT_EQ(kernel.step.redirect, host.redirect) << describe(facts);
        ASSERT_EQ(kernel.step.flag_change, host.flag_change) << describe(facts);
        ASSERT_EQ(host.redirect, want.redirect) << describe(facts);
        ASSERT_EQ(host.flag_change, want.flag_change) << describe(facts);
        ASSERT_EQ(kernel.needs_all_read,
                  static_cast<__u32>(fastpath_msg_needs_all_read(&facts) != 0))
            << describe(facts);
        ASSERT_EQ(kernel.needs_peer_queue,
                  static_cast<__u32>(fastpath_msg_needs_peer_queue(&facts) != 0))
            << describe(facts);
        ++cases;
    }
    EXPECT_EQ(cases, 32u);
}

// fastpath_msg reads a kernel fact only when fastpath_msg_needs_*() says so (else it passes 0):
// the transition must not depend on a fact it does not declare.
TEST_F(BpfFastpathState, NeverLooksAtAFactItDoesNotNeed) {
    for (const auto& facts : every_combination()) {
        const auto base = run(facts).step;
        if (!facts.spilled || facts.state != MESHLANE_FASTPATH_ACCELERATED) {
            EXPECT_FALSE(run(facts).needs_all_read) << describe(facts);
        }
        if (!run(facts).needs_all_read) {
            auto flipped = facts;
            flipped.tcp_bytes_all_read ^= 1u;
            const auto other = run(flipped).step;
            EXPECT_EQ(other.redirect, base.redirect) << describe(facts);
            EXPECT_EQ(other.flag_change, base.flag_change) << describe(facts);
        }
        if (!run(facts).needs_peer_queue) {
            auto flipped = facts;
            flipped.peer_over_limit ^= 1u;
            const auto other = run(flipped).step;
            EXPECT_EQ(other.redirect, base.redirect) << describe(facts);
            EXPECT_EQ(other.flag_change, base.flag_change) << describe(facts);
        }
    }
}

// One direction of an accelerated connection, message by message, with the flag applied as
// fastpath_msg applies it: redirected, then the peer falls behind (spill, TCP), stays on TCP
// until the peer read every TCP byte, then returns to the fast path.
TEST_F(BpfFastpathState, DirectionSpillsAndReturns) {
    struct Message {
        bool peer_over_limit, tcp_bytes_all_read;
        bool redirected;
        fastpath_flag_change change;
    };
    const Message walk[] = {
        {false, false, true, FASTPATH_FLAG_KEEP},   // under the limit: fast path
        {true, false, false, FASTPATH_FLAG_SPILL},  // R > 4 MiB behind: spill, this one on TCP
        {true, false, false, FASTPATH_FLAG_KEEP},   // spilled, TCP bytes unread: TCP
        {false, false, false, FASTPATH_FLAG_KEEP},  // queue drained, TCP not yet read: TCP
        {false, true, true, FASTPATH_FLAG_RETURN},  // every TCP byte read: back, redirected
        {false, false, true, FASTPATH_FLAG_KEEP},   // fast path again
    };
    __u32 flag = 0;
    for (std::size_t i = 0; i < std::size(walk); ++i) {
        fastpath_msg_facts facts{};
        facts.state = MESHLANE_FASTPATH_ACCELERATED;
        facts.spilled = flag != 0;
        facts.peer_over_limit = fastpath_msg_needs_peer_queue(&facts) && walk[i].peer_over_limit;
        facts.tcp_bytes_all_read =
            fastpath_msg_needs_all_read(&facts) && walk[i].tcp_bytes_all_read;
        const auto step = run(facts).step;
        EXPECT_EQ(step.redirect, walk[i].redirected) << "message " << i;
        EXPECT_EQ(step.flag_change, walk[i].change) << "message " << i;
        if (step.flag_change == FASTPATH_FLAG_SPILL) flag = 1;
        if (step.flag_change == FASTPATH_FLAG_RETURN) flag = 0;
    }
    EXPECT_EQ(flag, 0u);
}

// The real fastpath_msg (and fastpath_sockops) with the transition inlined still pass the
// verifier. Loaded with every map private to the test (pin paths cleared), never attached.
TEST(BpfFastpathObject, RealProgramsPassTheVerifier) {
    if (::geteuid() != 0) GTEST_SKIP() << "loading BPF programs needs root";
    fastpath_sockmap_bpf* skel = fastpath_sockmap_bpf__open();
    ASSERT_NE(skel, nullptr) << std::strerror(errno);
    bpf_map* map;
    bpf_object__for_each_map(map, skel->obj) EXPECT_EQ(bpf_map__set_pin_path(map, nullptr), 0);
    for (auto* small : {skel->maps.workload_by_netns, skel->maps.fastpath_workload_kinds,
                        skel->maps.fastpath_pod_addrs})
        bpf_map__set_max_entries(small, 4);
    bpf_map__set_max_entries(skel->maps.fastpath_counters, 4 * MESHLANE_FASTPATH_COUNTER_STRIDE);
    bpf_map__set_max_entries(skel->maps.fastpath_peers, 16);
    bpf_map__set_max_entries(skel->maps.fastpath_conns, 16);
    EXPECT_EQ(fastpath_sockmap_bpf__load(skel), 0) << "verifier rejected fastpath_sockmap";
    EXPECT_GE(bpf_program__fd(skel->progs.fastpath_msg), 0);
    fastpath_sockmap_bpf__destroy(skel);
}

}  // namespace
