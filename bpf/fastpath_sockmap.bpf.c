// SPDX-License-Identifier: GPL-2.0-only
/*
 * The sk_msg fast path between an app and its own proxy (docs/fastpath.md). Attached next to
 * redirect_sockops on each enrolled pod cgroup (multi-attach; it does not replace it):
 *   fastpath_sockops  puts both ends of an app -> 127.0.0.1:<outbound port> connection into
 *                     fastpath_peers (SOCKHASH) and decides, once, whether the connection is
 *                     accelerated
 *   fastpath_msg      (sk_msg on fastpath_peers) moves each sendmsg() of an accelerated
 *                     connection straight into the peer's receive queue (BPF_F_INGRESS)
 *
 * Why no byte can be reordered: a connection is either accelerated for every byte in both
 * directions, or for none. The connecting end enters the map at ACTIVE_ESTABLISHED, before its
 * connect() returns, so its sk_msg program sees every byte it will ever send. Its state starts
 * UNDECIDED. The first of two events wins, by compare-and-swap on fastpath_conn.state:
 *   - the accepted end reaches PASSIVE_ESTABLISHED (before accept() can return it, so it has sent
 *     nothing) and joins the map: UNDECIDED -> ACCELERATED;
 *   - the connecting end sends its first message: UNDECIDED -> TCP_ONLY, and that message (and all
 *     later ones, both directions) stay on TCP.
 * Nothing is ever on both paths, so the receiver's two queues (psock ingress, TCP receive queue)
 * never both hold data of one connection.
 */
// clang-format off
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "meshlane/fastpath_abi.h"
#include "meshlane/redirect_abi.h"
// clang-format on

#define AF_INET 2
#define LOOPBACK_V4 0x7f000001u /* 127.0.0.1, host order */

char LICENSE[] SEC("license") = "GPL";

#include "workload_map.h"

/* Self-test instance only (agent/fastpath/fastpath_selftest.cpp): every socket of the cgroup is
 * treated as workload 0 with these kinds and this outbound port; workload_by_netns is ignored. */
const volatile __u32 selftest_kinds = 0;
const volatile __u16 selftest_outbound_port = 0;

/* Sizes are placeholders: the agent sets max_entries from max_workloads before load. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT);
    __type(key, __u32);
    __type(value, __u32); /* enum meshlane_fastpath_kind bits */
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_workload_kinds SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, MESHLANE_FASTPATH_MAX_SOCKETS);
    __type(key, struct fastpath_key);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_peers SEC(".maps");

/* Not LRU: evicting the entry of a live accelerated connection would send its next message on
 * TCP behind data already redirected. Entries are deleted when the connecting end closes. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_FASTPATH_MAX_CONNECTIONS);
    __type(key, struct fastpath_key);
    __type(value, struct fastpath_conn);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_conns SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT* MESHLANE_FASTPATH_COUNTER_STRIDE);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_counters SEC(".maps");

/* Loads chosen by a branch get merged by clang into one load from a computed ctx offset, which
 * the verifier rejects: read every ctx field once, volatile. */
#define CTX_READ(field) (*(volatile __typeof__(field)*)&(field))

static __always_inline void count(__u32 workload_id, __u32 counter, __u64 value) {
    __u32 key = workload_id * MESHLANE_FASTPATH_COUNTER_STRIDE + counter;
    __u64* slot = bpf_map_lookup_elem(&fastpath_counters, &key);
    if (slot) *slot += value; /* per-CPU: no atomics needed */
}

/* remote_port is in network order; depending on the kernel in the low or the high 16 bits. */
static __always_inline __u16 remote_port_host(__u32 raw) {
    return raw > 0xffff ? (__u16)bpf_ntohl(raw) : bpf_ntohs((__u16)raw);
}

static __always_inline void peer_of(const struct fastpath_key* own, struct fastpath_key* peer) {
    peer->netns_cookie = own->netns_cookie;
    peer->local_ip4 = own->remote_ip4;
    peer->remote_ip4 = own->local_ip4;
    peer->local_port = own->remote_port;
    peer->remote_port = own->local_port;
    peer->reserved = 0;
}

