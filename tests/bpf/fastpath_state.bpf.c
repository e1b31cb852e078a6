/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The fast path's per-message transition (features/fastpath/fastpath_state.h, applied by
 * fastpath_msg) compiled for the kernel, run with BPF_PROG_RUN on crafted facts
 * (tests/bpf/fastpath_state_test.cpp). sk_msg programs have no BPF_PROG_RUN, so the transition
 * is tested here as a syscall program, like the capture decisions in decisions.bpf.c.
 */
// clang-format off
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "features/fastpath/fastpath_state.h"
// clang-format on

#include "fastpath_state_test_abi.h"

SEC("syscall")
int run_fastpath_msg_decide(struct fastpath_state_case* c) {
    c->step = fastpath_msg_decide(&c->facts);
    c->needs_all_read = fastpath_msg_needs_all_read(&c->facts);
    c->needs_peer_queue = fastpath_msg_needs_peer_queue(&c->facts);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
