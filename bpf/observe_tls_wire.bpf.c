/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TLS-handshake latency from the wire, for any TLS library (Envoy's static BoringSSL too): the
 * client->server byte stream of every TCP connection an enrolled pod opens goes through the
 * shared record parser (include/meshlane/tls_wire.h), ClientHello -> first application_data.
 *
 *   cgroup_skb/egress  on each pod cgroup: the SYN creates the socket's state (so only
 *                      connections opened while we watch are parsed, from their first byte),
 *                      payload segments are fed in sequence order (retransmitted bytes are
 *                      skipped by sequence number), FIN/RST sent mid-handshake end it;
 *   cgroup_skb/ingress on each pod cgroup: FIN/RST received mid-handshake end it.
 *
 * The state lives in socket-local storage and is deleted at the outcome (or as soon as a
 * stream is not TLS), so a connection costs memory only while it handshakes.
 *
 *   sk_msg (observe_tls_msg), tail-called by the fast path's fastpath_msg
 *                      (features/fastpath/fastpath_sockmap.bpf.c) for each message it redirects:
 * those bytes (app <-> proxy, proxy <-> proxy on this node) never reach an skb. The same socket
 * state, created by the same egress SYN (an accelerated connection's handshake still goes through
 * TCP), so one parse continues over both hooks and nothing is fed twice: a message the fast path
 * leaves on TCP is not passed here, egress sees it.
 */
#include "observe_tls_common.h"

struct tls_wire_state;
struct tls_window;
/* Separately verified functions (BPF global functions: verified once, not per call site and
 * loop iteration), so the parser's bounded loops stay within the verifier's budget. */
__noinline int tls_client_hello_global(struct tls_wire_state* s, struct tls_window* window,
                                       __u32 pos, __u32 len);
__noinline int tls_step_global(struct tls_wire_state* s, struct tls_window* window, __u32 pos,
                               __u32 len, __u64 now);
#define TLS_WIRE_CLIENT_HELLO(s, window, pos, len) \
    tls_client_hello_global(s, (struct tls_window*)(window), pos, len)
#define TLS_WIRE_STEP(s, window, pos, len, now) \
    (__u32) tls_step_global(s, (struct tls_window*)(window), pos, len, now)

// clang-format off
#include "meshlane/tls_wire.h"
// clang-format on

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define BPF_SK_STORAGE_GET_F_CREATE 1
/* Windows (or record-body skips) per segment; a handshake flight needs a handful. */
#define TLS_WIRE_MAX_CHUNKS 12

char LICENSE[] SEC("license") = "GPL";

struct tls_conn_state {
    struct tls_wire_state wire;
    __u32 next_seq; /* the next client->server byte expected */
    __u16 sport;    /* host order */
    __u16 dport;
    __u8 saddr[16];
    __u8 daddr[16];
    __u8 family;
    __u8 reserved[7];
};

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct tls_conn_state);
} tls_state_by_socket SEC(".maps");

struct tls_window {
    __u8 bytes[TLS_WIRE_WINDOW];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tls_window);
} tls_window_scratch SEC(".maps");

/* The sk_msg program's own window: it runs in process context, where a softirq running the
 * egress program on this CPU could otherwise overwrite tls_window_scratch under it. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tls_window);
} tls_msg_window_scratch SEC(".maps");

/* The redirect datapath's record of the app's original destination (read-only here). */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct orig_dst);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_dst_by_socket SEC(".maps");

struct segment {
    __u32 payload_off; /* from the network header */
    __u32 payload_len;
    __u32 seq;
    __u8 flags;
    __u8 family;
    __u16 sport; /* host order, as on the wire (egress: local port first) */
    __u16 dport;
    __u8 saddr[16];
    __u8 daddr[16];
};

