/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The capture decisions of include/meshlane/redirect_rules.h compiled for the kernel, run with
 * BPF_PROG_RUN on crafted facts (tests/bpf/decisions_test.cpp). The same header is compiled into
 * the host unit tests; running the BPF build too proves that clang's BPF code generation and the
 * verifier see the same decision the unit tests check, fact combination by fact combination —
 * as Cilium's bpf/tests do, without namespaces or sockets.
 */
// clang-format off
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "meshlane/redirect_rules.h"
// clang-format on

#include "decisions_test_abi.h"

SEC("syscall")
int run_outbound_decide(struct outbound_case* c) {
    __u32 counter = MESHLANE_REDIRECT_COUNTER_MAX;
    c->verdict = outbound_decide(&c->facts, &counter);
    c->counter = counter;
    return 0;
}

SEC("syscall")
int run_inbound_decide(struct inbound_case* c) {
    __u32 counter = MESHLANE_REDIRECT_COUNTER_MAX;
    c->verdict = inbound_decide(&c->facts, &counter);
    c->counter = counter;
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
