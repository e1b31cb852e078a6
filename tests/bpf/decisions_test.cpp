// The BPF build of the capture decisions against the host build, for every combination of facts
// (tests/bpf/decisions.bpf.c). Needs root (BPF_PROG_RUN of a syscall program); skipped otherwise.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "decisions.skel.h"
#include "decisions_test_abi.h"

namespace {

class BpfDecisions : public ::testing::Test {
  protected:
    void SetUp() override {
        if (::geteuid() != 0) GTEST_SKIP() << "BPF_PROG_RUN needs root";
        skel_ = decisions_bpf__open_and_load();
        ASSERT_NE(skel_, nullptr) << "load tests/bpf/decisions.bpf.c: " << std::strerror(errno);
    }
    void TearDown() override { decisions_bpf__destroy(skel_); }

    template <typename Case>
    Case run(const bpf_program* program, Case c) {
        LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &c, .ctx_size_in = sizeof c);
        const int rc = bpf_prog_test_run_opts(bpf_program__fd(program), &opts);
        EXPECT_EQ(rc, 0) << std::strerror(-rc);
        return c;
    }

    // Every fact is a 0/1 byte; walks all 2^n combinations of a facts struct of n bytes.
    template <typename Facts, typename Check>
    static void for_each_combination(Check check) {
        static_assert(sizeof(Facts) <= 20, "2^n combinations: keep the facts small");
        for (unsigned bits = 0; bits < (1u << sizeof(Facts)); ++bits) {
            Facts facts{};
            auto* bytes = reinterpret_cast<unsigned char*>(&facts);
            for (unsigned i = 0; i < sizeof(Facts); ++i) bytes[i] = (bits >> i) & 1u;
            check(facts, bits);
        }
    }

    decisions_bpf* skel_ = nullptr;
};

TEST_F(BpfDecisions, OutboundMatchesHostBuildForEveryCombination) {
    unsigned cases = 0;
    for_each_combination<outbound_facts>([&](const outbound_facts& facts, unsigned bits) {
        __u32 host_counter = MESHLANE_REDIRECT_COUNTER_MAX;
        const auto host_verdict = outbound_decide(&facts, &host_counter);
        const auto kernel = run(skel_->progs.run_outbound_decide, outbound_case{.facts = facts});
        ASSERT_EQ(kernel.verdict, static_cast<__u32>(host_verdict)) << "facts bits " << bits;
        ASSERT_EQ(kernel.counter, host_counter) << "facts bits " << bits;
        ++cases;
    });
    EXPECT_EQ(cases, 1u << sizeof(outbound_facts));
}

TEST_F(BpfDecisions, InboundMatchesHostBuildForEveryCombination) {
    for_each_combination<inbound_facts>([&](const inbound_facts& facts, unsigned bits) {
        __u32 host_counter = MESHLANE_REDIRECT_COUNTER_MAX;
        const auto host_verdict = inbound_decide(&facts, &host_counter);
        const auto kernel = run(skel_->progs.run_inbound_decide, inbound_case{.facts = facts});
        ASSERT_EQ(kernel.verdict, static_cast<__u32>(host_verdict)) << "facts bits " << bits;
        ASSERT_EQ(kernel.counter, host_counter) << "facts bits " << bits;
    });
}

// A spot check that the kernel really ran the program (not a zeroed context echoed back).
TEST_F(BpfDecisions, KernelRunWritesTheVerdict) {
    outbound_case c{};
    c.facts.dst_cidr_included = 1;
    c.verdict = 0xffffffff;
    c.counter = 0xffffffff;
    const auto out = run(skel_->progs.run_outbound_decide, c);
    EXPECT_EQ(out.verdict, static_cast<__u32>(OUTBOUND_REDIRECT));
    EXPECT_EQ(out.counter, static_cast<__u32>(MESHLANE_CNT_OUTBOUND_REDIRECTED));
}

}  // namespace