/* The workload's id and outbound port, when its app <-> proxy pairs may be accelerated. */
static __always_inline bool app_proxy_enabled(struct bpf_sock_ops* ctx, __u32* workload_id,
                                              __u16* outbound_port) {
    if (selftest_kinds) {
        *workload_id = 0;
        *outbound_port = selftest_outbound_port;
        return selftest_kinds & MESHLANE_FASTPATH_APP_PROXY;
    }
    __u64 netns = bpf_get_netns_cookie(ctx);
    const struct workload_config* cfg = bpf_map_lookup_elem(&workload_by_netns, &netns);
    if (!cfg) return false;
    __u32 id = cfg->workload_id;
    const __u32* kinds = bpf_map_lookup_elem(&fastpath_workload_kinds, &id);
    if (!kinds || !(*kinds & MESHLANE_FASTPATH_APP_PROXY)) return false;
    *workload_id = id;
    *outbound_port = cfg->outbound_port;
    return true;
}

static __always_inline bool read_key(struct bpf_sock_ops* ctx, struct fastpath_key* key) {
    __u32 family = CTX_READ(ctx->family);
    key->local_ip4 = CTX_READ(ctx->local_ip4);
    key->remote_ip4 = CTX_READ(ctx->remote_ip4);
    key->local_port = (__u16)CTX_READ(ctx->local_port);
    key->remote_port = remote_port_host(CTX_READ(ctx->remote_port));
    key->reserved = 0;
    key->netns_cookie = bpf_get_netns_cookie(ctx);
    return family == AF_INET && key->local_ip4 == bpf_htonl(LOOPBACK_V4) &&
           key->remote_ip4 == bpf_htonl(LOOPBACK_V4);
}

/* The app's socket to 127.0.0.1:<outbound port> (connect4 put it there). ACTIVE_ESTABLISHED runs
 * before connect() returns to the app and before the socket is writable: no byte was sent. */
static __always_inline void on_connected(struct bpf_sock_ops* ctx) {
    struct fastpath_key key;
    __u32 wid;
    __u16 outbound_port;
    if (!read_key(ctx, &key) || !app_proxy_enabled(ctx, &wid, &outbound_port) ||
        key.remote_port != outbound_port)
        return;
    struct fastpath_conn conn = {.state = MESHLANE_FASTPATH_UNDECIDED, .workload_id = wid};
    if (bpf_map_update_elem(&fastpath_conns, &key, &conn, BPF_ANY) != 0) {
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED, 1);
        return;
    }
    if (bpf_sock_hash_update(ctx, &fastpath_peers, &key, BPF_ANY) != 0) {
        bpf_map_delete_elem(&fastpath_conns, &key);
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED, 1);
        return;
    }
    /* Watch for the close, to delete the fastpath_conns entry. */
    bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* A connection that will not be accelerated must not keep its connecting end in the SOCKHASH:
 * a socket with a psock answers FIONREAD (SIOCINQ) from the psock queue only (kernels with
 * "tcp: Add the data length in skmsg to SIOCINQ ioctl"), so a reader sizing its reads with
 * FIONREAD would see 0 while the proxy's reply sits in the TCP receive queue. Runs before the
 * proxy can accept, so before any reply can exist. */
static __always_inline void give_up(struct fastpath_conn* conn, const struct fastpath_key* peer,
                                    __u32 wid, __u32 reason) {
    __sync_val_compare_and_swap(&conn->state, MESHLANE_FASTPATH_UNDECIDED,
                                MESHLANE_FASTPATH_TCP_ONLY);
    bpf_map_delete_elem(&fastpath_peers, peer);
    count(wid, reason, 1);
}

/* The proxy's accepted socket. PASSIVE_ESTABLISHED runs before accept() can return it: it has
 * sent nothing. */
