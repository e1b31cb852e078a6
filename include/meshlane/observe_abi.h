/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The structs and constants that cross the BPF / agent boundary for the observability datapath
 * (bpf/observe_connect.bpf.c, bpf/observe_drops.bpf.c, agent/observe/). Defined once here. Every
 * struct is a map value or a ring-buffer record, so layouts are explicit (no implicit padding)
 * and must only grow at the end.
 */
#ifndef MESHLANE_OBSERVE_ABI_H
#define MESHLANE_OBSERVE_ABI_H

#ifndef __BPF__
#include <linux/types.h>
#endif

/* Latency histograms are log2 of microseconds: bucket 0 holds [0, 2) us, bucket i >= 1 holds
 * [2^i, 2^(i+1)) us, the last bucket everything above. 2^31 us is ~36 minutes. */
#define MESHLANE_HIST_BUCKETS 32

/* Which connect a histogram describes. The app's connect is the one the redirect sent to its
 * proxy (destination port == the workload's outbound_port); everything else from the pod
 * (the proxy's upstream connects, the inbound proxy's local forward, excluded traffic) is
 * "upstream". */
enum meshlane_connect_side { MESHLANE_SIDE_APP = 0, MESHLANE_SIDE_UPSTREAM = 1, MESHLANE_SIDE_MAX };

/* Value of connect_stats (ARRAY indexed workload_id * MESHLANE_SIDE_MAX + side). Updated with
 * atomic adds. Workload ids are reused after an unenroll: an entry whose netns_cookie is not the
 * current workload's is reset by the first update of the new one, and ignored by the agent. */
struct connect_stats {
    __u64 netns_cookie;                        /* the workload these totals belong to */
    __u64 latency_hist[MESHLANE_HIST_BUCKETS]; /* established connects only */
    __u64 latency_sum_us;
    __u64 established;
    __u64 refused;        /* SYN_SENT -> CLOSE after an RST was received */
    __u64 timed_out;      /* SYN_SENT -> CLOSE with ETIMEDOUT: SYN retries exhausted */
    __u64 other_failures; /* SYN_SENT -> CLOSE otherwise: ICMP errors, closed by the app */
    __u64 syn_retransmits;
    /* bpf_ktime_get_ns() of the outcomes (0 = never), so the diagnosis dates an episode
     * exactly even when the bounded event ring lost its oldest events. */
    __u64 refused_first_ns;
    __u64 refused_last_ns;
    __u64 established_last_ns;
    __u64 failed_last_ns; /* any failure: refused, timed out or other */
    /* connect() failed before a SYN left because no local port was free (EADDRNOTAVAIL:
     * ephemeral port exhaustion); also counted in other_failures. */
    __u64 no_local_port;
    __u64 no_local_port_last_ns;
};

/* Value of tcp_counters (ARRAY indexed by workload_id); netns_cookie as in connect_stats. */
struct tcp_counters {
    __u64 netns_cookie;
    __u64 retransmits;        /* tcp:tcp_retransmit_skb outside SYN_SENT */
    __u64 syn_retransmits;    /* tcp:tcp_retransmit_skb in SYN_SENT */
    __u64 synack_retransmits; /* tcp:tcp_retransmit_synack */
    __u64 resets_sent;        /* tcp:tcp_send_reset */
    __u64 resets_received;    /* tcp:tcp_receive_reset */
};

/* Outcome of one connect in a connect_event. */
enum meshlane_connect_outcome {
    MESHLANE_CONNECT_ESTABLISHED = 1, /* reported only when slower than the threshold */
    MESHLANE_CONNECT_REFUSED = 2,
    MESHLANE_CONNECT_TIMED_OUT = 3,
    MESHLANE_CONNECT_FAILED_OTHER = 4, /* see error; 0 when the app closed it while connecting */
};

#define MESHLANE_COMM_LEN 16

