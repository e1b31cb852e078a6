// A program rejected by the verifier is named, with the tail of its log.
#include "agent/loader/libbpf_log.h"

#include <gtest/gtest.h>

namespace meshlane {
namespace {

TEST(LibbpfLog, LastLines) {
    EXPECT_EQ(last_lines("a\nb\nc\n", 2), "b\nc");
    EXPECT_EQ(last_lines("a\nb\nc", 5), "a\nb\nc");
    EXPECT_EQ(last_lines("", 3), "");
}

TEST(LibbpfLog, RejectionNamesProgramReasonAndTail) {
    std::optional<ProgramRejection> rejection;
    // What libbpf 1.1 prints (one callback per message).
    EXPECT_TRUE(note_libbpf_message(
        "libbpf: prog 'redirect_connect4': BPF program load failed: Permission denied", rejection));
    std::string log = "libbpf: prog 'redirect_connect4': -- BEGIN PROG LOAD LOG --\n";
    for (int i = 0; i < 100; ++i) log += "insn " + std::to_string(i) + "\n";
    log += "R1 invalid mem access 'scalar'\nprocessed 42 insns\n-- END PROG LOAD LOG --";
    EXPECT_TRUE(note_libbpf_message(log, rejection, 3));
    EXPECT_FALSE(
        note_libbpf_message("libbpf: failed to load object 'redirect_outbound_bpf'", rejection));
    ASSERT_TRUE(rejection);
    EXPECT_EQ(rejection->program, "redirect_connect4");
    EXPECT_EQ(rejection->reason, "Permission denied");
    EXPECT_EQ(rejection->log_tail, "insn 99\nR1 invalid mem access 'scalar'\nprocessed 42 insns");
    const std::string text = rejection->describe();
    EXPECT_NE(text.find("program redirect_connect4 was rejected"), std::string::npos) << text;
    EXPECT_NE(text.find("invalid mem access"), std::string::npos) << text;
}

TEST(LibbpfLog, UnrelatedMessagesIgnored) {
    std::optional<ProgramRejection> rejection;
    EXPECT_FALSE(note_libbpf_message("libbpf: map 'port_rules': found type = 1.", rejection));
    EXPECT_FALSE(
        note_libbpf_message("libbpf: prog 'redirect_sockops': relo #3: matching", rejection));
    EXPECT_FALSE(rejection);
}

TEST(LibbpfLog, TakeClears) { EXPECT_FALSE(take_program_rejection()); }

}  // namespace
}  // namespace meshlane
