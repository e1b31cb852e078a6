/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Shared by observe_tls_wire.bpf.c and observe_tls_libssl.bpf.c: each object declares its own
 * tls_stats array and tls_events ring buffer (the agent reads both, as two sources of one
 * per-workload aggregate) and uses these helpers to count a finished handshake.
 */
#ifndef MESHLANE_BPF_OBSERVE_TLS_COMMON_H
#define MESHLANE_BPF_OBSERVE_TLS_COMMON_H

#include "observe_common.h"
// clang-format off
#include "meshlane/tls_abi.h"
// clang-format on

/* ARRAY indexed workload_id * MESHLANE_TLS_SOURCE_MAX + source; sized by the agent. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT* MESHLANE_TLS_SOURCE_MAX);
    __type(key, __u32);
    __type(value, struct tls_stats);
} tls_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, MESHLANE_TLS_EVENTS_BYTES);
} tls_events SEC(".maps");

/* Counts one outcome; entries owned by (workload id, netns cookie) as connect_stats. */
static __always_inline void tls_count(__u32 workload_id, __u32 source, __u64 cookie, __u8 outcome,
                                      __u64 latency_ns) {
    __u32 index = workload_id * MESHLANE_TLS_SOURCE_MAX + source;
    struct tls_stats* stats = bpf_map_lookup_elem(&tls_stats, &index);
    if (!stats) return;
    if (stats->netns_cookie != cookie) {
        __builtin_memset(stats, 0, sizeof(*stats));
        stats->netns_cookie = cookie;
    }
    switch (outcome) {
        case MESHLANE_TLS_OK: {
            __u64 us = latency_ns / 1000;
            __u32 bucket = log2_bucket(us);
            if (bucket < MESHLANE_HIST_BUCKETS)
                __sync_fetch_and_add(&stats->latency_hist[bucket], 1);
            __sync_fetch_and_add(&stats->latency_sum_us, us);
            __sync_fetch_and_add(&stats->completed, 1);
            break;
        }
        case MESHLANE_TLS_ALERT:
            __sync_fetch_and_add(&stats->alerts, 1);
            break;
        case MESHLANE_TLS_RESET:
            __sync_fetch_and_add(&stats->resets, 1);
            break;
        case MESHLANE_TLS_CLOSED:
            __sync_fetch_and_add(&stats->closed, 1);
            break;
        default:
            __sync_fetch_and_add(&stats->errors, 1);
            break;
    }
}

#endif /* MESHLANE_BPF_OBSERVE_TLS_COMMON_H */