/* Record of the connect_events ring buffer: a slow or failed connect. */
struct connect_event {
    __u64 timestamp_ns; /* bpf_ktime_get_ns() at the outcome */
    __u64 latency_ns;   /* SYN sent -> outcome */
    __u64 netns_cookie;
    __u32 workload_id;
    __u32 pid; /* tgid of the process that called connect(), 0 when unknown */
    __u8 comm[MESHLANE_COMM_LEN];
    __u8 saddr[16]; /* v4-mapped for IPv4 */
    __u8 daddr[16];
    __u8 orig_daddr[16]; /* the app's original destination (app side), else zero */
    __u16 sport;         /* host order */
    __u16 dport;
    __u16 orig_dport; /* 0 when unknown */
    __u8 family;      /* AF_INET / AF_INET6 of the socket */
    __u8 side;        /* enum meshlane_connect_side */
    __u8 outcome;     /* enum meshlane_connect_outcome */
    __u8 syn_retransmits;
    __u16 error; /* sk_err at the outcome (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...) */
    __u8 reserved[4];
};

/* Record of the drop_events ring buffer: one kfree_skb with a drop reason. */
struct drop_event {
    __u64 timestamp_ns;
    __u64 location; /* kernel address that freed the skb */
    __u64 netns_cookie;
    __u32 workload_id;
    __u32 reason; /* enum skb_drop_reason value of the running kernel (subsystem in bits 16+) */
    __u32 ifindex;
    __u16 protocol;     /* skb->protocol, host order (ETH_P_IP, ETH_P_IPV6, ...) */
    __u8 ip_proto;      /* IPPROTO_TCP/UDP/... when the network header was readable, else 0 */
    __u8 attributed_by; /* enum meshlane_drop_attribution */
    __u8 saddr[16];     /* v4-mapped for IPv4; zero when unknown */
    __u8 daddr[16];
    __u16 sport; /* host order; TCP/UDP only */
    __u16 dport;
    __u32 length; /* skb->len */
};

enum meshlane_drop_attribution {
    MESHLANE_DROP_BY_SOCKET = 1, /* skb->sk's network namespace */
    MESHLANE_DROP_BY_DEVICE = 2, /* skb->dev's network namespace */
};

/* Key of drop_counts (HASH): drops per workload and reason. The agent deletes the entries of
 * network namespaces that are no longer enrolled. */
struct drop_count_key {
    __u64 netns_cookie;
    __u32 workload_id;
    __u32 reason;
};

/* Events the kernel side could not deliver or count. Index of observe_loss (PERCPU_ARRAY) in
 * each observe object; the agent reports the sum as lost events, never silently. */
enum meshlane_observe_loss {
    MESHLANE_LOSS_RINGBUF_FULL = 0, /* bpf_ringbuf_reserve failed */
    MESHLANE_LOSS_RATE_LIMITED,     /* over the per-CPU token bucket (drop events) */
    MESHLANE_LOSS_COUNT_MAP_FULL,   /* drop_counts had no room for a new (workload, reason) */
    MESHLANE_LOSS_NO_CONNECT_STATE, /* socket storage for a connect could not be allocated */
    MESHLANE_LOSS_MAX
};

/* Drop reasons that are counted per workload but never streamed as events (bpf/observe_drops:
 * rodata count_only_reasons, set by the agent from names resolved in the running kernel's BTF;
 * config key drop_count_only_reasons). Benign per-connection reasons such as QUEUE_PURGE (every
 * closed socket with unread data) would otherwise cost one event per connection. */
#define MESHLANE_DROP_COUNT_ONLY_MAX 16

#define MESHLANE_CONNECT_EVENTS_BYTES (256 * 1024)
#define MESHLANE_DROP_EVENTS_BYTES (256 * 1024)
#define MESHLANE_DROP_COUNT_ENTRIES 16384

#endif /* MESHLANE_OBSERVE_ABI_H */