static __always_inline void on_accepted(struct bpf_sock_ops* ctx) {
    struct fastpath_key key, peer;
    __u32 wid;
    __u16 outbound_port;
    if (!read_key(ctx, &key) || !app_proxy_enabled(ctx, &wid, &outbound_port) ||
        key.local_port != outbound_port)
        return;
    peer_of(&key, &peer);
    struct fastpath_conn* conn = bpf_map_lookup_elem(&fastpath_conns, &peer);
    if (!conn) {
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_NO_PEER, 1);
        return;
    }
    if (conn->state != MESHLANE_FASTPATH_UNDECIDED) {
        give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_SENT_FIRST);
        return;
    }
    if (bpf_sock_hash_update(ctx, &fastpath_peers, &key, BPF_ANY) != 0) {
        give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED);
        return;
    }
    /* Only now may the connecting end redirect to us: we are in the map. */
    if (__sync_val_compare_and_swap(&conn->state, MESHLANE_FASTPATH_UNDECIDED,
                                    MESHLANE_FASTPATH_ACCELERATED) == MESHLANE_FASTPATH_UNDECIDED) {
        count(wid, MESHLANE_FP_CNT_CONNS_ACCELERATED, 1);
        return;
    }
    /* The connecting end sent first, between our check and now: both ends leave the map. */
    bpf_map_delete_elem(&fastpath_peers, &key);
    give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_SENT_FIRST);
}

static __always_inline void on_closed(struct bpf_sock_ops* ctx) {
    struct fastpath_key key;
    if (!read_key(ctx, &key)) return;
    bpf_map_delete_elem(&fastpath_conns, &key);
}

SEC("sockops")
int fastpath_sockops(struct bpf_sock_ops* ctx) {
    switch (ctx->op) {
        case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
            on_connected(ctx);
            break;
        case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
            on_accepted(ctx);
            break;
        case BPF_SOCK_OPS_STATE_CB:
            if (ctx->args[1] == BPF_TCP_CLOSE) on_closed(ctx);
            break;
        default:
            break;
    }
    return 1;
}

SEC("sk_msg")
int fastpath_msg(struct sk_msg_md* msg) {
    struct fastpath_key own = {
        .netns_cookie = bpf_get_netns_cookie(msg),
        .local_ip4 = CTX_READ(msg->local_ip4),
        .remote_ip4 = CTX_READ(msg->remote_ip4),
        .local_port = (__u16)CTX_READ(msg->local_port),
        .remote_port = remote_port_host(CTX_READ(msg->remote_port)),
    };
    __u32 size = CTX_READ(msg->size);
    struct fastpath_key peer;
    peer_of(&own, &peer);
    /* The connecting end's key names the connection; the accepted end finds it reversed. */
    struct fastpath_conn* conn = bpf_map_lookup_elem(&fastpath_conns, &own);
    if (!conn) conn = bpf_map_lookup_elem(&fastpath_conns, &peer);
    if (!conn) return SK_PASS;
    __u32 wid = conn->workload_id;
    __u32 state = conn->state;
    if (state == MESHLANE_FASTPATH_UNDECIDED) {
        /* The connecting end writes before the accepted end joined: TCP for good. */
        state = __sync_val_compare_and_swap(&conn->state, MESHLANE_FASTPATH_UNDECIDED,
                                            MESHLANE_FASTPATH_TCP_ONLY);
        if (state == MESHLANE_FASTPATH_UNDECIDED) state = MESHLANE_FASTPATH_TCP_ONLY;
    }
    if (state != MESHLANE_FASTPATH_ACCELERATED) {
        count(wid, MESHLANE_FP_CNT_PASSED_MSGS, 1);
        count(wid, MESHLANE_FP_CNT_PASSED_BYTES, size);
        return SK_PASS;
    }
    if (bpf_msg_redirect_hash(msg, &fastpath_peers, &peer, BPF_F_INGRESS) == SK_PASS) {
        count(wid, MESHLANE_FP_CNT_REDIRECTED_MSGS, 1);
        count(wid, MESHLANE_FP_CNT_REDIRECTED_BYTES, size);
    } else {
        count(wid, MESHLANE_FP_CNT_PEER_GONE, 1);
    }
    return SK_PASS;
}
