/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TCP connect latency and outcome per workload, plus retransmits and resets, from tracepoints
 * (kprobes and fentry are unavailable on our nodes; tracepoints are the stable interface).
 *
 *   sock:inet_sock_set_state  -> SYN_SENT starts a connect (process context: pid/comm known),
 *                                ESTABLISHED ends it with a latency, CLOSE from SYN_SENT is a
 *                                failure (refused when an RST arrived, ETIMEDOUT, other).
 *   tcp:tcp_receive_reset     -> marks the connecting socket, counts resets received
 *   tcp:tcp_send_reset, tcp:tcp_retransmit_skb, tcp:tcp_retransmit_synack -> counters
 *
 * Attribution: the socket's network namespace cookie looked up in the pinned workload_by_netns;
 * sockets outside enrolled pods cost one hash lookup and nothing else.
 */
#include "observe_common.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define EADDRNOTAVAIL 99
#define BPF_SK_STORAGE_GET_F_CREATE 1

char LICENSE[] SEC("license") = "GPL";

/* Tunables, set by the agent before load. */
const volatile __u64 slow_connect_threshold_ns = 500ULL * 1000 * 1000;

/* ARRAY indexed workload_id * MESHLANE_SIDE_MAX + side; sized by the agent. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT* MESHLANE_SIDE_MAX);
    __type(key, __u32);
    __type(value, struct connect_stats);
} connect_stats SEC(".maps");

/* ARRAY indexed workload_id; sized by the agent. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT);
    __type(key, __u32);
    __type(value, struct tcp_counters);
} tcp_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, MESHLANE_CONNECT_EVENTS_BYTES);
} connect_events SEC(".maps");

/* What a connecting socket carries from SYN_SENT to its outcome. Socket-local storage: freed
 * with the socket, so nothing leaks when a socket dies in a way we do not observe. */
struct connect_state {
    __u64 started_ns;
    __u32 pid;
    __u8 comm[MESHLANE_COMM_LEN];
    __u8 rst_received;
    __u8 syn_retransmits;
    __u8 active; /* between SYN_SENT and its outcome */
    __u8 reserved;
};

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct connect_state);
} connect_state_by_socket SEC(".maps");

/* The redirect datapath's record of the app's original destination, declared exactly as in
 * redirect_common.h so libbpf reuses the pinned map. Read-only here. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct orig_dst);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_dst_by_socket SEC(".maps");

/* Entries are owned by (workload id, netns cookie): a reused id starts from zero. Two CPUs
 * racing on the very first update of a reused id can lose that one increment. */
static __always_inline struct connect_stats* stats_of(__u32 workload_id, __u32 side, __u64 cookie) {
    __u32 index = workload_id * MESHLANE_SIDE_MAX + side;
    struct connect_stats* stats = bpf_map_lookup_elem(&connect_stats, &index);
    if (stats && stats->netns_cookie != cookie) {
        __builtin_memset(stats, 0, sizeof(*stats));
        stats->netns_cookie = cookie;
    }
    return stats;
}

static __always_inline struct tcp_counters* counters_of(__u32 workload_id, __u64 cookie) {
    struct tcp_counters* counters = bpf_map_lookup_elem(&tcp_counters, &workload_id);
    if (counters && counters->netns_cookie != cookie) {
        __builtin_memset(counters, 0, sizeof(*counters));
        counters->netns_cookie = cookie;
    }
    return counters;
}

static __always_inline void emit_event(const struct sock* sk, const struct workload_config* config,
                                       __u64 cookie, __u32 side, __u8 outcome, __u64 latency_ns,
                                       const struct connect_state* state, __u16 error) {
    struct connect_event* event = bpf_ringbuf_reserve(&connect_events, sizeof(*event), 0);
    if (!event) {
        count_loss(MESHLANE_LOSS_RINGBUF_FULL);
        return;
    }
    __builtin_memset(event, 0, sizeof(*event));
    event->timestamp_ns = bpf_ktime_get_ns();
    event->latency_ns = latency_ns;
    event->netns_cookie = cookie;
    event->workload_id = config->workload_id;
    event->pid = state->pid;
    __builtin_memcpy(event->comm, state->comm, MESHLANE_COMM_LEN);
    sock_tuple(sk, event->saddr, event->daddr, &event->sport, &event->dport, &event->family);
    event->side = (__u8)side;
    event->outcome = outcome;
    event->syn_retransmits = state->syn_retransmits;
    event->error = error;
    if (side == MESHLANE_SIDE_APP) {
        /* The redirect keeps the original destination on the app's socket. */
        struct orig_dst* orig = bpf_sk_storage_get(&orig_dst_by_socket, (struct sock*)sk, 0, 0);
        if (orig && orig->role == MESHLANE_ROLE_APP_SOCKET) {
            __builtin_memcpy(event->orig_daddr, orig->addr, 16);
            event->orig_dport = orig->port;
        }
    }
    bpf_ringbuf_submit(event, 0);
}

static __always_inline void connect_started(struct sock* sk) {
    struct connect_state* state =
        bpf_sk_storage_get(&connect_state_by_socket, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!state) {
        count_loss(MESHLANE_LOSS_NO_CONNECT_STATE);
        return;
    }
    __builtin_memset(state, 0, sizeof(*state));
    state->started_ns = bpf_ktime_get_ns();
    /* connect() runs tcp_v4_connect / tcp_v6_connect in the caller's context. */
    state->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(state->comm, sizeof(state->comm));
    state->active = 1;
}