/* IPv4 or IPv6 (no extension headers) carrying TCP; 0 on success. */
static __always_inline int parse_segment(struct __sk_buff* skb, struct segment* seg) {
    __u8 first = 0;
    if (bpf_skb_load_bytes(skb, 0, &first, 1)) return -1;
    __u32 l4 = 0;
    if ((first >> 4) == 4) {
        __u8 ip[20];
        if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip))) return -1;
        if (ip[9] != IPPROTO_TCP) return -1;
        if ((ip[6] & 0x3f) || ip[7]) return -1; /* a fragment */
        l4 = (ip[0] & 0x0f) * 4;
        seg->family = AF_INET;
        __u32 s, d;
        __builtin_memcpy(&s, ip + 12, 4);
        __builtin_memcpy(&d, ip + 16, 4);
        addr_from_v4(seg->saddr, s);
        addr_from_v4(seg->daddr, d);
    } else if ((first >> 4) == 6) {
        __u8 ip6[40];
        if (bpf_skb_load_bytes(skb, 0, ip6, sizeof(ip6))) return -1;
        if (ip6[6] != IPPROTO_TCP) return -1;
        l4 = 40;
        seg->family = AF_INET6;
        __builtin_memcpy(seg->saddr, ip6 + 8, 16);
        __builtin_memcpy(seg->daddr, ip6 + 24, 16);
    } else {
        return -1;
    }
    __u8 tcp[14];
    if (bpf_skb_load_bytes(skb, l4, tcp, sizeof(tcp))) return -1;
    seg->sport = (tcp[0] << 8) | tcp[1];
    seg->dport = (tcp[2] << 8) | tcp[3];
    seg->seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
    seg->flags = tcp[13];
    seg->payload_off = l4 + (tcp[12] >> 4) * 4;
    seg->payload_len = skb->len > seg->payload_off ? skb->len - seg->payload_off : 0;
    return 0;
}

static __always_inline void emit(struct bpf_sock* sk, struct tls_conn_state* state,
                                 const struct workload_config* config, __u64 cookie) {
    const struct tls_wire_state* wire = &state->wire;
    __u8 outcome;
    switch (wire->result) {
        case TLS_WIRE_RESULT_OK:
            outcome = MESHLANE_TLS_OK;
            break;
        case TLS_WIRE_RESULT_ALERT:
            outcome = MESHLANE_TLS_ALERT;
            break;
        case TLS_WIRE_RESULT_RESET:
            outcome = MESHLANE_TLS_RESET;
            break;
        default:
            outcome = MESHLANE_TLS_CLOSED;
            break;
    }
    __u64 latency_ns = wire->end_ns - wire->hello_ns;
    tls_count(config->workload_id, MESHLANE_TLS_SOURCE_WIRE, cookie, outcome, latency_ns);
    struct tls_handshake_event* event = bpf_ringbuf_reserve(&tls_events, sizeof(*event), 0);
    if (!event) {
        count_loss(MESHLANE_LOSS_RINGBUF_FULL);
        return;
    }
    __builtin_memset(event, 0, sizeof(*event));
    event->timestamp_ns = wire->end_ns;
    event->latency_ns = latency_ns;
    event->netns_cookie = cookie;
    event->workload_id = config->workload_id;
    __builtin_memcpy(event->saddr, state->saddr, 16);
    __builtin_memcpy(event->daddr, state->daddr, 16);
    event->sport = state->sport;
    event->dport = state->dport;
    event->family = state->family;
    event->side =
        state->dport == config->outbound_port ? MESHLANE_SIDE_APP : MESHLANE_SIDE_UPSTREAM;
    event->source = MESHLANE_TLS_SOURCE_WIRE;
    event->outcome = outcome;
    event->version = wire->version;
    event->alert_level = wire->alert_level;
    event->alert_description = wire->alert_description;
    event->sni_len = wire->sni_len;
    event->sni_truncated = wire->sni_truncated;
    __builtin_memcpy(event->sni, wire->sni, MESHLANE_TLS_SNI_LEN);
    if (event->side == MESHLANE_SIDE_APP) {
        struct orig_dst* orig = bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, 0);
        if (orig && orig->role == MESHLANE_ROLE_APP_SOCKET) {
            __builtin_memcpy(event->orig_daddr, orig->addr, 16);
            event->orig_dport = orig->port;
        }
    }
    bpf_ringbuf_submit(event, 0);
}

__noinline int tls_client_hello_global(struct tls_wire_state* s, struct tls_window* window,
                                       __u32 pos, __u32 len) {
    if (!s || !window) return 0;
    tls_wire_client_hello(s, window->bytes, pos, len);
    return 0;
}

