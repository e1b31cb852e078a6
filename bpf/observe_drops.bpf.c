/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Kernel packet drops per workload and reason from skb:kfree_skb (tp_btf). Counts go to a map
 * keyed by (workload, reason) — exact, always on. Events go through a ring buffer behind a
 * per-CPU token bucket, so a drop flood costs bounded agent work; whatever the bucket or a full
 * ring refuses is counted in observe_loss and reported by the agent as lost events. Reasons in
 * count_only_reasons (benign, one per closed connection: QUEUE_PURGE) are counted, not streamed.
 *
 * Attribution: skb->sk's network namespace when the skb belongs to a socket, else skb->dev's
 * (received packets dropped before a socket was found: netfilter, no socket, ...).
 * Reason numbers are the running kernel's; the agent names them from its BTF.
 */
#include "observe_common.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define NSEC_PER_SEC 1000000000ULL

char LICENSE[] SEC("license") = "GPL";

/* Tunables, set by the agent before load: events per second and burst, per CPU. */
const volatile __u64 drop_events_per_second = 1000;
const volatile __u64 drop_events_burst = 200;
/* Reasons counted in drop_counts but never streamed (0 = unused slot; reason 0 never gets here). */
const volatile __u32 count_only_reasons[MESHLANE_DROP_COUNT_ONLY_MAX] = {};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_DROP_COUNT_ENTRIES);
    __type(key, struct drop_count_key);
    __type(value, __u64);
} drop_counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, MESHLANE_DROP_EVENTS_BYTES);
} drop_events SEC(".maps");

struct drop_event_tokens {
    __u64 tokens;
    __u64 refilled_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct drop_event_tokens);
} drop_event_budget SEC(".maps");

static __always_inline void count_drop(__u64 cookie, __u32 workload_id, __u32 reason) {
    struct drop_count_key key = {
        .netns_cookie = cookie, .workload_id = workload_id, .reason = reason};
    __u64* value = bpf_map_lookup_elem(&drop_counts, &key);
    if (!value) {
        __u64 zero = 0;
        /* -EEXIST: another CPU created it first; -E2BIG: the map is full. */
        if (bpf_map_update_elem(&drop_counts, &key, &zero, BPF_NOEXIST) == -7 /* E2BIG */) {
            count_loss(MESHLANE_LOSS_COUNT_MAP_FULL);
            return;
        }
        value = bpf_map_lookup_elem(&drop_counts, &key);
        if (!value) {
            count_loss(MESHLANE_LOSS_COUNT_MAP_FULL);
            return;
        }
    }
    __sync_fetch_and_add(value, 1);
}

/* Per-CPU token bucket: no atomics needed, and a flood on one CPU cannot starve the others. */
static __always_inline bool take_token(void) {
    __u32 zero = 0;
    struct drop_event_tokens* bucket = bpf_map_lookup_elem(&drop_event_budget, &zero);
    if (!bucket || drop_events_per_second == 0) return false;
    __u64 now = bpf_ktime_get_ns();
    if (bucket->refilled_ns == 0) {
        bucket->tokens = drop_events_burst;
        bucket->refilled_ns = now;
    }
    __u64 elapsed = now - bucket->refilled_ns;
    __u64 earned = elapsed * drop_events_per_second / NSEC_PER_SEC;
    if (earned) {
        bucket->tokens += earned;
        if (bucket->tokens > drop_events_burst) bucket->tokens = drop_events_burst;
        /* Advance only by the time the earned tokens account for; keep the remainder. */
        bucket->refilled_ns += earned * NSEC_PER_SEC / drop_events_per_second;
        if (bucket->tokens == drop_events_burst) bucket->refilled_ns = now;
    }
    if (bucket->tokens == 0) return false;
    bucket->tokens--;
    return true;
}

static __always_inline bool is_count_only(__u32 reason) {
#pragma unroll
    for (int i = 0; i < MESHLANE_DROP_COUNT_ONLY_MAX; i++)
        if (count_only_reasons[i] && count_only_reasons[i] == reason) return true;
    return false;
}

