/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* The context of run_fastpath_msg_decide (fastpath_state.bpf.c): facts in, the step and which
 * facts the transition needs out. */
#ifndef MESHLANE_TESTS_BPF_FASTPATH_STATE_TEST_ABI_H
#define MESHLANE_TESTS_BPF_FASTPATH_STATE_TEST_ABI_H

#include "features/fastpath/fastpath_state.h"

struct fastpath_state_case {
    struct fastpath_msg_facts facts;
    struct fastpath_msg_step step;
    __u32 needs_all_read;
    __u32 needs_peer_queue;
};

#endif