static __always_inline void connect_finished(struct sock* sk, int newstate,
                                             const struct workload_config* config, __u64 cookie) {
    struct connect_state* state = bpf_sk_storage_get(&connect_state_by_socket, sk, 0, 0);
    if (!state || !state->active)
        return; /* started before we were loaded, or storage was unavailable */
    state->active = 0;
    __u64 latency_ns = bpf_ktime_get_ns() - state->started_ns;
    __u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    __u32 side = dport == config->outbound_port ? MESHLANE_SIDE_APP : MESHLANE_SIDE_UPSTREAM;
    struct connect_stats* stats = stats_of(config->workload_id, side, cookie);
    if (!stats) return;
    if (state->syn_retransmits)
        __sync_fetch_and_add(&stats->syn_retransmits, state->syn_retransmits);

    if (newstate == TCP_ESTABLISHED) {
        __u64 us = latency_ns / 1000;
        __u32 bucket = log2_bucket(us);
        if (bucket < MESHLANE_HIST_BUCKETS) __sync_fetch_and_add(&stats->latency_hist[bucket], 1);
        __sync_fetch_and_add(&stats->latency_sum_us, us);
        __sync_fetch_and_add(&stats->established, 1);
        stats->established_last_ns = bpf_ktime_get_ns();
        if (latency_ns >= slow_connect_threshold_ns)
            emit_event(sk, config, cookie, side, MESHLANE_CONNECT_ESTABLISHED, latency_ns, state,
                       0);
        return;
    }
    /* TCP_CLOSE from SYN_SENT: tcp_done() runs after sk_err is set (tcp_reset: ECONNREFUSED,
     * tcp_write_err: sk_err_soft or ETIMEDOUT); 0 when the application closed the socket. */
    __u16 error = (__u16)BPF_CORE_READ(sk, sk_err);
    __u8 outcome;
    if (state->rst_received || error == ECONNREFUSED) {
        outcome = MESHLANE_CONNECT_REFUSED;
        __sync_fetch_and_add(&stats->refused, 1);
        /* Racy between CPUs by a few ns at most; the count stays exact. */
        __u64 now = bpf_ktime_get_ns();
        if (stats->refused_first_ns == 0) stats->refused_first_ns = now;
        stats->refused_last_ns = now;
    } else if (error == ETIMEDOUT) {
        outcome = MESHLANE_CONNECT_TIMED_OUT;
        __sync_fetch_and_add(&stats->timed_out, 1);
    } else {
        outcome = MESHLANE_CONNECT_FAILED_OTHER;
        __sync_fetch_and_add(&stats->other_failures, 1);
        /* tcp_v4_connect/tcp_v6_connect enter SYN_SENT before inet_hash_connect() picks the
         * source port; when none is free they close the socket at once, sk_err untouched and
         * no port ever assigned: that is connect()'s EADDRNOTAVAIL. */
        if (error == 0 && BPF_CORE_READ((const struct inet_sock*)sk, inet_sport) == 0) {
            error = EADDRNOTAVAIL;
            __sync_fetch_and_add(&stats->no_local_port, 1);
            stats->no_local_port_last_ns = bpf_ktime_get_ns();
        }
    }
    stats->failed_last_ns = bpf_ktime_get_ns();
    emit_event(sk, config, cookie, side, outcome, latency_ns, state, error);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(observe_sock_set_state, const struct sock* sk, const int oldstate,
             const int newstate) {
    /* Every TCP state change on the box (about ten per connection) comes here: the arguments
     * first, the socket's memory only for the two transitions we keep. */
    if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT) return 0;
    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP) return 0;
    __u64 cookie = sock_netns_cookie(sk);
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return 0;
    if (newstate == TCP_SYN_SENT)
        connect_started((struct sock*)sk);
    else if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE)
        connect_finished((struct sock*)sk, newstate, config, cookie);
    return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(observe_receive_reset, struct sock* sk) {
    __u64 cookie = sock_netns_cookie(sk);
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return 0;
    struct tcp_counters* counters = counters_of(config->workload_id, cookie);
    if (counters) __sync_fetch_and_add(&counters->resets_received, 1);
    struct connect_state* state = bpf_sk_storage_get(&connect_state_by_socket, sk, 0, 0);
    if (state && state->active) state->rst_received = 1;
    return 0;
}

/* sk is NULL when the kernel answers a segment no socket wants (a closed port): attribute by
 * the network namespace of the device the segment arrived on. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(observe_send_reset, const struct sock* sk, const struct sk_buff* skb) {
    __u64 cookie = 0;
    if (sk)
        cookie = sock_netns_cookie(sk);
    else if (skb)
        cookie = net_cookie_of(BPF_CORE_READ(skb, dev, nd_net.net));
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return 0;
    struct tcp_counters* counters = counters_of(config->workload_id, cookie);
    if (counters) __sync_fetch_and_add(&counters->resets_sent, 1);
    return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(observe_retransmit_skb, const struct sock* sk) {
    __u64 cookie = sock_netns_cookie(sk);
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return 0;
    struct tcp_counters* counters = counters_of(config->workload_id, cookie);
    if (!counters) return 0;
    if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_SYN_SENT) {
        __sync_fetch_and_add(&counters->syn_retransmits, 1);
        struct connect_state* state =
            bpf_sk_storage_get(&connect_state_by_socket, (struct sock*)sk, 0, 0);
        if (state && state->active && state->syn_retransmits < 255) state->syn_retransmits++;
    } else {
        __sync_fetch_and_add(&counters->retransmits, 1);
    }
    return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(observe_retransmit_synack, const struct sock* sk) {
    __u64 cookie = sock_netns_cookie(sk);
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return 0;
    struct tcp_counters* counters = counters_of(config->workload_id, cookie);
    if (counters) __sync_fetch_and_add(&counters->synack_retransmits, 1);
    return 0;
}