/* Returns the new position (tls_wire_step). */
__noinline int tls_step_global(struct tls_wire_state* s, struct tls_window* window, __u32 pos,
                               __u32 len, __u64 now) {
    if (!s || !window) return (int)len;
    return (int)tls_wire_step(s, window->bytes, pos, len, now);
}

/* Returns the bytes of the window consumed. */
__noinline int tls_feed_global(struct tls_wire_state* s, struct tls_window* window, __u32 len,
                               __u64 now) {
    if (!s || !window) return 0;
    return (int)tls_wire_feed(s, window->bytes, len, now);
}

/* Copies n (1..TLS_WIRE_WINDOW) bytes at `off` of the skb or, from_msg, of the sk_msg message
 * into the window; 0 on success. bpf_msg_pull_data() makes [off, off + n) linear (no copy when
 * it lies in one scatterlist element) with msg->data at off. from_msg is a constant at every
 * call site, so each program keeps only its own helper. */
static __always_inline int load_window(void* ctx, const int from_msg, struct tls_window* window,
                                       __u32 off, __u64 n) {
    if (!from_msg) return (int)bpf_skb_load_bytes(ctx, off, window->bytes, n);
    struct sk_msg_md* msg = ctx;
    if (bpf_msg_pull_data(msg, off, off + (__u32)n, 0)) return -1;
    return (int)bpf_probe_read_kernel(window->bytes, n, (void*)(long)msg->data);
}

/* Feeds bytes [from, end) of the skb (offsets from the network header) or of the sk_msg
 * message through the parser. */
static __always_inline void feed(void* ctx, const int from_msg, struct tls_wire_state* wire,
                                 __u32 from, __u32 end, __u64 now) {
    __u32 zero = 0;
    struct tls_window* window = bpf_map_lookup_elem(
        from_msg ? (void*)&tls_msg_window_scratch : (void*)&tls_window_scratch, &zero);
    if (!window) return;
    __u32 off = from;
    for (int i = 0; i < TLS_WIRE_MAX_CHUNKS; i++) {
        if (off >= end || tls_wire_finished(wire)) return;
        __u32 skip = tls_wire_skippable(wire);
        if (skip) {
            __u32 pass = end - off < skip ? end - off : skip;
            tls_wire_skip(wire, pass);
            off += pass;
            continue;
        }
        __u64 n = end - off;
        if (n > TLS_WIRE_WINDOW) n = TLS_WIRE_WINDOW;
        /* Opaque to clang, so the bounds check below stays where the verifier needs it. */
        asm volatile("" : "+r"(n));
        if (n < 1 || n > TLS_WIRE_WINDOW) break;
        if (load_window(ctx, from_msg, window, off, n)) break;
        off += (__u32)tls_feed_global(wire, window, (__u32)n, now);
    }
    if (off < end && !tls_wire_finished(wire)) wire->phase = TLS_WIRE_NOT_TLS; /* lost track */
}

static __always_inline struct workload_config* workload_of_skb(struct __sk_buff* skb,
                                                               __u64* cookie) {
    *cookie = bpf_get_netns_cookie(skb);
    return workload_of_netns(*cookie);
}

