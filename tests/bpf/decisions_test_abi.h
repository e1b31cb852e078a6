/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* The context of the decision programs in decisions.bpf.c: facts in, verdict and counter out. */
#ifndef MESHLANE_TESTS_BPF_DECISIONS_TEST_ABI_H
#define MESHLANE_TESTS_BPF_DECISIONS_TEST_ABI_H

#include "meshlane/redirect_rules.h"

struct outbound_case {
    struct outbound_facts facts;
    __u32 verdict;
    __u32 counter;
};

struct inbound_case {
    struct inbound_facts facts;
    __u32 verdict;
    __u32 counter;
};

#endif