/* Wake the reader only once a quarter of the ring is filled: it also drains the ring after
 * every poll timeout (agent/observe/observer.cpp), so an event waits at most that long, and a
 * stream of events costs the agent a few wakeups per second instead of one per event. */
static __always_inline __u64 wakeup_flag(void) {
    return bpf_ringbuf_query(&drop_events, BPF_RB_AVAIL_DATA) >= MESHLANE_DROP_EVENTS_BYTES / 4
               ? BPF_RB_FORCE_WAKEUP
               : BPF_RB_NO_WAKEUP;
}

struct ports {
    __be16 source;
    __be16 dest;
};

static __always_inline void read_headers(const struct sk_buff* skb, struct drop_event* event) {
    unsigned char* head = BPF_CORE_READ(skb, head);
    __u16 network = BPF_CORE_READ(skb, network_header);
    if (!head || network == (__u16)~0U) return;
    struct ports ports = {};
    if (event->protocol == ETH_P_IP) {
        struct iphdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), head + network)) return;
        event->ip_proto = ip.protocol;
        addr_from_v4(event->saddr, ip.saddr);
        addr_from_v4(event->daddr, ip.daddr);
        if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
            if (bpf_probe_read_kernel(&ports, sizeof(ports), head + network + ip.ihl * 4)) return;
        }
    } else if (event->protocol == ETH_P_IPV6) {
        struct ipv6hdr ip6;
        if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + network)) return;
        event->ip_proto = ip6.nexthdr; /* extension headers are not walked */
        __builtin_memcpy(event->saddr, &ip6.saddr, 16);
        __builtin_memcpy(event->daddr, &ip6.daddr, 16);
        if (ip6.nexthdr == IPPROTO_TCP || ip6.nexthdr == IPPROTO_UDP) {
            if (bpf_probe_read_kernel(&ports, sizeof(ports), head + network + sizeof(ip6))) return;
        }
    } else {
        return;
    }
    event->sport = bpf_ntohs(ports.source);
    event->dport = bpf_ntohs(ports.dest);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(observe_kfree_skb, struct sk_buff* skb, void* location, enum skb_drop_reason reason) {
    if (reason == SKB_NOT_DROPPED_YET || reason == SKB_CONSUMED) return 0;
    __u8 attributed_by = MESHLANE_DROP_BY_SOCKET;
    struct sock* sk = BPF_CORE_READ(skb, sk);
    __u64 cookie = sk ? sock_netns_cookie(sk) : 0;
    if (!cookie) {
        attributed_by = MESHLANE_DROP_BY_DEVICE;
        cookie = net_cookie_of(BPF_CORE_READ(skb, dev, nd_net.net));
    }
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return 0;
    count_drop(cookie, config->workload_id, (__u32)reason);
    if (is_count_only((__u32)reason)) return 0;

    if (!take_token()) {
        count_loss(MESHLANE_LOSS_RATE_LIMITED);
        return 0;
    }
    struct drop_event* event = bpf_ringbuf_reserve(&drop_events, sizeof(*event), 0);
    if (!event) {
        count_loss(MESHLANE_LOSS_RINGBUF_FULL);
        return 0;
    }
    __builtin_memset(event, 0, sizeof(*event));
    event->timestamp_ns = bpf_ktime_get_ns();
    event->location = (__u64)location;
    event->netns_cookie = cookie;
    event->workload_id = config->workload_id;
    event->reason = (__u32)reason;
    event->ifindex = BPF_CORE_READ(skb, dev, ifindex);
    event->protocol = bpf_ntohs(BPF_CORE_READ(skb, protocol));
    event->attributed_by = attributed_by;
    event->length = BPF_CORE_READ(skb, len);
    read_headers(skb, event);
    bpf_ringbuf_submit(event, wakeup_flag());
    return 0;
}
