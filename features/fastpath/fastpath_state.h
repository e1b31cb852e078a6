/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The per-message transition of fastpath_msg (fastpath_sockmap.bpf.c: "Flow control", top of
 * that file), as a pure function over facts the program has read from the kernel. The program
 * applies the result (compare-and-swap of the direction's spilled flag, counters, redirect or
 * SK_PASS); tests/bpf/fastpath_state.bpf.c runs the BPF build of this function with
 * BPF_PROG_RUN and compares it with the host build and with the rules below, for every
 * combination of facts (sk_msg programs themselves have no BPF_PROG_RUN).
 */
#ifndef MESHLANE_FASTPATH_STATE_H
#define MESHLANE_FASTPATH_STATE_H

#include "features/fastpath/fastpath_abi.h"
#include "meshlane/pure_inline.h"

/* What fastpath_msg knows when it judges one message of direction S -> R. Each kernel fact is
 * read only when fastpath_msg_needs_*() says the transition looks at it (both cost reads of
 * kernel memory on every message); otherwise it is 0. */
struct fastpath_msg_facts {
    __u32 state;             /* enum meshlane_fastpath_conn_state, UNDECIDED already settled */
    __u8 spilled;            /* S's spilled_from_* flag */
    __u8 peer_over_limit;    /* R has > MESHLANE_FASTPATH_MAX_QUEUED_BYTES unread on its psock */
    __u8 tcp_bytes_all_read; /* S's write_seq == R's copied_seq, R still the peer, no writer
                                pending on S (tcp_bytes_all_read in the program) */
    __u8 reserved;
};

enum fastpath_flag_change {
    FASTPATH_FLAG_KEEP = 0,
    FASTPATH_FLAG_SPILL,  /* compare-and-swap S's flag 0 -> 1; count SPILLED_TO_TCP if it won */
    FASTPATH_FLAG_RETURN, /* compare-and-swap S's flag 1 -> 0; count RETURNED_TO_FAST_PATH if it
                             won */
};

struct fastpath_msg_step {
    __u8 redirect;    /* 1: redirect to R's psock (BPF_F_INGRESS); 0: SK_PASS, TCP path */
    __u8 flag_change; /* enum fastpath_flag_change */
    __u8 reserved[2];
};

MESHLANE_INLINE int fastpath_msg_needs_all_read(const struct fastpath_msg_facts* f) {
    return f->state == MESHLANE_FASTPATH_ACCELERATED && f->spilled;
}

MESHLANE_INLINE int fastpath_msg_needs_peer_queue(const struct fastpath_msg_facts* f) {
    return f->state == MESHLANE_FASTPATH_ACCELERATED && !f->spilled;
}

/* Not ACCELERATED: TCP for good. ACCELERATED, this direction redirected: spill when R is over
 * the limit, else redirect. Spilled: stay on TCP until R read every TCP byte, then return. */
MESHLANE_INLINE struct fastpath_msg_step fastpath_msg_decide(const struct fastpath_msg_facts* f) {
    struct fastpath_msg_step step = {.redirect = 0, .flag_change = FASTPATH_FLAG_KEEP};
    if (f->state != MESHLANE_FASTPATH_ACCELERATED) return step;
    if (f->spilled) {
        if (!f->tcp_bytes_all_read) return step;
        step.flag_change = FASTPATH_FLAG_RETURN;
        step.redirect = 1;
        return step;
    }
    if (f->peer_over_limit) {
        step.flag_change = FASTPATH_FLAG_SPILL;
        return step;
    }
    step.redirect = 1;
    return step;
}

#endif /* MESHLANE_FASTPATH_STATE_H */