SEC("cgroup_skb/egress")
int observe_tls_egress(struct __sk_buff* skb) {
    struct bpf_sock* sk = skb->sk;
    if (!sk) return 1;
    sk = bpf_sk_fullsock(sk);
    if (!sk || sk->protocol != IPPROTO_TCP) return 1;
    /* Only a connecting socket (SYN_SENT) can start a stream; any other socket without state
     * (accepted sockets, streams already decided) leaves before the netns lookup and the header
     * parse: most segments of a pod take this exit (docs/fastpath-measurements.md, "where the time
     * goes"). */
    struct tls_conn_state* state = NULL;
    if (sk->state != BPF_TCP_SYN_SENT) {
        state = bpf_sk_storage_get(&tls_state_by_socket, sk, 0, 0);
        if (!state) return 1;
    }
    __u64 cookie;
    struct workload_config* config = workload_of_skb(skb, &cookie);
    if (!config) return 1;
    struct segment seg = {};
    if (parse_segment(skb, &seg)) return 1;

    if ((seg.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
        /* connect(): start watching this stream from its first byte */
        state = bpf_sk_storage_get(&tls_state_by_socket, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!state) {
            count_loss(MESHLANE_LOSS_NO_CONNECT_STATE);
            return 1;
        }
        __builtin_memset(state, 0, sizeof(*state));
        state->next_seq = seg.seq + 1;
        state->sport = seg.sport;
        state->dport = seg.dport;
        state->family = seg.family;
        __builtin_memcpy(state->saddr, seg.saddr, 16);
        __builtin_memcpy(state->daddr, seg.daddr, 16);
        return 1;
    }
    if (!state) state = bpf_sk_storage_get(&tls_state_by_socket, sk, 0, 0);
    if (!state) return 1;
    __u64 now = bpf_ktime_get_ns();
    struct tls_wire_state* wire = &state->wire;
    if (seg.payload_len) {
        __u32 seg_end = seg.seq + seg.payload_len;
        if ((__s32)(seg_end - state->next_seq) > 0) {
            __s32 ahead = (__s32)(seg.seq - state->next_seq);
            if (ahead > 0) {
                wire->phase = TLS_WIRE_NOT_TLS; /* a gap we did not see: give up */
            } else {
                __u32 from = seg.payload_off + (__u32)(-ahead);
                feed(skb, 0, wire, from, seg.payload_off + seg.payload_len, now);
            }
            state->next_seq = seg_end;
        }
    }
    if (seg.flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
        tls_wire_close(wire, seg.flags & TCP_FLAG_RST, now);
    if (wire->result != TLS_WIRE_RESULT_NONE) emit(sk, state, config, cookie);
    if (tls_wire_finished(wire)) bpf_sk_storage_delete(&tls_state_by_socket, sk);
    return 1;
}

SEC("cgroup_skb/ingress")
int observe_tls_ingress(struct __sk_buff* skb) {
    struct bpf_sock* sk = skb->sk;
    if (!sk) return 1;
    sk = bpf_sk_fullsock(sk);
    if (!sk || sk->protocol != IPPROTO_TCP) return 1;
    struct tls_conn_state* state = bpf_sk_storage_get(&tls_state_by_socket, sk, 0, 0);
    if (!state) return 1;
    struct segment seg = {};
    if (parse_segment(skb, &seg)) return 1;
    if (!(seg.flags & (TCP_FLAG_FIN | TCP_FLAG_RST))) return 1;
    __u64 cookie;
    struct workload_config* config = workload_of_skb(skb, &cookie);
    if (!config) return 1;
    if (tls_wire_close(&state->wire, seg.flags & TCP_FLAG_RST, bpf_ktime_get_ns()))
        emit(sk, state, config, cookie);
    if (tls_wire_finished(&state->wire)) bpf_sk_storage_delete(&tls_state_by_socket, sk);
    return 1;
}

/* The fast path's redirected messages (see the top of this file): fastpath_msg tail-calls this
 * (slot MESHLANE_FASTPATH_MSG_OBSERVER_TLS of its pinned fastpath_msg_observers) after
 * bpf_msg_redirect_hash() succeeded; SK_PASS keeps that redirect. Only the connecting end of a
 * connection has state, so only its client -> server bytes are parsed. */
SEC("sk_msg")
int observe_tls_msg(struct sk_msg_md* msg) {
    struct bpf_sock* sk = msg->sk;
    if (!sk) return SK_PASS;
    struct tls_conn_state* state = bpf_sk_storage_get(&tls_state_by_socket, sk, 0, 0);
    if (!state) return SK_PASS; /* not watched, or its handshake is over */
    __u64 cookie = bpf_get_netns_cookie(msg);
    struct workload_config* config = workload_of_netns(cookie);
    if (!config) return SK_PASS;
    struct tls_wire_state* wire = &state->wire;
    feed(msg, 1, wire, 0, msg->size, bpf_ktime_get_ns());
    if (wire->result != TLS_WIRE_RESULT_NONE) emit(sk, state, config, cookie);
    if (tls_wire_finished(wire)) bpf_sk_storage_delete(&tls_state_by_socket, sk);
    return SK_PASS;
}
