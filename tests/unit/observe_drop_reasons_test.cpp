// Drop-reason names from the running kernel's BTF (no table to drift from the kernel).
#include <gtest/gtest.h>
#include <unistd.h>

#include "agent/observe/drop_reasons.h"

namespace meshlane {
namespace {

class RunningKernelDropReasons : public ::testing::Test {
  protected:
    void SetUp() override {
        if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0)
            GTEST_SKIP() << "no /sys/kernel/btf/vmlinux on this machine";
        auto loaded = DropReasonNames::load_running_kernel();
        ASSERT_TRUE(loaded) << loaded.error().message;
        names_ = std::move(*loaded);
    }
    DropReasonNames names_;
};

TEST_F(RunningKernelDropReasons, WellKnownReasonsResolveBothWays) {
    for (const char* name : {"NETFILTER_DROP", "NO_SOCKET", "NOT_SPECIFIED", "TCP_CSUM"}) {
        auto value = names_.value_of(name);
        ASSERT_TRUE(value) << name;
        EXPECT_EQ(names_.name(*value), name);
    }
    EXPECT_GT(names_.size(), 50u);
}

TEST_F(RunningKernelDropReasons, AcceptsThePrefixAndAnyCase) {
    EXPECT_EQ(names_.value_of("SKB_DROP_REASON_NETFILTER_DROP"), names_.value_of("NETFILTER_DROP"));
    EXPECT_EQ(names_.value_of("netfilter_drop"), names_.value_of("NETFILTER_DROP"));
    EXPECT_FALSE(names_.value_of("NOT_A_REASON"));
    EXPECT_FALSE(names_.value_of("MAX"));  // a bound, not a reason
}

TEST_F(RunningKernelDropReasons, UnknownValuesAreShownNotHidden) {
    EXPECT_EQ(names_.name(0xffff), "UNKNOWN:65535");
    // A subsystem reason (bits 16+): "<SUBSYSTEM>:<code>" when the kernel names the subsystem.
    const std::string subsystem_reason = names_.name((1u << 16) | 5);
    EXPECT_TRUE(subsystem_reason.ends_with(":5") || subsystem_reason.starts_with("UNKNOWN:"))
        << subsystem_reason;
}

}  // namespace
}  // namespace meshlane
